"""Losses as pure functions of tensors.

Per-token log-probs come from a per-token cross-entropy in fp32, so no second softmax over
the vocabulary is ever taken.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label_t | <t) for next-token prediction, and the mask of positions with a label.

    ``logits`` [B, T, V] predict ``labels`` [B, T] shifted by one; returns two [B, T-1] tensors.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    negative = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shifted_labels)
    return -negative, mask


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the loss tokens of the batch."""
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)
