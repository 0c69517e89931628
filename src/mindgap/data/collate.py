"""Turn records into token tensors: standard prompt (masked) + response (trained)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mindgap.errors import DataError
from mindgap.prompts import standard_prompt
from mindgap.training.losses import IGNORE_INDEX


@dataclass(frozen=True)
class TokenizedExample:
    id: str
    source: str
    input_ids: list[int]
    # Number of leading prompt tokens (not trained on).
    prompt_length: int
    # Behaviour log-probs of the response tokens kept (after truncation); None when not asked for.
    behavior_logprobs: list[float] | None = None
    # Loss tokens of the optimiser step the example is trained in (set by the step plan).
    step_loss_tokens: int = 0
    # Tokens cut from the end to fit max_length.
    truncated_tokens: int = 0

    @property
    def loss_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_length


def response_ids(record: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The response tokens trained on: the generated ids exactly, or expert text tokenised plus eos."""
    if record["response_token_ids"] is not None:
        return list(record["response_token_ids"])
    return tokenizer(record["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_record(
    record: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    prompt_type: str,
    max_length: int,
    behavior_field: str | None = None,
) -> TokenizedExample:
    """Prompt + response ids, cut to ``max_length``; model responses keep their generated ids exactly.

    ``behavior_field`` (``rescored_logprobs`` or ``behavior_logprobs``) names the record's
    behaviour log-probs to carry along, aligned with the response tokens; null values stay None.
    """
    prompt = standard_prompt(record["problem"], prompt_type, tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response = response_ids(record, tokenizer)
    full_ids = prompt_ids + response
    input_ids = full_ids[:max_length]
    prompt_length = min(len(prompt_ids), len(input_ids))
    behavior = record.get(behavior_field) if behavior_field else None
    if behavior is not None:
        if len(behavior) != len(response):
            raise DataError(
                f"record {record['id']}: {behavior_field} has {len(behavior)} values"
                f" for {len(response)} response tokens"
            )
        if not all(math.isfinite(value) for value in behavior):
            raise DataError(f"record {record['id']}: {behavior_field} holds a non-finite value")
        behavior = list(behavior[: len(input_ids) - prompt_length])
    return TokenizedExample(
        record["id"],
        record["source"],
        input_ids,
        prompt_length,
        behavior,
        truncated_tokens=len(full_ids) - len(input_ids),
    )


class Collator:
    """Right-pads a list of examples; labels are -100 on prompt and padding positions.

    ``step_loss_tokens`` is the loss-token count of the examples' optimiser step; a batch built
    outside a step plan counts as a step of its own.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[TokenizedExample]) -> dict[str, Any]:
        length = max(len(example.input_ids) for example in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        # Aligned with labels: the behaviour log-prob of the token at each response position.
        behavior = torch.zeros((len(examples), length), dtype=torch.float32)
        for row, example in enumerate(examples):
            ids = torch.tensor(example.input_ids, dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            labels[row, example.prompt_length : len(ids)] = ids[example.prompt_length :]
            if example.behavior_logprobs is not None:
                behavior[row, example.prompt_length : len(ids)] = torch.tensor(example.behavior_logprobs)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "behavior_logprobs": behavior,
            "has_behavior": torch.tensor([example.behavior_logprobs is not None for example in examples]),
            "ids": [example.id for example in examples],
            "sources": [example.source for example in examples],
            "step_loss_tokens": examples[0].step_loss_tokens or sum(example.loss_tokens for example in examples),
        }
