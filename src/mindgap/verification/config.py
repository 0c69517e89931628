"""The ``verifier`` section, shared by rewriting and evaluation: the math-verify pool's size and time limit."""

from __future__ import annotations

from dataclasses import dataclass

from mindgap.checks import require_positive


@dataclass
class VerifierConfig:
    """Answer checking: a fast exact/numeric path in process, math-verify in a process pool."""

    # Processes of the math-verify pool; null uses every available core.
    workers: int | None = None
    # Wall-clock limit per math-verify call; a verdict that takes longer counts as wrong and as a timeout.
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        require_positive("verifier.workers", self.workers)
        require_positive("verifier.timeout_s", self.timeout_s)
