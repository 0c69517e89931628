"""The Hugging Face backend: seeded, batched, and its log-probs are those of the sampling distribution."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from mindgap.generation.config import SamplingConfig
from mindgap.generation.distribution import top_p_logprobs
from mindgap.generation.hf import HFGenerator
from mindgap.prompts import standard_prompt
from tests.conftest import GENERATION_CONFIG_PROCESSORS

PROMPTS = [
    standard_prompt(q, "qwen-boxed") for q in ("What is 2+3?", "Tom has 4 apples and eats one. How many are left?")
]


@pytest.fixture(scope="module")
def generator(tiny_model_path: str) -> HFGenerator:
    return HFGenerator(tiny_model_path, batch_size=2)


def _teacher_forced_logprobs(
    generator: HFGenerator, prompt: str, token_ids: list[int], temperature: float, top_p: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / T) over the top-p nucleus, from one full forward, at each sampled token."""
    prompt_ids = generator.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = generator.model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return top_p_logprobs(logits, temperature, top_p).gather(-1, torch.tensor(token_ids)[:, None]).squeeze(-1)


def test_same_seed_same_samples_other_seed_other_samples(generator: HFGenerator) -> None:
    sampling = SamplingConfig(n=3, temperature=1.0, max_tokens=16)
    first = generator.generate(PROMPTS, sampling, seed=11)
    assert generator.generate(PROMPTS, sampling, seed=11) == first
    assert generator.generate(PROMPTS, sampling, seed=12) != first
    assert [len(samples) for samples in first] == [3, 3]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_teacher_forcing_under_the_sampling_temperature(
    generator: HFGenerator, temperature: float
) -> None:
    sampling = SamplingConfig(n=2, temperature=temperature, max_tokens=12)
    for prompt, samples in zip(PROMPTS, generator.generate(PROMPTS, sampling, seed=3), strict=True):
        for sample in samples:
            assert len(sample.logprobs) == len(sample.token_ids) > 0
            rescored = _teacher_forced_logprobs(generator, prompt, sample.token_ids, temperature)
            torch.testing.assert_close(torch.tensor(sample.logprobs), rescored, atol=1e-4, rtol=0)


def test_stop_token_ends_the_response_and_is_kept(generator: HFGenerator) -> None:
    sampling = SamplingConfig(n=8, temperature=1.0, max_tokens=24)
    samples = [s for group in generator.generate(PROMPTS, sampling, seed=0) for s in group]
    for sample in samples:
        stops = [token in generator.stop_ids for token in sample.token_ids]
        if sample.finish_reason == "stop":
            assert stops[-1] and not any(stops[:-1])
        else:
            assert len(sample.token_ids) == 24 and not any(stops)
        assert "<|im_end|>" not in sample.text


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_the_model_generation_config_processors_do_not_reach_sampling(
    tiny_model_with_sampling_defaults: str, temperature: float, top_p: float
) -> None:
    """With repetition_penalty, top_k, min_p and no_repeat_ngram_size in generation_config.json, samples and
    log-probs are still those of softmax(logits / T) over the top-p nucleus."""
    generator = HFGenerator(tiny_model_with_sampling_defaults, batch_size=2)
    # The processors are there to be found: from_pretrained read them.
    configured = GenerationConfig.from_pretrained(tiny_model_with_sampling_defaults)
    assert {key: getattr(configured, key) for key in GENERATION_CONFIG_PROCESSORS} == GENERATION_CONFIG_PROCESSORS
    sampling = SamplingConfig(n=4, temperature=temperature, top_p=top_p, max_tokens=16)
    tokens = 0
    for prompt, samples in zip(PROMPTS, generator.generate(PROMPTS, sampling, seed=7), strict=True):
        for sample in samples:
            expected = _teacher_forced_logprobs(generator, prompt, sample.token_ids, temperature, top_p)
            # Under top_k=3 or min_p=0.3 most of these tokens would have been impossible (-inf).
            assert torch.isfinite(expected).all()
            torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=1e-4, rtol=0)
            tokens += len(sample.token_ids)
    assert tokens >= 8 * 8
