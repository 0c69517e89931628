"""The rescoring pass: behaviour log-probs of every record from the Hugging Face model's own forward.

``rescored_logprobs`` is log π₀(y_t | behavior_prompt, y_<t) at temperature 1: the standard prompt
for self and expert records, the guided prompt for guided ones (DESIGN.md §1). Training against
these makes the importance weight exactly 1 at step 0 for self data, whatever engine sampled it.

The generator's recorded values are of the *sampling* distribution (temperature, top-p), so the
engine-mismatch diagnostic compares them with the same forward rescaled by the record's
temperature and renormalised over its top-p set.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import PreTrainedTokenizerBase

from mindgap.data.collate import response_ids
from mindgap.models import ModelSource, load_causal_lm
from mindgap.records import Record


def top_p_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs of the sampling distribution: logits / T, then renormalised over the top-p nucleus.

    Same rule as transformers' TopPLogitsWarper and vLLM's processed log-probs: tokens are removed
    while the probability mass of the smaller tokens stays within 1 - top_p; the most likely token
    always stays.
    """
    scaled = logits / temperature if temperature > 0 else logits
    if top_p < 1:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= 1 - top_p
        remove_sorted[..., -1] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        scaled = scaled.masked_fill(remove, float("-inf"))
    return scaled.log_softmax(dim=-1)


class Rescorer:
    """Teacher-forced log-probs of records' responses under their behaviour prompts."""

    def __init__(
        self,
        model: ModelSource | str,
        dtype: str,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int,
        device: str | None = None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_causal_lm(model, dtype=dtype).to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.no_grad()
    def rescore(self, records: list[Record]) -> dict[str, float]:
        """Fill ``rescored_logprobs`` of every record; return the largest |recorded - rescored| per source."""
        largest_gap: dict[str, float] = defaultdict(float)
        for start in range(0, len(records), self.batch_size):
            batch = records[start : start + self.batch_size]
            for record, (rescored, sampling_logprobs) in zip(batch, self._score_batch(batch), strict=True):
                record.rescored_logprobs = rescored.tolist()
                if record.behavior_logprobs is not None:
                    recorded = torch.tensor(record.behavior_logprobs, dtype=torch.float32)
                    gap = (recorded - sampling_logprobs).abs().max().item()
                    largest_gap[record.source] = max(largest_gap[record.source], gap)
        return dict(largest_gap)

    def _score_batch(self, records: list[Record]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        prompts = [self.tokenizer(r.behavior_prompt, add_special_tokens=False)["input_ids"] for r in records]
        responses = [
            response_ids({"response": r.response, "response_token_ids": r.response_token_ids}, self.tokenizer)
            for r in records
        ]
        sequences = [prompt + response for prompt, response in zip(prompts, responses, strict=True)]
        # Left padding puts every response at the end, so only the last ``longest response`` logits are
        # needed: the (long) guided prompts never materialise vocabulary-sized rows.
        width = max(len(sequence) for sequence in sequences)
        input_ids = torch.full((len(records), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, sequence in enumerate(sequences):
            input_ids[row, width - len(sequence) :] = torch.tensor(sequence)
            attention_mask[row, width - len(sequence) :] = 1
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        keep = max(len(response) for response in responses) + 1
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            logits_to_keep=keep,
        ).logits.float()
        scored = []
        for row, (record, response) in enumerate(zip(records, responses, strict=True)):
            # Logits at position i predict token i + 1: the response's predictors end one before the last.
            predictors = logits[row, keep - 1 - len(response) : keep - 1]
            targets = torch.tensor(response, device=self.device)
            rescored = -torch.nn.functional.cross_entropy(predictors, targets, reduction="none")
            if record.behavior_logprobs is None:
                sampling_logprobs = rescored
            else:
                info = record.generator
                sampled = top_p_logprobs(predictors, info.temperature, info.top_p)
                sampling_logprobs = sampled.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            scored.append((rescored.cpu(), sampling_logprobs.cpu()))
        return scored
