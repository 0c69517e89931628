"""The toy model: pretrained on native-style and guided examples, deterministic, built once per recipe."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from mindgap.generation.hf import HFGenerator
from mindgap.models.config import ModelConfig
from mindgap.models.loading import load_tokenizer
from mindgap.models.resolve import resolve_model_path
from mindgap.models.tiny import train_tokenizer
from mindgap.prompts import guided_prompt, rewrite_prompt, standard_prompt
from mindgap.toy import pretraining
from mindgap.toy.config import ToyModelConfig, ToyPretrainingConfig
from mindgap.toy.pretraining import (
    PRETRAINING_REPORT,
    build_toy_model,
    pretraining_examples,
    tokenizer_texts,
    toy_model_dir,
)
from mindgap.toy.styles import expert_solution, native_solution
from mindgap.toy.world import split_problems


def small_recipe(**pretraining_fields) -> ToyModelConfig:
    """A recipe that pretrains in a second or two: enough to test the machinery, not to learn the world."""
    fields = {"corpus_size": 64, "steps": 4, "batch_size": 8, "warmup_steps": 1} | pretraining_fields
    return ToyModelConfig(intermediate_size=256, pretraining=ToyPretrainingConfig(**fields))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("toy-cache"))


@pytest.fixture(scope="module")
def toy_model_path(cache_dir: str) -> Path:
    return build_toy_model(small_recipe(), cache_dir)


def test_examples_are_native_responses_under_the_apps_prompts() -> None:
    spec = small_recipe(corpus_size=200, guided_share=0.25, rewrite_share=0.15, hints_from="hinted")
    tokenizer = train_tokenizer(tokenizer_texts(spec), spec.vocab_size, split_digits=True)
    examples = pretraining_examples(spec, tokenizer)
    # Standard prompts take the pretraining distribution's problems in order, the guided and rewrite
    # prompts the hinted distribution's (with trades, never a target problem).
    plain = iter(split_problems(spec.world, "pretraining", 200))
    hinted = iter(split_problems(spec.world, "hinted", 200))
    assert len(examples) == 200
    tasks = Counter(example.task for example in examples)
    # Binomial(200, p) counts: within about 3 standard deviations of 50 guided and 30 rewrite examples.
    assert 30 <= tasks["guided"] <= 70 and 12 <= tasks["rewrite"] <= 48 and sum(tasks.values()) == 200
    for example in examples:
        problem = next(plain) if example.task == "standard" else next(hinted)
        expected_prompt = {
            "guided": guided_prompt(problem.text, expert_solution(problem), spec.prompt_type),
            "rewrite": rewrite_prompt(problem.text, expert_solution(problem), spec.prompt_type),
            "standard": standard_prompt(problem.text, spec.prompt_type),
        }[example.task]
        assert tokenizer.decode(example.prompt_ids) == expected_prompt
        assert example.response_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(example.response_ids[:-1]) == native_solution(problem)


def test_hints_from_pretraining_show_each_next_pretraining_problem() -> None:
    spec = small_recipe(corpus_size=100, guided_share=0.5, rewrite_share=0.0, hints_from="pretraining")
    tokenizer = train_tokenizer(tokenizer_texts(spec), spec.vocab_size, split_digits=True)
    examples = pretraining_examples(spec, tokenizer)
    problems = split_problems(spec.world, "pretraining", 100)
    assert {example.task for example in examples} == {"standard", "guided"}
    assert [tokenizer.decode(e.response_ids[:-1]) for e in examples] == [native_solution(p) for p in problems]


def test_tokenizer_splits_digits_and_keeps_prompt_words_whole() -> None:
    spec = small_recipe(corpus_size=200)
    tokenizer = train_tokenizer(tokenizer_texts(spec), spec.vocab_size, split_digits=True)
    assert tokenizer.tokenize("128") == ["1", "2", "8"]
    for word in (" reason", " reference", " marbles", " dollars", " Seventh"):
        assert len(tokenizer.tokenize(word)) == 1, word


def test_built_model_loads_and_records_its_pretraining(toy_model_path: Path) -> None:
    report = json.loads((toy_model_path / PRETRAINING_REPORT).read_text())
    assert report["steps"] == 4 and len(report["losses"]) == 4
    assert report["examples"] == 64
    config = json.loads((toy_model_path / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    generator = HFGenerator(str(toy_model_path), batch_size=2)
    prompt = standard_prompt("Mia has 3 apples. How many apples does Mia have now?", "qwen-boxed")
    from mindgap.generation.config import SamplingConfig

    completions = generator.generate([prompt], SamplingConfig(n=2, temperature=1.0, max_tokens=8), seed=0)
    assert len(completions[0]) == 2 and all(len(c.token_ids) <= 8 for c in completions[0])


def test_second_build_reuses_the_cached_model(toy_model_path: Path, cache_dir: str, monkeypatch) -> None:
    weights = toy_model_path / "model.safetensors"
    written = weights.stat().st_mtime_ns

    def no_pretraining(*args, **kwargs):
        raise AssertionError("the cached model was pretrained again")

    monkeypatch.setattr(pretraining, "pretrain", no_pretraining)
    assert build_toy_model(small_recipe(), cache_dir) == toy_model_path
    model = ModelConfig(name="toy", toy=small_recipe())
    assert resolve_model_path(model, cache_dir, data_root="") == str(toy_model_path)
    assert weights.stat().st_mtime_ns == written


def test_same_recipe_same_weights_other_recipe_other_directory(toy_model_path: Path, tmp_path: Path) -> None:
    again = build_toy_model(small_recipe(), str(tmp_path))
    assert again != toy_model_path
    first = AutoModelForCausalLM.from_pretrained(toy_model_path).state_dict()
    second = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    other = small_recipe(seed=1)
    assert toy_model_dir(other, str(tmp_path)) != toy_model_dir(small_recipe(), str(tmp_path))
    assert toy_model_dir(ToyModelConfig(prompt_type="deepseek-math"), "c") != toy_model_dir(ToyModelConfig(), "c")


def test_pretraining_lowers_the_loss(tmp_path: Path) -> None:
    path = build_toy_model(small_recipe(steps=12, batch_size=4, lr=3e-3, warmup_steps=2), str(tmp_path))
    losses = json.loads((path / PRETRAINING_REPORT).read_text())["losses"]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert load_tokenizer(str(path)).eos_token == "<|im_end|>"
    assert not any(name.startswith(".") for name in os.listdir(tmp_path / "models"))
