"""Value checks the config schemas share: each raises a one-line ConfigError naming the key."""

from __future__ import annotations

from typing import Any

from mindgap.errors import ConfigError


def require_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}={value!r} is not one of {', '.join(choices)}")


def require_positive(where: str, value: int | float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}={value} must be {'>= 0' if allow_zero else '> 0'}")


def require_architecture(where: str, config: Any) -> None:
    """The sizes of a model built here (tiny or toy): positive, and attention heads of 64 dims."""
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "max_position_embeddings",
    ):
        require_positive(f"{where}.{name}", getattr(config, name))
    hidden_size, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    if hidden_size % heads or hidden_size // heads != 64:
        raise ConfigError(
            f"{where}: hidden_size/num_attention_heads = {hidden_size}/{heads}"
            " must be a head dim of 64 (vLLM's CPU kernels reject smaller heads)"
        )
    if heads % kv_heads:
        raise ConfigError(f"{where}.num_key_value_heads must divide num_attention_heads")


def require_label(where: str, label: str) -> None:
    """Labels name result directories and table rows: no path separators, nothing hidden."""
    if not label.strip() or "/" in label or "\\" in label or label.startswith("."):
        raise ConfigError(f"{where} is not a usable label (no '/', no leading '.', not empty)")
