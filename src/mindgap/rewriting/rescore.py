"""The rescoring pass: behaviour log-probs of every record from the Hugging Face model's own forward.

``rescored_logprobs`` is the log-prob of each response token under the distribution the record was
drawn from: π₀(· | behavior_prompt, y_<t) with the logits divided by the record's temperature and
renormalised over its top-p nucleus (``top_p_logprobs``, the rule both generators sample by). The
prompt is the standard one for self and expert records, the guided one for guided records
(DESIGN.md §1). So ``is`` weights π_θ / β are against what the data was sampled from at any
temperature, and at T = 1, top-p = 1 the weight of self data is exactly 1 at step 0, whatever engine
sampled it.

Records without a sampling density get log π₀ at temperature 1: expert text (nothing sampled it) and
greedy records (T = 0, a point mass on the argmax). For greedy records this treats the response as a
draw of the model whose mode it is, so the weight starts at 1 and measures how far training moved
from that model; the point mass itself (log β = 0) would give the DFT weight π_θ(y_t).

The generator's recorded values follow the same rule, so the recorded-vs-rescored gap compares the
two directly: what is left is engine and batching numerics (KV-cached decoding against one full
forward), never a difference of distributions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from mindgap.data.collate import response_ids
from mindgap.generation.distribution import top_p_logprobs
from mindgap.models.loading import ModelSource, load_causal_lm
from mindgap.records import Record


@dataclass
class Gaps:
    """Per source, the largest finite |recorded - rescored| log-prob of a token, and how many records had an
    infinite one (a sampled token outside the rescored top-p nucleus: the engines disagree on the nucleus)."""

    largest: dict[str, float] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)

    def add(self, source: str, gap: float) -> None:
        if math.isfinite(gap):
            self.largest[source] = max(self.largest.get(source, 0.0), gap)
        else:
            self.nonfinite[source] = self.nonfinite.get(source, 0) + 1

    def update(self, other: Gaps) -> None:
        for source, gap in other.largest.items():
            self.add(source, gap)
        for source, count in other.nonfinite.items():
            self.nonfinite[source] = self.nonfinite.get(source, 0) + count


@dataclass
class NonFinite:
    """What :func:`without_nonfinite` did to a chunk's records."""

    records: list[Record]
    # per source: records removed because a rescored log-prob is not finite
    removed: dict[str, int] = field(default_factory=dict)
    # problems left without a record, given their expert solution instead
    fell_back_to_expert: int = 0
    # problem id -> reason: the expert solution's log-probs are not finite either
    dropped: dict[str, str] = field(default_factory=dict)


def _finite(record: Record) -> bool:
    return all(math.isfinite(value) for value in record.rescored_logprobs or ())


def without_nonfinite(
    records: list[Record],
    expert_records: Callable[[list[Record]], list[Record]],
    rescore: Callable[[list[Record]], Gaps],
) -> NonFinite:
    """The records whose rescored log-probs are all finite; a problem left with none falls back to its expert
    solution (``expert_records`` builds them from one removed record per problem; ``rescore`` scores them), and
    is dropped if that is not finite either. Regenerating would sample the same tokens again: chunk seeds are
    fixed.
    """
    kept = [record for record in records if _finite(record)]
    outcome = NonFinite(records=kept)
    for record in records:
        if not _finite(record):
            outcome.removed[record.source] = outcome.removed.get(record.source, 0) + 1
    covered = {record.id for record in kept}
    orphans = {record.id: record for record in records if record.id not in covered}
    experts = expert_records(list(orphans.values()))
    if experts:
        rescore(experts)
    for expert in experts:
        if _finite(expert):
            kept.append(expert)
            outcome.fell_back_to_expert += 1
        else:
            outcome.dropped[expert.id] = "non-finite rescored log-probs, of its expert solution too"
    return outcome


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
    def rescore(self, records: list[Record]) -> Gaps:
        """Fill ``rescored_logprobs`` of every record; return the recorded-vs-rescored gaps per source.

        ``rescored_logprobs`` may come out non-finite (a token the model gives no mass): such records must not be
        committed (see :func:`without_nonfinite`).
        """
        gaps = Gaps()
        for start in range(0, len(records), self.batch_size):
            batch = records[start : start + self.batch_size]
            for record, rescored in zip(batch, self._score_batch(batch), strict=True):
                record.rescored_logprobs = rescored.tolist()
                if record.behavior_logprobs is not None:
                    recorded = torch.tensor(record.behavior_logprobs, dtype=torch.float32)
                    gaps.add(record.source, (recorded - rescored).abs().max().item())
        return gaps

    def _score_batch(self, records: list[Record]) -> list[torch.Tensor]:
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
            info = record.generator
            if info.temperature == 0:
                rescored = -torch.nn.functional.cross_entropy(predictors, targets, reduction="none")
            else:
                sampled = top_p_logprobs(predictors, info.temperature, info.top_p, keep=targets)
                rescored = sampled.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            scored.append(rescored.cpu())
        return scored
