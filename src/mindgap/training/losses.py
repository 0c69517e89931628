"""Losses as pure functions of tensors (DESIGN.md §1, "The loss family").

Per-token log-probs come from a per-token cross-entropy in fp32, so no second softmax over
the vocabulary is ever taken. Every loss of the family is

    L = -sum_t m_t * w_t * logp_t / N

with m_t the loss mask, N the number of loss tokens of the whole optimiser step (all
micro-batches, all ranks; passed in by the caller) and w_t an importance weight that never
carries gradient:

    l_t = sg(logp_t) - logbeta_t,    w_t = clip(exp(l_t)).

Which behaviour log-prob ``logbeta_t`` a row uses is a per-row :class:`WeightRule`:

- ``ONE``: w = 1 (plain SFT; l = 0, never clipped),
- ``UNIFORM``: logbeta = 0, so w = sg(p_t) (the DFT weight),
- ``MODEL``: logbeta = the given behaviour log-prob (e.g. log pi_0 of the generating prompt).

:func:`weight_rules` builds the rules from a loss name (``sft``, ``dft``, ``is``), the rows'
sources and the ``expert_behavior`` setting; :func:`weighted_loss` computes the loss with the
weights, the log-ratios and the clipped mask that the statistics (``stats.py``) need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch
import torch.nn.functional as F

from mindgap.records import SOURCES

IGNORE_INDEX = -100

LOSSES = ("sft", "dft", "is")
EXPERT_BEHAVIORS = ("uniform", "one", "model")
CLIP_MODES = ("truncate", "mask")
LEVELS = ("token", "sequence")


class WeightRule(IntEnum):
    """How a row's importance weight is formed (one value per row, as a LongTensor[B])."""

    ONE = 0
    UNIFORM = 1
    MODEL = 2


_EXPERT_RULES = {"uniform": WeightRule.UNIFORM, "one": WeightRule.ONE, "model": WeightRule.MODEL}


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label_t | <t) for next-token prediction, and the mask of positions with a label.

    ``logits`` [B, T, V] predict ``labels`` [B, T] shifted by one; returns two [B, T-1] tensors
    (log-probs are 0 where the mask is False).
    """
    # Shift the labels, not the logits: a [:, :-1] slice of the logits cannot be flattened without
    # copying them, and its gradient would be zero-filled and copied back.
    next_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    negative = F.cross_entropy(
        logits.flatten(0, 1).float(), next_labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(next_labels)[:, :-1]
    return -negative, labels[:, 1:] != IGNORE_INDEX


def source_ids(sources: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
    """LongTensor[B] of indices into ``mindgap.records.SOURCES`` (self=0, guided=1, expert=2, rewritten=3)."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown sources {unknown}; expected one of {', '.join(SOURCES)}")
    return torch.tensor([SOURCES.index(source) for source in sources], dtype=torch.long, device=device)


def weight_rules(loss: str, sources: torch.Tensor, expert_behavior: str = "uniform") -> torch.Tensor:
    """Per-row :class:`WeightRule` (LongTensor[B]) for a loss name.

    ``sft``: ONE for every row. ``dft``: UNIFORM for every row (logbeta = 0 whatever the source).
    ``is``: MODEL for ``self``, ``guided`` and ``rewritten`` rows (model-generated ids); ``expert`` rows
    follow ``expert_behavior`` (``uniform`` -> UNIFORM, ``one`` -> ONE, ``model`` -> MODEL).
    ``sources`` is LongTensor[B] from :func:`source_ids`.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not one of {', '.join(LOSSES)}")
    if expert_behavior not in EXPERT_BEHAVIORS:
        raise ValueError(f"expert_behavior={expert_behavior!r} is not one of {', '.join(EXPERT_BEHAVIORS)}")
    sources = torch.as_tensor(sources, dtype=torch.long)
    if loss == "sft":
        return torch.full_like(sources, WeightRule.ONE)
    if loss == "dft":
        return torch.full_like(sources, WeightRule.UNIFORM)
    expert = sources == SOURCES.index("expert")
    return torch.where(
        expert, torch.full_like(sources, _EXPERT_RULES[expert_behavior]), torch.full_like(sources, WeightRule.MODEL)
    )


def importance_weights(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    rules: torch.Tensor,
    behavior_logprobs: torch.Tensor | None = None,
    *,
    clip_max: float | None = None,
    clip_min: float | None = None,
    clip_mode: str = "truncate",
    level: str = "token",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detached importance weights ``(weights, log_ratio, clipped)``, each [B, T].

    Args:
        logprobs: [B, T] log pi_theta of the response tokens (only read detached).
        mask: [B, T] bool, True on loss tokens.
        rules: LongTensor[B] of :class:`WeightRule` values.
        behavior_logprobs: [B, T] logbeta aligned with ``logprobs``; read only on loss tokens of
            MODEL rows (anything, even inf/NaN, elsewhere). May be None when no row is MODEL.
        clip_max, clip_min: bounds on w (None: unbounded on that side).
        clip_mode: ``truncate`` clamps w into [clip_min, clip_max]; ``mask`` sets w = 0 outside.
        level: ``token`` weighs each token by exp(l_t); ``sequence`` gives every loss token of a
            row the weight exp(mean_t l_t) over that row's loss tokens, clipped the same way: the
            geometric mean of the token ratios (as in GSPO and iw-SFT), not their product.

    Returns:
        weights: the applied (clipped) w_t; 0 where ``mask`` is False.
        log_ratio: the l_t behind the weight before clipping (at ``sequence`` level the row mean,
            repeated on the row's loss tokens), so exp(log_ratio) is the unclipped weight; 0 off mask.
        clipped: bool, True on loss tokens whose unclipped weight lies outside [clip_min, clip_max]
            (strictly). ONE rows are never clipped: their weight is exactly 1.
    """
    if clip_mode not in CLIP_MODES:
        raise ValueError(f"clip_mode={clip_mode!r} is not one of {', '.join(CLIP_MODES)}")
    if level not in LEVELS:
        raise ValueError(f"level={level!r} is not one of {', '.join(LEVELS)}")
    if clip_min is not None and clip_max is not None and clip_min > clip_max:
        raise ValueError(f"clip_min={clip_min} is larger than clip_max={clip_max}")
    mask = mask.bool()
    logp = logprobs.detach().float()
    rules = torch.as_tensor(rules, dtype=torch.long, device=logp.device).view(-1, 1)
    zero = torch.zeros_like(logp)
    is_model = rules == WeightRule.MODEL
    if behavior_logprobs is None:
        if bool(is_model.any()):
            raise ValueError("behavior_logprobs are needed: some rows use the MODEL weight rule")
        log_beta = zero
    else:
        log_beta = torch.where(is_model, behavior_logprobs.detach().float(), zero)
    weighted = mask & (rules != WeightRule.ONE)
    # torch.where, never a product: garbage (inf, NaN) off the mask must not leak in.
    log_ratio = torch.where(weighted, logp - log_beta, zero)
    if level == "sequence":
        row_mean = log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        log_ratio = torch.where(weighted, row_mean.expand_as(log_ratio), zero)
    raw = torch.exp(log_ratio)
    outside = torch.zeros_like(mask)
    if clip_max is not None:
        outside = outside | (raw > clip_max)
    if clip_min is not None:
        outside = outside | (raw < clip_min)
    clipped = outside & weighted
    if clip_mode == "truncate":
        bounded = raw.clamp(min=clip_min, max=clip_max) if (clip_min, clip_max) != (None, None) else raw
        weights = torch.where(clipped, bounded, raw)
    else:
        weights = torch.where(clipped, zero, raw)
    return torch.where(mask, weights, zero), log_ratio, clipped


def weighted_nll(
    logprobs: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    num_step_tokens: float | int | torch.Tensor,
) -> torch.Tensor:
    """-sum_t m_t * sg(w_t) * logp_t / N, a 0-dim fp32 tensor.

    ``num_step_tokens`` (N: int, float or 0-dim tensor) is the number of loss tokens of the whole
    optimiser step; N <= 0 is read as 1 so that an empty step gives 0, never NaN.
    """
    terms = torch.where(mask.bool(), weights.detach().float() * logprobs.float(), torch.zeros_like(logprobs.float()))
    denominator = torch.as_tensor(num_step_tokens, dtype=torch.float32, device=terms.device)
    denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return -terms.sum() / denominator


@dataclass(frozen=True)
class WeightedLoss:
    """The loss and the detached per-token quantities the statistics need (all [B, T] but ``loss``)."""

    loss: torch.Tensor
    weights: torch.Tensor
    log_ratio: torch.Tensor
    clipped: torch.Tensor


def weighted_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    rules: torch.Tensor,
    behavior_logprobs: torch.Tensor | None = None,
    *,
    num_step_tokens: float | int | torch.Tensor,
    clip_max: float | None = None,
    clip_min: float | None = None,
    clip_mode: str = "truncate",
    level: str = "token",
) -> WeightedLoss:
    """The loss family: :func:`importance_weights` then :func:`weighted_nll` (see both for arguments)."""
    weights, log_ratio, clipped = importance_weights(
        logprobs,
        mask,
        rules,
        behavior_logprobs,
        clip_max=clip_max,
        clip_min=clip_min,
        clip_mode=clip_mode,
        level=level,
    )
    loss = weighted_nll(logprobs, weights, mask, num_step_tokens)
    return WeightedLoss(loss, weights, log_ratio, clipped)
