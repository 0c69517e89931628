"""Loading causal LMs and tokenizers through one ``from_pretrained`` path, local or hub."""

from mindgap.models.loading import (
    ModelSource,
    as_source,
    load_causal_lm,
    load_generation_config,
    load_model_config,
    load_tokenizer,
    model_fingerprint,
    resolve_model,
    resolve_model_path,
    stop_token_ids,
)

__all__ = [
    "ModelSource",
    "as_source",
    "load_causal_lm",
    "load_generation_config",
    "load_model_config",
    "load_tokenizer",
    "model_fingerprint",
    "resolve_model",
    "resolve_model_path",
    "stop_token_ids",
]
