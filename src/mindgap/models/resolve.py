"""The directory or hub id a ``model`` config names, building the tiny or toy model or converting a GGUF on first use.

Above ``loading`` and the builders (which load tokenizers through ``loading``), so that nothing imports in a circle.
"""

from __future__ import annotations

from pathlib import Path

from mindgap.models.config import ModelConfig
from mindgap.models.loading import ModelSource


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


def resolve_model(model: ModelConfig, cache_dir: str, data_root: str) -> ModelSource:
    """``resolve_model_path`` with the config's revision and ``trust_remote_code``."""
    path = resolve_model_path(model, cache_dir, data_root)
    return ModelSource(path, model.revision, model.trust_remote_code)
