"""Records become prompt + response tokens; only the response is trained on."""

from __future__ import annotations

from mindgap.data.collate import Collator, tokenize_record
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
