"""Generators: engines that sample responses with their per-token log-probs."""

from mindgap.generation.base import Completion, Generator, make_generator

__all__ = ["Completion", "Generator", "make_generator"]
