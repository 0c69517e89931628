"""Turn records into token tensors: standard prompt (masked) + response (trained)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mindgap.prompts import standard_prompt
from mindgap.training.losses import IGNORE_INDEX


@dataclass(frozen=True)
class TokenizedExample:
    id: str
    source: str
    input_ids: list[int]
    # Number of leading prompt tokens (not trained on).
    prompt_length: int
    # Loss tokens of the optimiser step the example is trained in (set by the step plan).
    step_loss_tokens: int = 0

    @property
    def loss_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_length


def response_ids(record: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The response tokens trained on: the generated ids exactly, or expert text tokenised plus eos."""
    if record["response_token_ids"] is not None:
        return list(record["response_token_ids"])
    return tokenizer(record["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_record(
    record: dict[str, Any], tokenizer: PreTrainedTokenizerBase, prompt_type: str, max_length: int
) -> TokenizedExample:
    """Prompt + response ids, cut to ``max_length``; model responses keep their generated ids exactly."""
    prompt = standard_prompt(record["problem"], prompt_type, tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + response_ids(record, tokenizer))[:max_length]
    return TokenizedExample(record["id"], record["source"], input_ids, min(len(prompt_ids), len(input_ids)))


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
        for row, example in enumerate(examples):
            ids = torch.tensor(example.input_ids, dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            labels[row, example.prompt_length : len(ids)] = ids[example.prompt_length :]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "ids": [example.id for example in examples],
            "sources": [example.source for example in examples],
            "step_loss_tokens": examples[0].step_loss_tokens or sum(example.loss_tokens for example in examples),
        }
