"""Importance-weight statistics from sums, so that they reduce exactly across micro-batches and ranks.

Per group of tokens (one group per source of ``mindgap.records.SOURCES``; ``all`` is derived from
them) we accumulate

    count N, sum w, sum w^2, number clipped,                         (reduced with SUM)
    tokens and sum of l on MODEL rows, tokens and sum of log p on UNIFORM rows
    max w                                                            (reduced with MAX)

and only then finish into mean, population variance (sum w^2 / N - mean^2), max, effective sample
size (sum w)^2 / (N * sum w^2), clipped fraction, mean log-ratio l = log p - log beta (rows weighed
against a behaviour policy) and mean log p (DFT-style rows, where beta is uniform and l is just
log p). Never average per-rank variances.

Typical use (the caller owns the reduction; nothing here touches ``torch.distributed``)::

    step = WeightSums.zeros(device)
    for micro_batch in ...:
        out = weighted_loss(...)
        step = step.merge(weight_sums(out.weights, out.log_ratio, out.clipped, mask, sources, rules))
    torch.distributed.all_reduce(step.sums, op=ReduceOp.SUM)
    torch.distributed.all_reduce(step.maxima, op=ReduceOp.MAX)
    log(finish(step))

w is the applied weight (after clipping); l is the log-ratio before clipping. Weights are never
negative, so 0 is the neutral element of the max. Groups with no loss tokens are omitted from
:func:`finish`'s dict (no key, never NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mindgap.records import SOURCES
from mindgap.training.losses import WeightRule

# Columns of WeightSums.sums.
FIELDS = (
    "count",
    "weight_sum",
    "weight_sq_sum",
    "clipped",
    "ratio_count",
    "log_ratio_sum",
    "logprob_count",
    "logprob_sum",
)
DTYPE = torch.float64


@dataclass(frozen=True)
class WeightSums:
    """``sums``: [len(SOURCES), len(FIELDS)] float64 (reduce with SUM); ``maxima``: [len(SOURCES)] (reduce with MAX)."""

    sums: torch.Tensor
    maxima: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device | str | None = None) -> WeightSums:
        return cls(
            torch.zeros(len(SOURCES), len(FIELDS), dtype=DTYPE, device=device),
            torch.zeros(len(SOURCES), dtype=DTYPE, device=device),
        )

    def merge(self, other: WeightSums) -> WeightSums:
        """The sums of the union of both token sets (micro-batches, or ranks)."""
        return WeightSums(self.sums + other.sums, torch.maximum(self.maxima, other.maxima))


def weight_sums(
    weights: torch.Tensor,
    log_ratio: torch.Tensor,
    clipped: torch.Tensor,
    mask: torch.Tensor,
    sources: torch.Tensor,
    rules: torch.Tensor,
) -> WeightSums:
    """Per-source sums over the loss tokens (``mask`` True) of one batch.

    ``weights``, ``log_ratio``, ``clipped``, ``mask`` are [B, T] (as from ``losses.weighted_loss``);
    ``sources`` is LongTensor[B] of indices into ``SOURCES`` (``losses.source_ids``) and ``rules``
    the rows' :class:`~mindgap.training.losses.WeightRule` values (``losses.weight_rules``).
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=DTYPE, device=weights.device)
    w = torch.where(mask, weights.detach().to(DTYPE), zero)
    ell = torch.where(mask, log_ratio.detach().to(DTYPE), zero)
    rules = torch.as_tensor(rules, dtype=torch.long, device=w.device)
    tokens = mask.sum(-1).to(DTYPE)
    is_model = (rules == WeightRule.MODEL).to(DTYPE)
    is_uniform = (rules == WeightRule.UNIFORM).to(DTYPE)
    per_row = torch.stack(
        [
            tokens,
            w.sum(-1),
            (w * w).sum(-1),
            (clipped.bool() & mask).sum(-1).to(DTYPE),
            tokens * is_model,
            ell.sum(-1) * is_model,
            tokens * is_uniform,
            # With beta uniform, l_t is log p_t.
            ell.sum(-1) * is_uniform,
        ],
        dim=-1,
    )  # [B, F]
    membership = F.one_hot(torch.as_tensor(sources, dtype=torch.long, device=w.device), len(SOURCES)).to(DTYPE)
    sums = membership.T @ per_row  # [G, F]
    if w.numel() == 0:
        maxima = torch.zeros(len(SOURCES), dtype=DTYPE, device=w.device)
    else:
        maxima = torch.where(membership.bool(), w.amax(-1)[:, None], zero).amax(0)
    return WeightSums(sums, maxima)


def _finish_group(prefix: str, row: list[float], maximum: float) -> dict[str, float]:
    count, weight_sum, weight_sq_sum, clipped, ratio_count, log_ratio_sum, logprob_count, logprob_sum = row
    mean = weight_sum / count
    means = {}
    if ratio_count > 0:
        means[f"{prefix}/log_ratio_mean"] = log_ratio_sum / ratio_count
    if logprob_count > 0:
        means[f"{prefix}/logprob_mean"] = logprob_sum / logprob_count
    return {
        f"{prefix}/tokens": count,
        f"{prefix}/weight_mean": mean,
        # Population variance; clamped at 0 against rounding.
        f"{prefix}/weight_var": max(weight_sq_sum / count - mean * mean, 0.0),
        f"{prefix}/weight_max": maximum,
        # (sum w)^2 / (N sum w^2) in (0, 1]; 0 when every weight is 0 (e.g. all masked by clipping).
        f"{prefix}/ess": weight_sum * weight_sum / (count * weight_sq_sum) if weight_sq_sum > 0 else 0.0,
        f"{prefix}/clipped_frac": clipped / count,
    } | means


def finish(sums: WeightSums, prefix: str = "is") -> dict[str, float]:
    """Flat dict ``{prefix}/<source|all>/{tokens,weight_mean,weight_var,weight_max,ess,clipped_frac}``.

    Plus ``log_ratio_mean`` over the group's tokens weighed against a behaviour policy (MODEL rows)
    and ``logprob_mean`` over its DFT-style tokens (UNIFORM rows), where it has any. Groups with zero
    tokens are omitted.
    """
    rows = sums.sums.detach().cpu().tolist()
    maxima = sums.maxima.detach().cpu().tolist()
    out: dict[str, float] = {}
    for source, row, maximum in zip(SOURCES, rows, maxima, strict=True):
        if row[0] > 0:
            out.update(_finish_group(f"{prefix}/{source}", row, maximum))
    total = sums.sums.detach().sum(0).cpu().tolist()
    if total[0] > 0:
        out.update(_finish_group(f"{prefix}/all", total, max(maxima)))
    return out


# Fixed bins of log10 w, the same on every rank and step, so histograms reduce by summing counts.
# Weights outside [1e-6, 1e2] (0 included, from masking) fall into the first or last bin.
HISTOGRAM_EDGES = torch.linspace(-6.0, 2.0, 41, dtype=DTYPE)


def weight_histogram(weights: torch.Tensor, mask: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Counts of loss tokens per (source, log10-weight bin): float64 [len(SOURCES), len(HISTOGRAM_EDGES) - 1]."""
    mask = mask.bool()
    log_weights = weights.detach().to(DTYPE)[mask].clamp_min(1e-30).log10()
    edges = HISTOGRAM_EDGES.to(log_weights.device)
    bins = (torch.bucketize(log_weights, edges, right=True) - 1).clamp(0, len(edges) - 2)
    token_sources = torch.as_tensor(sources, dtype=torch.long, device=mask.device)[:, None].expand_as(mask)[mask]
    counts = torch.zeros(len(SOURCES) * (len(edges) - 1), dtype=DTYPE, device=mask.device)
    counts.index_add_(0, token_sources * (len(edges) - 1) + bins, torch.ones_like(log_weights))
    return counts.view(len(SOURCES), len(edges) - 1)
