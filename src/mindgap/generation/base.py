"""The ``Generator`` protocol every stage talks to, and the ``Completion`` it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mindgap.generation.config import SamplingConfig


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
    # Identifies the weights (see mindgap.models.loading.model_fingerprint).
    fingerprint: str

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[list[Completion]]: ...

    def close(self) -> None:
        """Free the engine and its (device) memory; the generator is unusable afterwards. Idempotent."""
        ...
