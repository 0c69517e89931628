"""The ``generator`` section (backend and engine settings) and the sampling settings of each generation."""

from __future__ import annotations

from dataclasses import dataclass

from mindgap.checks import require_choice, require_positive
from mindgap.errors import ConfigError


@dataclass
class GeneratorConfig:
    """The engine that samples responses; sampling parameters belong to each stage."""

    # hf: transformers generate (batched, seeded; the CPU default) | vllm: vLLM's offline LLM engine.
    backend: str = "hf"
    # hf: prompts per forward batch.
    batch_size: int = 16
    # vllm: GPUs one engine shards the model over.
    tensor_parallel_size: int = 1
    # vllm: share of device memory for weights and KV cache (of CPU memory with the CPU build).
    gpu_memory_utilization: float = 0.9
    # vllm: longest prompt + response in tokens; null takes the model's own limit.
    max_model_len: int | None = None
    # vllm: skip CUDA-graph capture (faster start, slower decoding).
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        require_choice("generator.backend", self.backend, ("hf", "vllm"))
        require_positive("generator.batch_size", self.batch_size)
        require_positive("generator.tensor_parallel_size", self.tensor_parallel_size)
        require_positive("generator.max_model_len", self.max_model_len)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"generator.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")


@dataclass
class SamplingConfig:
    """Sampling parameters of one generation call."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512

    def validate(self, where: str) -> None:
        require_positive(f"{where}.n", self.n)
        require_positive(f"{where}.temperature", self.temperature, allow_zero=True)
        require_positive(f"{where}.max_tokens", self.max_tokens)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{where}.top_p={self.top_p} must be in (0, 1]")
