"""Which rewriter computes a chunk under each ``rewrite.strategy``: the seam between the stage runner and the methods.

The runner (mindgap.rewriting.run) owns chunking, resumption, rescoring and the manifest; a
strategy only turns one chunk of problems into records. ``none``, ``self_only``, ``no_guided``
and ``mind_the_gap`` are stage combinations of ``Rewriter``; ``sdft`` and ``rl_agent`` are the
generate-verify-fallback pass of ``ReferenceRewriter``, the latter with a generator loaded from
the GRPO-trained rewriter (mindgap.rewriting.rl_agent).
"""

from __future__ import annotations

from typing import Protocol

from transformers import PreTrainedTokenizerBase

from mindgap.generation.base import Generator
from mindgap.records import Problem
from mindgap.rewriting.config import RewriteConfig
from mindgap.rewriting.reference_rewrite import ReferenceRewriter
from mindgap.rewriting.stages import STAGES_OF, BatchVerifier, RewriteOutcome, Rewriter

REFERENCE_REWRITE_STRATEGIES = ("sdft", "rl_agent")


class ChunkRewriter(Protocol):
    def run(self, problems: list[Problem], seed: int) -> RewriteOutcome: ...


def uses_generator(strategy: str) -> bool:
    return strategy in REFERENCE_REWRITE_STRATEGIES or bool(STAGES_OF[strategy])


def make_rewriter(
    config: RewriteConfig,
    generator: Generator | None,
    verifier: BatchVerifier,
    tokenizer: PreTrainedTokenizerBase | None,
    prompt_type: str,
) -> ChunkRewriter:
    """The rewriter of ``config.strategy``; ``generator`` holds the weights the strategy samples from."""
    if config.strategy == "sdft":
        assert generator is not None
        return ReferenceRewriter(
            config.sdft.sampling, config.copy_filter.meta_phrases, generator, verifier, tokenizer, prompt_type
        )
    if config.strategy == "rl_agent":
        assert generator is not None
        return ReferenceRewriter(config.rl_agent.rewrite_sampling, None, generator, verifier, tokenizer, prompt_type)
    return Rewriter(config, generator, verifier, tokenizer, prompt_type)
