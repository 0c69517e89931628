"""Loading causal LMs and tokenizers through one ``from_pretrained`` path, local or hub."""

from mindgap.models.loading import (
    load_causal_lm,
    load_tokenizer,
    model_fingerprint,
    resolve_model_path,
    stop_token_ids,
)

__all__ = ["load_causal_lm", "load_tokenizer", "model_fingerprint", "resolve_model_path", "stop_token_ids"]
