"""Models: one ``from_pretrained`` path for causal LMs and tokenizers, local or hub (``loading``); the tiny
model and the GGUF conversion built here (``tiny``, ``gguf``); the ``model`` section's schema (``config``)."""
