"""A tiny Qwen2-architecture causal LM and a BPE tokenizer, built locally and cached by recipe hash.

The tokenizer is trained with ``tokenizers`` on the task text (problems and expert
solutions of the corpus sources, plus the prompt templates), gets a chat template, and is
saved with the model through ``save_pretrained``, so every stage loads it exactly like a
real model. ``build_from_config_file`` gives a real architecture (a config.json) random weights
and this tokenizer, for the GPU tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from mindgap import publish
from mindgap.data.sources import data_config, load_problems
from mindgap.models.config import TinyModelConfig
from mindgap.models.loading import load_tokenizer
from mindgap.prompts import GUIDED_REQUEST, TEMPLATES
from mindgap.toy.config import ToyModelConfig

# Bump when the build procedure changes, so that old cache entries are not reused.
BUILDER_VERSION = 1
END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_COMPLETE_MARKER = "BUILD_COMPLETE"


def corpus_texts(spec: TinyModelConfig, data_root: str) -> list[str]:
    texts = [template.replace("{input}", "") for template in TEMPLATES.values()] + [GUIDED_REQUEST]
    for name in spec.corpus:
        for problem in load_problems(data_config(name), data_root).problems:
            texts.append(problem.problem)
            if problem.expert_solution:
                texts.append(problem.expert_solution)
    return texts


def tiny_model_dir(spec: TinyModelConfig, cache_dir: str, texts: list[str]) -> Path:
    """Cache directory keyed by the recipe, the builder version and the corpus content."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"spec": dataclasses.asdict(spec), "builder": BUILDER_VERSION}, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return Path(cache_dir).expanduser() / "models" / f"tiny-{digest.hexdigest()[:16]}"


def train_tokenizer(texts: list[str], vocab_size: int, split_digits: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with the special tokens and the chat template.

    ``split_digits`` makes every digit its own token (as Qwen2's tokenizer does), so that a model
    learns arithmetic on digits rather than on whichever numbers the corpus made frequent.
    """
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=IM_END, pad_token=END_OF_TEXT, model_max_length=2048
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def new_qwen2_model(
    tokenizer: PreTrainedTokenizerFast, spec: TinyModelConfig | ToyModelConfig, seed: int
) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2-architecture LM of ``spec``'s shape for ``tokenizer`` (tied embeddings;
    stops at <|im_end|>)."""
    eos_id, pad_id = tokenizer.convert_tokens_to_ids([IM_END, END_OF_TEXT])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
    return model


def is_built(target: Path) -> bool:
    return (target / _COMPLETE_MARKER).exists()


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, made by ``build(staging_dir)`` unless already complete; safe under concurrent builds.

    The directory appears complete or not at all: it is built under a staging name unique to this
    writer beside ``target``, marked complete, fsynced, then renamed into place. A concurrent build
    that finished first wins (the rename onto its non-empty directory fails, and this one is dropped).
    """
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    publish.clean_stale_staging(target.parent)
    staging = publish.staging_path(target)
    staging.mkdir()
    try:
        build(staging)
        (staging / _COMPLETE_MARKER).touch()
        publish.fsync_tree(staging)
        publish.commit_point(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not is_built(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build(spec: TinyModelConfig, texts: list[str], target: Path) -> None:
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    model = new_qwen2_model(tokenizer, spec, seed=spec.seed)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "recipe.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2))


def build_tiny_model(spec: TinyModelConfig, cache_dir: str, data_root: str) -> Path:
    """The directory of the tiny model for ``spec``, built on first use (safe under concurrent builds)."""
    texts = corpus_texts(spec, data_root)
    return build_once(tiny_model_dir(spec, cache_dir, texts), lambda staging: _build(spec, texts, staging))


def build_from_config_file(config_file: Path, tokenizer_dir: str, cache_dir: str, seed: int = 0) -> Path:
    """A model of a real architecture (a config.json, e.g. Qwen2.5-0.5B's) with random weights, never downloaded.

    The tokenizer is ``tokenizer_dir``'s (e.g. the tiny model's): its ids are a subset of the vocabulary,
    so every stage loads and runs the model as the real one, at its real size and speed.
    """
    config_text = Path(config_file).read_text()
    digest = hashlib.sha256(f"{config_text}:{seed}:{BUILDER_VERSION}".encode()).hexdigest()[:16]
    target = Path(cache_dir).expanduser() / "models" / f"{Path(config_file).stem}-random-{digest}"

    def build(staging: Path) -> None:
        config = AutoConfig.for_model(**json.loads(config_text))
        tokenizer = load_tokenizer(str(tokenizer_dir))
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        eos_id, pad_id = tokenizer.convert_tokens_to_ids([IM_END, END_OF_TEXT])
        model.generation_config = GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return build_once(target, build)
