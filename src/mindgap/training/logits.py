"""Per-token log-probs of the labels, from full logits or from an lm head applied in chunks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mindgap.errors import ConfigError
from mindgap.training.losses import IGNORE_INDEX, token_logprobs

# Heads that post-process logits (soft-capping, scaling) cannot be replaced by a plain matmul.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def label_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprobs, mask)`` of shape ``[batch, length - 1]``: log p(label_t+1 | prefix), fp32.

    With ``chunk_size`` the model runs without its lm head; the head and the log-softmax are then
    applied to the loss positions only, ``chunk_size`` of them at a time, each chunk recomputed in
    the backward pass, so the ``[tokens, vocab]`` logits never exist at once.
    """
    if chunk_size is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return token_logprobs(logits, labels)
    for name in _LOGIT_TRANSFORMS:
        if getattr(model.config, name, None) not in (None, 1.0):
            raise ConfigError(f"train.logits_chunk_size: the model's head applies {name}; use full logits (null)")
    hidden = _final_hidden_states(model, input_ids, attention_mask)[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    positions = mask.nonzero(as_tuple=True)
    head_weight = model.get_output_embeddings().weight
    head_bias = model.get_output_embeddings().bias
    selected_hidden = hidden[positions]
    selected_targets = targets[positions]
    pieces = [
        checkpoint(
            _chunk_logprobs,
            selected_hidden[start : start + chunk_size],
            selected_targets[start : start + chunk_size],
            head_weight,
            head_bias,
            use_reentrant=False,
        )
        for start in range(0, len(selected_targets), chunk_size)
    ]
    logprobs = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    if pieces:
        logprobs = logprobs.index_put(positions, torch.cat(pieces))
    return logprobs, mask


def _chunk_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return -F.cross_entropy(logits, targets, reduction="none")


def _final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's output (after its final norm), taken from inside the model's own forward.

    The whole model's forward runs, with no logits kept, so wrappers on the root module (FSDP2's
    parameter gathering) act as usual.
    """
    captured: list[torch.Tensor] = []
    handle = model.get_decoder().register_forward_hook(
        lambda module, args, output: captured.append(output.last_hidden_state)
    )
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_to_keep=torch.zeros(0, dtype=torch.long, device=input_ids.device),
        )
    finally:
        handle.remove()
    return captured[0]
