"""Records become prompt + response tokens; only the response is trained on."""

from __future__ import annotations

import re

import pytest

from mindgap.data.collate import Collator, tokenize_record
from mindgap.errors import DataError
from mindgap.prompts import standard_prompt
from mindgap.training.losses import IGNORE_INDEX


def _record(**overrides) -> dict:
    return {
        "id": "r1",
        "source": "expert",
        "problem": "What is 2+3?",
        "response": "2+3=5. The final answer is $\\boxed{5}$.",
        "response_token_ids": None,
    } | overrides


def test_expert_text_is_tokenized_with_eos_under_the_standard_prompt(tiny_tokenizer) -> None:
    example = tokenize_record(_record(), tiny_tokenizer, "qwen-boxed", max_length=512)
    prompt_ids = tiny_tokenizer(standard_prompt("What is 2+3?", "qwen-boxed"), add_special_tokens=False)["input_ids"]
    assert example.input_ids[: example.prompt_length] == prompt_ids
    response = example.input_ids[example.prompt_length :]
    assert response[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(response[:-1]) == _record()["response"]


def test_generated_ids_are_used_exactly(tiny_tokenizer) -> None:
    # Ids a tokenizer would never produce for this text: they must pass through untouched.
    generated = [17, 17, 300, 2]
    example = tokenize_record(_record(source="self", response_token_ids=generated), tiny_tokenizer, "qwen-boxed", 512)
    assert example.input_ids[example.prompt_length :] == generated


def test_truncation_and_padding_masks(tiny_tokenizer) -> None:
    full = tokenize_record(_record(), tiny_tokenizer, "qwen-boxed", max_length=512)
    long = tokenize_record(_record(), tiny_tokenizer, "qwen-boxed", max_length=full.prompt_length + 5)
    short = tokenize_record(_record(source="self", response_token_ids=[9, 2]), tiny_tokenizer, "qwen-boxed", 512)
    assert len(long.input_ids) == full.prompt_length + 5
    assert long.input_ids == full.input_ids[: full.prompt_length + 5]
    batch = Collator(pad_token_id=tiny_tokenizer.pad_token_id)([long, short])
    assert batch["input_ids"].shape == (2, max(len(long.input_ids), len(short.input_ids)))
    labels, mask = batch["labels"], batch["attention_mask"]
    assert (labels[0, : long.prompt_length] == IGNORE_INDEX).all()
    assert labels[0, long.prompt_length :].tolist() == long.input_ids[long.prompt_length :]
    assert labels[1].ne(IGNORE_INDEX).sum().item() == 2
    assert mask[1].sum().item() == len(short.input_ids)
    assert batch["ids"] == ["r1", "r1"] and batch["sources"] == ["expert", "self"]


def test_behaviour_logprobs_sit_on_the_label_positions(tiny_tokenizer) -> None:
    record = _record(source="self", response_token_ids=[9, 10, 2], rescored_logprobs=[-0.5, -0.25, -0.125])
    example = tokenize_record(record, tiny_tokenizer, "qwen-boxed", 512, behavior_field="rescored_logprobs")
    expert = tokenize_record(_record(rescored_logprobs=None), tiny_tokenizer, "qwen-boxed", 512, "rescored_logprobs")
    batch = Collator(pad_token_id=tiny_tokenizer.pad_token_id)([example, expert])
    start = example.prompt_length
    assert batch["behavior_logprobs"][0, start : start + 3].tolist() == [-0.5, -0.25, -0.125]
    assert batch["behavior_logprobs"][0].abs().sum().item() == 0.875
    assert batch["has_behavior"].tolist() == [True, False]
    # Truncation cuts the behaviour values with the tokens.
    cut = tokenize_record(record, tiny_tokenizer, "qwen-boxed", start + 2, behavior_field="rescored_logprobs")
    assert cut.behavior_logprobs == [-0.5, -0.25]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([-0.5], "record r1: rescored_logprobs has 1 values for 3 response tokens"),
        ([-0.5, float("nan"), -1.0], "record r1: rescored_logprobs holds a non-finite value"),
    ],
)
def test_bad_behaviour_logprobs_name_the_record(tiny_tokenizer, values: list[float], message: str) -> None:
    record = _record(source="self", response_token_ids=[9, 10, 2], rescored_logprobs=values)
    with pytest.raises(DataError, match=re.escape(message)):
        tokenize_record(record, tiny_tokenizer, "qwen-boxed", 512, behavior_field="rescored_logprobs")
