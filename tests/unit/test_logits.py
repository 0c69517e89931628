"""The chunked lm head gives the same log-probs and gradients as full logits."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mindgap.errors import ConfigError
from mindgap.training.logits import label_logprobs
from mindgap.training.losses import IGNORE_INDEX


def _model(tied: bool) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=256,
        tie_word_embeddings=tied,
    )
    return Qwen2ForCausalLM(config)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 300, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 9:] = 0
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX  # prompt
    labels[2, 9:] = IGNORE_INDEX  # padding
    return input_ids, attention_mask, labels


def _logprobs_and_gradient(model, chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    model.zero_grad()
    logprobs, mask = label_logprobs(model, *_batch(), chunk_size=chunk_size)
    (logprobs * mask).sum().backward()
    return logprobs.detach(), mask, torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_chunked_head_matches_full_logits(tied: bool, chunk_size: int) -> None:
    model = _model(tied)
    full_logprobs, full_mask, full_gradient = _logprobs_and_gradient(model, None)
    logprobs, mask, gradient = _logprobs_and_gradient(model, chunk_size)
    # 3 rows x 11 targets, minus 3 prompt targets per row and 3 padding targets in row 2.
    assert int(mask.sum()) == 3 * 8 - 3
    assert torch.equal(mask, full_mask)
    assert torch.all(logprobs[~mask] == 0)
    torch.testing.assert_close(logprobs, full_logprobs, rtol=0, atol=1e-5)
    torch.testing.assert_close(gradient, full_gradient, rtol=0, atol=1e-5 * full_gradient.abs().max().item())


def test_heads_that_transform_logits_are_refused() -> None:
    model = _model(tied=True)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ConfigError, match="final_logit_softcapping"):
        label_logprobs(model, *_batch(), chunk_size=4)
