"""The backend a generator config names (the backends import ``base``; this module imports them)."""

from __future__ import annotations

from mindgap.generation.base import Generator
from mindgap.generation.config import GeneratorConfig
from mindgap.models.loading import ModelSource


def make_generator(config: GeneratorConfig, model: ModelSource | str, dtype: str) -> Generator:
    """The backend ``config.backend`` names; vLLM is imported only when it is asked for."""
    if config.backend == "vllm":
        from mindgap.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, dtype=dtype, config=config)
    from mindgap.generation.hf import HFGenerator

    return HFGenerator(model, dtype=dtype, batch_size=config.batch_size)
