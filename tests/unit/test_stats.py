"""Importance-weight statistics against hand-computed values, and their reduction from sums."""

from __future__ import annotations

import math

import pytest
import torch

from mindgap.records import SOURCES
from mindgap.training.losses import WeightRule, source_ids, weight_rules, weighted_loss
from mindgap.training.stats import FIELDS, HISTOGRAM_EDGES, WeightSums, finish, weight_histogram, weight_sums

LN2 = math.log(2.0)
INF, NAN = float("inf"), float("nan")


def _hand_batch() -> tuple[torch.Tensor, ...]:
    # Row 0 (self): w = (2, 1/2, 1) after truncation at c_max = 2, l = (2 ln 2, -ln 2, 0), first token clipped.
    # Row 1 (expert): w = (1, 1), l = (0, 0), one padding position.
    # Row 2 (guided): padding only. Padding holds garbage that must be ignored.
    # Rows 0 and 2 are weighed against a behaviour policy (MODEL), row 1 has w = 1 (ONE).
    # float64 inputs so that the comparison can be exact to 1e-12.
    weights = torch.tensor([[2.0, 0.5, 1.0], [1.0, 1.0, INF], [NAN, 3.0, 4.0]], dtype=torch.float64)
    log_ratio = torch.tensor([[2 * LN2, -LN2, 0.0], [0.0, 0.0, NAN], [INF, 1.0, 1.0]], dtype=torch.float64)
    clipped = torch.tensor([[True, False, False], [False, False, True], [True, True, True]])
    mask = torch.tensor([[True, True, True], [True, True, False], [False, False, False]])
    rules = torch.tensor([WeightRule.MODEL, WeightRule.ONE, WeightRule.MODEL])
    return weights, log_ratio, clipped, mask, source_ids(["self", "expert", "guided"]), rules


def test_hand_computed_statistics() -> None:
    stats = finish(weight_sums(*_hand_batch()))
    expected = {
        # self: N = 3, sum w = 7/2, sum w^2 = 4 + 1/4 + 1 = 21/4.
        # mean = 7/6; var = (21/4)/3 - 49/36 = 63/36 - 49/36 = 7/18; max = 2;
        # ESS = (7/2)^2 / (3 * 21/4) = (49/4) / (63/4) = 7/9; clipped 1/3; mean l = (2 - 1 + 0) ln 2 / 3.
        "is/self/tokens": 3.0,
        "is/self/weight_mean": 7 / 6,
        "is/self/weight_var": 7 / 18,
        "is/self/weight_max": 2.0,
        "is/self/ess": 7 / 9,
        "is/self/clipped_frac": 1 / 3,
        "is/self/log_ratio_mean": LN2 / 3,
        # expert: N = 2, every w = 1: mean 1, var 0, max 1, ESS 1, nothing clipped; w = 1 by rule
        # (ONE), so it has no log-ratio to report.
        "is/expert/tokens": 2.0,
        "is/expert/weight_mean": 1.0,
        "is/expert/weight_var": 0.0,
        "is/expert/weight_max": 1.0,
        "is/expert/ess": 1.0,
        "is/expert/clipped_frac": 0.0,
        # all: N = 5, sum w = 11/2, sum w^2 = 29/4. mean = 11/10; var = 29/20 - 121/100 = 24/100;
        # ESS = (121/4) / (5 * 29/4) = 121/145; clipped 1/5; mean l over the 3 MODEL tokens = ln 2 / 3.
        "is/all/tokens": 5.0,
        "is/all/weight_mean": 1.1,
        "is/all/weight_var": 0.24,
        "is/all/weight_max": 2.0,
        "is/all/ess": 121 / 145,
        "is/all/clipped_frac": 0.2,
        "is/all/log_ratio_mean": LN2 / 3,
    }
    # guided has no loss token: its keys are omitted rather than NaN.
    assert stats.keys() == expected.keys()
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, abs=1e-12), key


def test_sums_layout_for_the_reduction() -> None:
    sums = weight_sums(*_hand_batch())
    assert sums.sums.shape == (len(SOURCES), len(FIELDS)) and sums.sums.dtype == torch.float64
    # Rows follow SOURCES; columns follow FIELDS. Sources without tokens hold zeros.
    expected = torch.zeros(len(SOURCES), len(FIELDS), dtype=torch.float64)
    expected[SOURCES.index("self")] = torch.tensor([3.0, 3.5, 5.25, 1.0, 3.0, LN2, 0.0, 0.0])
    expected[SOURCES.index("expert")] = torch.tensor([2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(sums.sums, expected)
    expected_maxima = torch.zeros(len(SOURCES), dtype=torch.float64)
    expected_maxima[SOURCES.index("self")], expected_maxima[SOURCES.index("expert")] = 2.0, 1.0
    torch.testing.assert_close(sums.maxima, expected_maxima)


def _random_batch(seed: int) -> tuple[torch.Tensor, ...]:
    # IS weights from the loss itself, with clipping, on 8 rows of ragged length.
    generator = torch.Generator().manual_seed(seed)
    logp = torch.rand(8, 6, generator=generator).log()
    log_beta = torch.rand(8, 6, generator=generator).log()
    lengths = torch.tensor([6, 1, 4, 0, 5, 3, 6, 2])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    sources = source_ids(["self", "guided", "expert", "self", "guided", "expert", "self", "guided"])
    rules = weight_rules("is", sources, "uniform")
    out = weighted_loss(logp, mask, rules, log_beta, num_step_tokens=mask.sum(), clip_max=3.0, clip_min=0.1)
    return out.weights, out.log_ratio, out.clipped, mask, sources, rules


def test_dft_style_rows_report_their_mean_logprob_not_a_log_ratio() -> None:
    # Under loss=is with expert_behavior=uniform, expert rows get w = sg(p): l = log p - 0.
    # Row 0 (expert, UNIFORM): p = (1/2, 1/4), so mean log p = (-ln 2 - 2 ln 2) / 2 = -3/2 ln 2.
    # Row 1 (self, MODEL): l = (ln 2, 0), mean l = ln 2 / 2.
    logp = torch.tensor([[-LN2, -2 * LN2], [-LN2, -LN2]], dtype=torch.float64)
    log_beta = torch.tensor([[0.0, 0.0], [-2 * LN2, -LN2]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    sources = source_ids(["expert", "self"])
    rules = weight_rules("is", sources, "uniform")
    out = weighted_loss(logp, mask, rules, log_beta, num_step_tokens=4)
    stats = finish(weight_sums(out.weights, out.log_ratio, out.clipped, mask, sources, rules))
    # The loss computes l in fp32.
    assert stats["is/expert/logprob_mean"] == pytest.approx(-1.5 * LN2, abs=1e-6)
    assert "is/expert/log_ratio_mean" not in stats
    assert stats["is/self/log_ratio_mean"] == pytest.approx(LN2 / 2, abs=1e-6)
    assert "is/self/logprob_mean" not in stats
    assert stats["is/all/logprob_mean"] == pytest.approx(-1.5 * LN2, abs=1e-6)
    assert stats["is/all/log_ratio_mean"] == pytest.approx(LN2 / 2, abs=1e-6)


@pytest.mark.parametrize("split", [1, 3, 5, 7])
def test_merged_sums_equal_the_whole(split: int) -> None:
    # Two micro-batches (or two ranks) each send their sums; SUM-reducing `sums` and MAX-reducing
    # `maxima` (what `merge` does) gives exactly the statistics of the whole batch.
    batch = _random_batch(seed=split)
    whole = weight_sums(*batch)
    parts = [weight_sums(*(t[:split] for t in batch)), weight_sums(*(t[split:] for t in batch))]
    merged = WeightSums.zeros().merge(parts[0]).merge(parts[1])
    torch.testing.assert_close(merged.sums, whole.sums)
    torch.testing.assert_close(merged.maxima, whole.maxima)
    stats, expected = finish(merged), finish(whole)
    assert stats.keys() == expected.keys()
    assert stats == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert {"is/self/ess", "is/guided/ess", "is/expert/ess", "is/all/ess"} <= stats.keys()
    # The all-reduce equivalent: stack the ranks' tensors, sum and max.
    torch.testing.assert_close(torch.stack([p.sums for p in parts]).sum(0), whole.sums)
    torch.testing.assert_close(torch.stack([p.maxima for p in parts]).amax(0), whole.maxima)


def test_empty_groups_and_zero_weights_never_nan() -> None:
    # No loss token at all: nothing to report.
    ones, nowhere = torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool)
    model = torch.tensor([WeightRule.MODEL, WeightRule.MODEL])
    assert finish(weight_sums(ones, ones, nowhere, nowhere, source_ids(["self", "expert"]), model)) == {}
    assert finish(WeightSums.zeros()) == {}
    empty, no_mask = torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.bool)
    assert finish(weight_sums(empty, empty, no_mask, no_mask, source_ids([]), model[:0])) == {}
    # Every weight masked out by clipping (mask mode): mean 0, var 0, ESS reported as 0, all clipped.
    everywhere = torch.ones(1, 2, dtype=torch.bool)
    zero_weights = weight_sums(
        torch.zeros(1, 2), torch.full((1, 2), 3.0), everywhere, everywhere, source_ids(["guided"]), model[:1]
    )
    stats = finish(zero_weights)
    assert stats["is/guided/weight_mean"] == 0.0
    assert stats["is/guided/ess"] == 0.0
    assert stats["is/guided/clipped_frac"] == 1.0
    assert stats["is/guided/log_ratio_mean"] == 3.0
    assert all(math.isfinite(value) for value in stats.values())


def test_weight_histogram_counts_loss_tokens_per_source_and_bin() -> None:
    # Bins are 0.2 wide in log10 w from -6: w=1 -> bin 30, w=0.5 (log10 -0.301) -> bin 28,
    # w=0 and w=1e-9 -> first bin 0, w=1e3 (beyond 1e2) -> last bin 39.
    weights = torch.tensor([[1.0, 0.5, 0.0, 7.0], [1e3, 1e-9, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    expert, self_ = SOURCES.index("expert"), SOURCES.index("self")
    counts = weight_histogram(weights, mask, torch.tensor([expert, self_]))
    assert counts.shape == (len(SOURCES), len(HISTOGRAM_EDGES) - 1)
    expected = torch.zeros_like(counts)
    expected[expert, 30] = expected[expert, 28] = expected[expert, 0] = 1
    expected[self_, 39] = expected[self_, 0] = expected[self_, 30] = 1
    assert torch.equal(counts, expected)
