"""Losses against hand-computed values and against the Hugging Face reference.

Most examples use one 3-token response with model probabilities p = (1/2, 1/4, 1/8), so that
-logp = (1, 2, 3) ln 2, and behaviour probabilities beta = (1/8, 1/2, 1/8), so that the
importance ratios are w = p / beta = (4, 1/2, 1) and l = ln w = (2 ln 2, -ln 2, 0).
"""

from __future__ import annotations

import math

import pytest
import torch

from mindgap.training.losses import (
    IGNORE_INDEX,
    WeightRule,
    importance_weights,
    source_ids,
    token_logprobs,
    weight_rules,
    weighted_loss,
    weighted_nll,
)

LN2 = math.log(2.0)
P = [1 / 2, 1 / 4, 1 / 8]
BETA = [1 / 8, 1 / 2, 1 / 8]


def _logp() -> torch.Tensor:
    return torch.tensor([P]).log()


def _log_beta() -> torch.Tensor:
    return torch.tensor([BETA]).log()


def _mask(batch: int = 1, length: int = 3) -> torch.Tensor:
    return torch.ones(batch, length, dtype=torch.bool)


def _rules(*rules: WeightRule) -> torch.Tensor:
    return torch.tensor([int(rule) for rule in rules])


def _close(actual: torch.Tensor, expected: float | list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=1e-6, atol=1e-6)


def _sft(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """w = 1 and N = the batch's loss tokens: the plain mean NLL."""
    return weighted_nll(logprobs, torch.ones_like(logprobs), mask, mask.sum())


def test_sft_three_token_example() -> None:
    # Vocabulary of 2, uniform logits at every position: log p = log(1/2) for each target.
    # Sequence [0, 1, 1, 0] with the first token as prompt: targets are 1, 1, 0 (3 tokens),
    # the loss is -(3 * log(1/2)) / 3 = log 2.
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[IGNORE_INDEX, 1, 1, 0]])
    logprobs, mask = token_logprobs(logits, labels)
    assert mask.tolist() == [[True, True, True]]
    torch.testing.assert_close(logprobs, torch.full((1, 3), math.log(0.5)))
    torch.testing.assert_close(_sft(logprobs, mask), torch.tensor(math.log(2.0)))


def test_sft_uneven_logits_by_hand() -> None:
    # Position 0 predicts label 1 with logits [0, ln 3]: p = 3/4. Position 1 predicts label 0 with
    # logits [ln 4, 0]: p = 4/5. Loss = -(ln 3/4 + ln 4/5) / 2.
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    logprobs, mask = token_logprobs(logits, labels)
    expected = -(math.log(3 / 4) + math.log(4 / 5)) / 2
    assert abs(_sft(logprobs, mask).item() - expected) < 1e-6


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
    torch.testing.assert_close(_sft(logprobs, mask), output.loss, atol=1e-6, rtol=1e-6)
    # The general function with the sft rule and N = the batch's loss tokens is the same loss.
    rules = weight_rules("sft", source_ids(["self", "guided", "expert"]))
    general = weighted_loss(logprobs, mask, rules, num_step_tokens=mask.sum())
    torch.testing.assert_close(general.loss, output.loss, atol=1e-6, rtol=1e-6)


def test_weight_rules_per_loss_and_source() -> None:
    sources = source_ids(["self", "guided", "expert", "rewritten"])
    assert sources.tolist() == [0, 1, 2, 3]
    one, uniform, model = int(WeightRule.ONE), int(WeightRule.UNIFORM), int(WeightRule.MODEL)
    assert weight_rules("sft", sources).tolist() == [one, one, one, one]
    assert weight_rules("dft", sources, "model").tolist() == [uniform, uniform, uniform, uniform]
    # Rewritten records are the model's own tokens under the rewrite prompt: weighted like guided ones.
    assert weight_rules("is", sources, "uniform").tolist() == [model, model, uniform, model]
    assert weight_rules("is", sources, "one").tolist() == [model, model, one, model]
    assert weight_rules("is", sources, "model").tolist() == [model, model, model, model]
    with pytest.raises(ValueError, match="loss="):
        weight_rules("ppo", sources)
    with pytest.raises(ValueError, match="expert_behavior="):
        weight_rules("is", sources, "zero")
    with pytest.raises(ValueError, match="unknown sources"):
        source_ids(["self", "teacher"])


def test_sft_rule_three_tokens() -> None:
    # w = 1: L = (1 + 2 + 3) ln 2 / 3 = 2 ln 2. No behaviour log-probs are needed.
    out = weighted_loss(_logp(), _mask(), _rules(WeightRule.ONE), num_step_tokens=3)
    _close(out.loss, 2 * LN2)
    _close(out.weights, [[1.0, 1.0, 1.0]])
    _close(out.log_ratio, [[0.0, 0.0, 0.0]])
    assert not out.clipped.any()


def test_dft_three_tokens() -> None:
    # logbeta = 0, so w = p = (1/2, 1/4, 1/8) and l = logp.
    # L = (1/2 * 1 + 1/4 * 2 + 1/8 * 3) ln 2 / 3 = (11/8) ln 2 / 3 = 11 ln 2 / 24.
    # Behaviour log-probs are ignored, even when given.
    rules = weight_rules("dft", source_ids(["self"]))
    out = weighted_loss(_logp(), _mask(), rules, _log_beta(), num_step_tokens=3)
    _close(out.loss, 11 * LN2 / 24)
    _close(out.weights, [P])
    _close(out.log_ratio, [[-LN2, -2 * LN2, -3 * LN2]])


def test_is_without_clipping() -> None:
    # w = (4, 1/2, 1): L = (4 * 1 + 1/2 * 2 + 1 * 3) ln 2 / 3 = 8 ln 2 / 3.
    out = weighted_loss(_logp(), _mask(), _rules(WeightRule.MODEL), _log_beta(), num_step_tokens=3)
    _close(out.loss, 8 * LN2 / 3)
    _close(out.weights, [[4.0, 0.5, 1.0]])
    _close(out.log_ratio, [[2 * LN2, -LN2, 0.0]])
    assert not out.clipped.any()


def test_is_truncate_clip_max() -> None:
    # c_max = 2: w = (min(4, 2), 1/2, 1) = (2, 1/2, 1); L = (2 * 1 + 1/2 * 2 + 1 * 3) ln 2 / 3 = 2 ln 2.
    # l is reported before clipping.
    out = weighted_loss(_logp(), _mask(), _rules(WeightRule.MODEL), _log_beta(), num_step_tokens=3, clip_max=2.0)
    _close(out.loss, 2 * LN2)
    _close(out.weights, [[2.0, 0.5, 1.0]])
    _close(out.log_ratio, [[2 * LN2, -LN2, 0.0]])
    assert out.clipped.tolist() == [[True, False, False]]
    # A weight exactly on the bound is not clipped: c_max = 4 leaves w = (4, 1/2, 1) as it is.
    on_bound = weighted_loss(_logp(), _mask(), _rules(WeightRule.MODEL), _log_beta(), num_step_tokens=3, clip_max=4.0)
    _close(on_bound.weights, [[4.0, 0.5, 1.0]])
    assert not on_bound.clipped.any()


def test_is_truncate_clip_min_and_max() -> None:
    # [c_min, c_max] = [3/4, 2]: w = (2, 3/4, 1); L = (2 * 1 + 3/4 * 2 + 1 * 3) ln 2 / 3 = 13 ln 2 / 6.
    out = weighted_loss(
        _logp(), _mask(), _rules(WeightRule.MODEL), _log_beta(), num_step_tokens=3, clip_max=2.0, clip_min=0.75
    )
    _close(out.loss, 13 * LN2 / 6)
    _close(out.weights, [[2.0, 0.75, 1.0]])
    assert out.clipped.tolist() == [[True, True, False]]


def test_is_mask_mode() -> None:
    # [c_min, c_max] = [3/4, 2], mask mode: tokens 1 and 2 fall outside, w = (0, 0, 1);
    # L = (1 * 3) ln 2 / 3 = ln 2.
    out = weighted_loss(
        _logp(),
        _mask(),
        _rules(WeightRule.MODEL),
        _log_beta(),
        num_step_tokens=3,
        clip_max=2.0,
        clip_min=0.75,
        clip_mode="mask",
    )
    _close(out.loss, LN2)
    _close(out.weights, [[0.0, 0.0, 1.0]])
    assert out.clipped.tolist() == [[True, True, False]]


def test_is_sequence_level() -> None:
    # mean l = (2 ln 2 - ln 2 + 0) / 3 = ln 2 / 3, so every token gets w = 2^(1/3);
    # L = 2^(1/3) * (1 + 2 + 3) ln 2 / 3 = 2^(4/3) ln 2.
    args = (_logp(), _mask(), _rules(WeightRule.MODEL), _log_beta())
    out = weighted_loss(*args, num_step_tokens=3, level="sequence")
    _close(out.loss, 2 ** (4 / 3) * LN2)
    _close(out.weights, [[2 ** (1 / 3)] * 3])
    _close(out.log_ratio, [[LN2 / 3] * 3])
    assert not out.clipped.any()
    # Clipped the same way: c_max = 1.25 < 2^(1/3) ~ 1.26 truncates every token to 1.25,
    # L = 1.25 * 6 ln 2 / 3 = 2.5 ln 2; in mask mode the whole row drops out, L = 0.
    truncated = weighted_loss(*args, num_step_tokens=3, level="sequence", clip_max=1.25)
    _close(truncated.loss, 2.5 * LN2)
    assert truncated.clipped.tolist() == [[True, True, True]]
    masked = weighted_loss(*args, num_step_tokens=3, level="sequence", clip_max=1.25, clip_mode="mask")
    _close(masked.loss, 0.0)
    _close(masked.weights, [[0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("expert_behavior", "expert_weights", "expert_row_sum"),
    [
        # uniform: logbeta = 0, w = p = (1/2, 1/4, 1/8); row sum of w * (-logp) = (11/8) ln 2.
        ("uniform", P, 11 / 8 * LN2),
        # one: w = 1; row sum = 6 ln 2.
        ("one", [1.0, 1.0, 1.0], 6 * LN2),
        # model: the given behaviour log-probs, w = (4, 1/2, 1); row sum = 8 ln 2.
        ("model", [4.0, 0.5, 1.0], 8 * LN2),
    ],
)
def test_is_expert_behavior_rules(expert_behavior: str, expert_weights: list, expert_row_sum: float) -> None:
    # Row 0 is `self` (always the model rule: row sum 8 ln 2), row 1 is `expert` with the same
    # log-probs. L = (8 ln 2 + expert row sum) / 6. Row 1's behaviour values are NaN unless the
    # rule reads them: rules that ignore them must not turn them into NaN losses.
    logp = _logp().repeat(2, 1)
    log_beta = _log_beta().repeat(2, 1)
    if expert_behavior != "model":
        log_beta[1] = float("nan")
    rules = weight_rules("is", source_ids(["self", "expert"]), expert_behavior)
    out = weighted_loss(logp, _mask(2), rules, log_beta, num_step_tokens=6)
    _close(out.loss, (8 * LN2 + expert_row_sum) / 6)
    _close(out.weights, [[4.0, 0.5, 1.0], expert_weights])


def test_weights_carry_no_gradient() -> None:
    # logp_t = z_{t,y} - logsumexp(z_t), so d logp_t / d z_t = onehot(y_t) - softmax(z_t). With w
    # detached, dL/dz_t = -m_t w_t (onehot(y_t) - softmax(z_t)) / N; the last position predicts
    # nothing and gets no gradient. N = 7 > the 5 loss tokens here (other micro-batches of the step).
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 0], [IGNORE_INDEX, 2, 0, IGNORE_INDEX]])
    logprobs, mask = token_logprobs(logits, labels)
    behavior = torch.log_softmax(torch.randn(2, 3, 3), -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    out = weighted_loss(
        logprobs, mask, _rules(WeightRule.MODEL, WeightRule.MODEL), behavior, num_step_tokens=7, clip_max=1.5
    )
    assert not out.weights.requires_grad and not out.log_ratio.requires_grad
    out.loss.backward()

    z = logits.detach()[:, :-1]
    onehot = torch.nn.functional.one_hot(labels[:, 1:].clamp(min=0), 3).float()
    expected = torch.zeros_like(logits)
    expected[:, :-1] = -(out.weights * mask)[..., None] * (onehot - z.softmax(-1)) / 7
    torch.testing.assert_close(logits.grad, expected)
    # And the weights really differ from 1, so the check is not the SFT gradient in disguise.
    assert not torch.allclose(out.weights[mask], torch.ones(5))


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_num_step_tokens_halves_sum_to_full_batch(level: str) -> None:
    # Full batch of 2 rows (3 + 2 loss tokens), N = 5. Each row on its own, still with N = 5
    # (the step's token count), gives one part of the sum: the halves add up to the full loss.
    logp = torch.tensor([P, [1 / 4, 1 / 2, 1.0]]).log()
    log_beta = torch.tensor([BETA, [1 / 2, 1 / 4, 1.0]]).log()
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rules = _rules(WeightRule.MODEL, WeightRule.UNIFORM)
    kwargs = {"num_step_tokens": 5, "clip_max": 3.0, "level": level}
    full = weighted_loss(logp, mask, rules, log_beta, **kwargs).loss
    halves = [
        weighted_loss(logp[i : i + 1], mask[i : i + 1], rules[i : i + 1], log_beta[i : i + 1], **kwargs).loss
        for i in (0, 1)
    ]
    torch.testing.assert_close(halves[0] + halves[1], full, rtol=0, atol=1e-6)
    # The token case by hand: row 0 clipped at 3, w = (3, 1/2, 1) with -logp = (1, 2, 3) ln 2 -> 7 ln 2;
    # row 1 uniform, w = p = (1/4, 1/2) with -logp = (2, 1) ln 2 -> ln 2. L = 8 ln 2 / 5.
    if level == "token":
        _close(full, 8 * LN2 / 5)
    # A tensor N works the same, and N = 0 (an empty step) gives 0, not NaN.
    torch.testing.assert_close(
        weighted_loss(logp, mask, rules, log_beta, num_step_tokens=torch.tensor(5), clip_max=3.0, level=level).loss,
        full,
    )
    empty = weighted_loss(logp, torch.zeros_like(mask), rules, log_beta, num_step_tokens=0, level=level)
    _close(empty.loss, 0.0)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("clip_mode", ["truncate", "mask"])
def test_padding_changes_nothing_and_never_nans(level: str, clip_mode: str) -> None:
    # The 3-token example padded with 2 positions of garbage (model log-probs -inf and NaN,
    # behaviour +inf and NaN), next to a fully padded row: the same numbers as the clean example,
    # finite gradients, zero gradient on the padding.
    inf, nan = float("inf"), float("nan")
    logp = torch.tensor([[*_logp()[0].tolist(), -inf, nan], [nan, -inf, 0.0, 1.0, nan]], requires_grad=True)
    log_beta = torch.tensor([[*_log_beta()[0].tolist(), inf, nan], [inf, nan, -inf, 5.0, nan]])
    mask = torch.tensor([[True, True, True, False, False], [False] * 5])
    rules = _rules(WeightRule.MODEL, WeightRule.MODEL)
    kwargs = {"clip_max": 2.0, "clip_min": 0.75, "clip_mode": clip_mode, "level": level}
    padded = weighted_loss(logp, mask, rules, log_beta, num_step_tokens=3, **kwargs)
    clean = weighted_loss(_logp(), _mask(), rules[:1], _log_beta(), num_step_tokens=3, **kwargs)
    torch.testing.assert_close(padded.loss, clean.loss)
    torch.testing.assert_close(padded.weights[:1, :3], clean.weights)
    for tensor in (padded.weights, padded.log_ratio):
        assert torch.isfinite(tensor).all()
        assert (tensor[~mask] == 0).all()
    assert not padded.clipped[~mask].any()
    padded.loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert (logp.grad[~mask] == 0).all()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="behavior_logprobs"):
        importance_weights(_logp(), _mask(), _rules(WeightRule.MODEL))
    with pytest.raises(ValueError, match="clip_min"):
        importance_weights(_logp(), _mask(), _rules(WeightRule.ONE), clip_min=2.0, clip_max=1.0)
    with pytest.raises(ValueError, match="clip_mode"):
        importance_weights(_logp(), _mask(), _rules(WeightRule.ONE), clip_mode="drop")
    with pytest.raises(ValueError, match="level"):
        importance_weights(_logp(), _mask(), _rules(WeightRule.ONE), level="batch")
