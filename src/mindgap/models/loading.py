"""Resolve a model config to a path or hub id and load it with ``from_pretrained``.

Every ``from_pretrained`` of the project (model, tokenizer, model config, generation config) goes
through this module, with the source's revision and ``trust_remote_code``: a pinned revision loads
that revision everywhere, and is what the fingerprint names.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mindgap.errors import ConfigError
from mindgap.fingerprints import file_digest
from mindgap.paths import default_cache_dir

_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ModelSource:
    """What ``from_pretrained`` loads: a local directory or a hub id, at a hub revision, maybe with its own code."""

    path: str
    # Branch, tag or commit of a hub id (ignored for a local directory); None is the default branch.
    revision: str | None = None
    trust_remote_code: bool = False

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        return {"revision": self.revision, "trust_remote_code": self.trust_remote_code}


def as_source(model: ModelSource | str) -> ModelSource:
    """A plain path (a directory this project wrote: an export, a merged rewriter) is a source at no revision."""
    return model if isinstance(model, ModelSource) else ModelSource(model)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


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


def load_tokenizer(model: ModelSource | str) -> PreTrainedTokenizerBase:
    source = as_source(model)
    _check_local(source.path, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(source.path, **source.from_pretrained_kwargs())
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model: ModelSource | str, dtype: str = "float32") -> PreTrainedModel:
    source = as_source(model)
    _check_local(source.path, "weights")
    return AutoModelForCausalLM.from_pretrained(source.path, dtype=_DTYPES[dtype], **source.from_pretrained_kwargs())


def load_model_config(model: ModelSource | str) -> PretrainedConfig:
    source = as_source(model)
    return AutoConfig.from_pretrained(source.path, **source.from_pretrained_kwargs())


def load_generation_config(model: ModelSource | str) -> GenerationConfig:
    """The model's generation config; derived from its model config when it ships none."""
    source = as_source(model)
    try:
        return GenerationConfig.from_pretrained(source.path, **source.from_pretrained_kwargs())
    except OSError:  # no generation_config.json: transformers derives one from config.json
        return GenerationConfig.from_model_config(load_model_config(source))


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


@lru_cache(maxsize=64)
def resolved_commit(repo_id: str, revision: str | None) -> str:
    """The commit a hub revision (branch, tag or commit; None: the default branch) points at now.

    Offline, the hub cache answers for revisions fetched before.
    """
    if revision is not None and _COMMIT.fullmatch(revision):
        return revision
    try:
        # The cache keeps each file under snapshots/<commit>/: the config's path names the commit.
        config_file = Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except (OSError, ValueError) as error:  # no network, no such repo or revision, offline and never fetched
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"model {repo_id}@{revision or 'main'}: cannot resolve the revision to a commit ({reason})"
        ) from error
    return config_file.parent.name


# The files of a model directory that change what it computes: its config, tokenizer and chat template, generation
# defaults and weights. Hashed by content (weights through a cache, once per file version).
FINGERPRINTED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.index.json")


def model_fingerprint(model: ModelSource | str, cache_dir: str | None = None) -> str:
    """Identifies what the model computes: hub id@resolved commit, or a content hash of a local directory's config,
    tokenizer, chat template, generation config and weights (``cache_dir`` remembers weight hashes; None: the
    default cache dir).
    """
    source = as_source(model)
    local = Path(source.path)
    if not local.is_dir():
        return f"{source.path}@{resolved_commit(source.path, source.revision)}"
    cache = cache_dir or default_cache_dir()
    digest = hashlib.sha256()
    files = [local / name for name in FINGERPRINTED_FILES if (local / name).is_file()]
    files += sorted({file for pattern in WEIGHT_PATTERNS for file in local.glob(pattern) if file.is_file()})
    for file in files:
        digest.update(f"{file.name}:{file_digest(file, cache)}\0".encode())
    return f"{local.name}:{digest.hexdigest()[:16]}"
