"""The sampling distribution of both generators and the rescoring pass: softmax(logits / T) over the top-p nucleus."""

from __future__ import annotations

import torch


def top_p_logprobs(
    logits: torch.Tensor, temperature: float, top_p: float, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-probs of the sampling distribution: logits / T, then renormalised over the top-p nucleus.

    Same rule as transformers' TopPLogitsWarper and vLLM's processed log-probs: tokens are removed
    while the probability mass of the smaller tokens stays within 1 - top_p; the most likely token
    always stays. ``keep`` (one id per row) stays too: a token the generator drew was in its nucleus,
    and a rounding difference at the nucleus edge must not give it probability 0.
    """
    scaled = logits / temperature if temperature > 0 else logits
    if top_p < 1:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= 1 - top_p
        remove_sorted[..., -1] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        if keep is not None:
            remove.scatter_(-1, keep.unsqueeze(-1), False)
        scaled = scaled.masked_fill(remove, float("-inf"))
    return scaled.log_softmax(dim=-1)
