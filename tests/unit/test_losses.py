"""Losses against hand-computed values and against the Hugging Face reference."""

from __future__ import annotations

import math

import torch

from mindgap.training.losses import IGNORE_INDEX, sft_loss, token_logprobs


def test_sft_three_token_example() -> None:
    # Vocabulary of 2, uniform logits at every position: log p = log(1/2) for each target.
    # Sequence [0, 1, 1, 0] with the first token as prompt: targets are 1, 1, 0 (3 tokens),
    # the loss is -(3 * log(1/2)) / 3 = log 2.
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[IGNORE_INDEX, 1, 1, 0]])
    logprobs, mask = token_logprobs(logits, labels)
    assert mask.tolist() == [[True, True, True]]
    torch.testing.assert_close(logprobs, torch.full((1, 3), math.log(0.5)))
    torch.testing.assert_close(sft_loss(logprobs, mask), torch.tensor(math.log(2.0)))


def test_sft_uneven_logits_by_hand() -> None:
    # Position 0 predicts label 1 with logits [0, ln 3]: p = 3/4. Position 1 predicts label 0 with
    # logits [ln 4, 0]: p = 4/5. Loss = -(ln 3/4 + ln 4/5) / 2.
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    logprobs, mask = token_logprobs(logits, labels)
    expected = -(math.log(3 / 4) + math.log(4 / 5)) / 2
    assert abs(sft_loss(logprobs, mask).item() - expected) < 1e-6


def test_sft_equals_hugging_face_causal_lm_loss(tiny_model_path: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    torch.manual_seed(0)
    input_ids = torch.randint(3, 2000, (3, 9))
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX
    labels[2, 7:] = IGNORE_INDEX
    output = model(input_ids=input_ids, labels=labels)
    logprobs, mask = token_logprobs(output.logits, labels)
    torch.testing.assert_close(sft_loss(logprobs, mask), output.loss, atol=1e-6, rtol=1e-6)
