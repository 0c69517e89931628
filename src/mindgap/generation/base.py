"""The ``Generator`` protocol every stage talks to, and the factory that picks a backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mindgap.config import GeneratorConfig, SamplingConfig
from mindgap.models import ModelSource


@dataclass(frozen=True)
class Completion:
    """One sampled response."""

    # Decoded response without the stop token.
    text: str
    # Generated ids, the stop token included when one was generated.
    token_ids: list[int]
    # Log-prob of each generated id under the sampling distribution (after temperature and top-p).
    logprobs: list[float]
    # "stop" (a stop token ended it) or "length" (max_tokens reached).
    finish_reason: str

    @property
    def truncated(self) -> bool:
        """Cut off at max_tokens: never a training target, whatever answer it holds (it would teach not to stop)."""
        return self.finish_reason == "length"


class Generator(Protocol):
    """Samples ``sampling.n`` completions for each prompt; same seed, same completions."""

    backend: str
    # Identifies the weights (see mindgap.models.model_fingerprint).
    fingerprint: str

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[list[Completion]]: ...

    def close(self) -> None:
        """Free the engine and its (device) memory; the generator is unusable afterwards. Idempotent."""
        ...


def make_generator(config: GeneratorConfig, model: ModelSource | str, dtype: str) -> Generator:
    """The backend ``config.backend`` names; vLLM is imported only when it is asked for."""
    if config.backend == "vllm":
        from mindgap.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, dtype=dtype, config=config)
    from mindgap.generation.hf import HFGenerator

    return HFGenerator(model, dtype=dtype, batch_size=config.batch_size)
