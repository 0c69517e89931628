"""Resolve a model config to a path or hub id and load it with ``from_pretrained``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mindgap.config import ModelConfig
from mindgap.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_model_path(model: ModelConfig, cache_dir: str, data_root: str) -> str:
    """A local directory or hub id for ``model``; builds the tiny or toy model, or converts a GGUF, on first use."""
    if model.name_or_path is not None:
        local = Path(model.name_or_path).expanduser()
        return str(local) if local.exists() else model.name_or_path
    if model.gguf is not None:
        from mindgap.models.gguf import build_gguf_model

        return str(build_gguf_model(model.gguf, cache_dir))
    if model.toy is not None:
        from mindgap.toy.pretraining import build_toy_model

        return str(build_toy_model(model.toy, cache_dir))
    from mindgap.models.tiny import build_tiny_model

    assert model.tiny is not None
    return str(build_tiny_model(model.tiny, cache_dir, data_root))


def _check_local(path: str, needs: str) -> None:
    local = Path(path)
    if local.exists() and not local.is_dir():
        raise ConfigError(f"model path {path} is a file, not a model directory")
    if (
        local.is_dir()
        and needs == "tokenizer"
        and not any((local / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    ):
        raise ConfigError(f"model directory {path} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    if local.is_dir() and needs == "weights" and not (local / "config.json").exists():
        raise ConfigError(f"model directory {path} has no config.json")


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    _check_local(path, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    path: str, dtype: str = "float32", revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedModel:
    _check_local(path, "weights")
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=_DTYPES[dtype], revision=revision, trust_remote_code=trust_remote_code
    )


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> list[int]:
    """Token ids that end a response: the tokenizer's eos, the model's generation eos and <|im_end|>."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if model is not None and model.generation_config is not None:
        configured = model.generation_config.eos_token_id
        if configured is not None:
            ids.update(configured if isinstance(configured, list) else [configured])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


def model_fingerprint(path: str, revision: str | None = None) -> str:
    """Identifies the weights: hub id@revision, or a hash of a local directory's config and file sizes."""
    local = Path(path)
    if not local.is_dir():
        return f"{path}@{revision or 'main'}"
    digest = hashlib.sha256()
    config = local / "config.json"
    if config.exists():
        digest.update(json.dumps(json.loads(config.read_text()), sort_keys=True).encode())
    for file in sorted(local.glob("*.safetensors")) + sorted(local.glob("*.bin")):
        digest.update(f"{file.name}:{file.stat().st_size}:{file.stat().st_mtime_ns}".encode())
    return f"{local.name}:{digest.hexdigest()[:16]}"
