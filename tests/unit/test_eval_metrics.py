"""avg@n, unbiased pass@k, maj@n and the bootstrap against hand-computed values."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from mindgap.evaluation.metrics import (
    ProblemOutcome,
    bootstrap_indices,
    estimate,
    majority_vote,
    metric_names,
    paired_difference,
    pass_at_k,
    percentile_interval,
    problem_scores,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        # Nothing correct: no k-subset passes.
        (5, 0, 3, 0.0),
        # k=1 is the fraction correct: 1 - C(n-c,1)/C(n,1) = c/n.
        (4, 1, 1, 0.25),
        (16, 5, 1, 5 / 16),
        (1, 1, 1, 1.0),
        # 1 - C(3,2)/C(4,2) = 1 - 3/6.
        (4, 1, 2, 0.5),
        # 1 - C(2,2)/C(4,2) = 1 - 1/6.
        (4, 2, 2, 5 / 6),
        # n - c = 1 < k = 2: every pair holds a correct sample.
        (4, 3, 2, 1.0),
        # 1 - C(15,4)/C(16,4) = 1 - 1365/1820 = 1/4 (with one correct sample, pass@k = k/n).
        (16, 1, 4, 0.25),
        # 1 - C(14,4)/C(16,4) = 1 - 1001/1820 = 819/1820.
        (16, 2, 4, 819 / 1820),
        # pass@n is 1 as soon as one sample is correct.
        (16, 1, 16, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats() -> None:
    # C(1000, 100) ~ 6e139 fits a float, C(2000, 1000) ~ 2e600 does not; the product form needs neither.
    exact = 1 - Fraction(comb(990, 100), comb(1000, 100))
    assert pass_at_k(1000, 10, 100) == pytest.approx(float(exact), rel=1e-12)
    exact_large = 1 - Fraction(comb(1990, 1000), comb(2000, 1000))
    assert pass_at_k(2000, 10, 1000) == pytest.approx(float(exact_large), rel=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def _outcome(problem_id: str, samples: int, correct: int, majority_correct: bool = False) -> ProblemOutcome:
    return ProblemOutcome(problem_id, samples, correct, None, majority_correct)


def test_avg_at_one_is_plain_accuracy() -> None:
    outcomes = [_outcome(str(i), 1, correct) for i, correct in enumerate([1, 0, 0, 1, 1])]
    assert problem_scores(outcomes, "avg@1").mean() == 3 / 5
    # With one sample, pass@1 and maj@1 (the only answer wins) are accuracy too.
    assert problem_scores(outcomes, "pass@1").mean() == 3 / 5


def test_avg_at_n_is_the_mean_over_all_samples() -> None:
    # 3/4 and 1/4 correct: 4 of 8 samples, avg@4 = 0.5.
    outcomes = [_outcome("a", 4, 3), _outcome("b", 4, 1)]
    assert problem_scores(outcomes, "avg@4").tolist() == [0.75, 0.25]
    # pass@2: 1 - C(1,2)/C(4,2) = 1 (n-c < k) and 1 - C(3,2)/C(4,2) = 0.5.
    assert problem_scores(outcomes, "pass@2").tolist() == [1.0, 0.5]


def test_metrics_need_the_sample_count_they_name() -> None:
    with pytest.raises(ValueError, match="avg@4 needs 4 samples"):
        problem_scores([_outcome("a", 2, 1)], "avg@4")
    with pytest.raises(ValueError, match="unknown metric"):
        problem_scores([_outcome("a", 2, 1)], "best@2")


def test_metric_names() -> None:
    assert metric_names(16, None) == ["avg@16", "pass@16", "maj@16"]
    assert metric_names(16, [16, 1, 4, 4]) == ["avg@16", "pass@1", "pass@4", "pass@16", "maj@16"]


@pytest.mark.parametrize(
    ("answers", "verdicts", "expected"),
    [
        # Plain majority: "2" has two votes.
        (["2", "3", "2"], [True, False, True], ("2", 2, True)),
        # The majority can be wrong while a minority is right.
        (["7", "7", "2"], [False, False, True], ("7", 2, False)),
        # Tie 2-2: the class voted first (sample 0, "3") wins, and its verdict counts.
        (["3", "2", "2", "3"], [False, True, True, False], ("3", 2, False)),
        # Samples without an answer do not vote; one answer is a majority.
        ([None, None, "5"], [False, False, True], ("5", 1, True)),
        (["", "  ", None], [False, False, False], (None, 0, False)),
        # Equal numbers vote together: 0.5 = \frac{1}{2}, and the earliest spelling represents them.
        (["1/3", "0.5", "\\frac{1}{2}"], [False, True, True], ("0.5", 2, True)),
        # 1,000 = 1000 = $1000$.
        (["1,000", "999", "$1000$", "999"], [True, False, True, False], ("1,000", 2, True)),
        # Text answers vote by normalised text: spacing, $ and \text{} do not matter.
        (["$x + 1$", "x+1", "\\text{y}"], [True, True, False], ("$x + 1$", 2, True)),
    ],
)
def test_majority_vote(answers, verdicts, expected) -> None:
    vote = majority_vote(answers, verdicts)
    assert (vote.answer, vote.votes, vote.correct) == expected


def test_maj_scores_come_from_the_outcomes() -> None:
    outcomes = [_outcome("a", 4, 1, majority_correct=True), _outcome("b", 4, 3, majority_correct=False)]
    assert problem_scores(outcomes, "maj@4").tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_indices_depend_only_on_seed_benchmark_and_sizes() -> None:
    first = bootstrap_indices(50, 200, seed=3, benchmark="math500")
    assert first.shape == (200, 50) and first.min() >= 0 and first.max() < 50
    assert np.array_equal(first, bootstrap_indices(50, 200, seed=3, benchmark="math500"))
    assert not np.array_equal(first, bootstrap_indices(50, 200, seed=4, benchmark="math500"))
    assert not np.array_equal(first, bootstrap_indices(50, 200, seed=3, benchmark="aime24"))


def test_constant_scores_have_a_point_interval() -> None:
    estimates = estimate({"a": np.full(7, 0.25)}, replicates=500, confidence=0.95, seed=0)
    assert (estimates["a"].value, estimates["a"].low, estimates["a"].high) == (0.25, 0.25, 0.25)


def test_two_problems_zero_and_one() -> None:
    # Resampled means of [0, 1] are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: both 2.5% tails lie
    # inside the point masses at 0 and 1, so the 95% interval is exactly [0, 1].
    result = estimate({"a": np.array([0.0, 1.0])}, replicates=1000, confidence=0.95, seed=0)["a"]
    assert (result.value, result.low, result.high) == (0.5, 0.0, 1.0)


def test_interval_of_a_proportion_matches_the_normal_approximation() -> None:
    # 400 problems, half solved: standard error sqrt(0.5 * 0.5 / 400) = 0.025, so the 95% interval
    # is about 0.5 +- 1.96 * 0.025 = [0.451, 0.549].
    scores = np.array([0.0, 1.0] * 200)
    result = estimate({"a": scores}, replicates=4000, confidence=0.95, seed=1)["a"]
    assert result.low == pytest.approx(0.451, abs=0.006)
    assert result.high == pytest.approx(0.549, abs=0.006)


def test_percentile_interval_quantiles() -> None:
    # Replicates 0..100: the 2.5% and 97.5% quantiles (linear interpolation) are 2.5 and 97.5.
    assert percentile_interval(np.arange(101, dtype=float), 0.95) == pytest.approx((2.5, 97.5), abs=1e-9)


def test_mean_over_benchmarks_is_unweighted_and_stratified() -> None:
    # Benchmark a: [0, 1] (mean 1/2), benchmark b: 4 solved problems (mean 1). The mean is (1/2 + 1) / 2 = 3/4
    # (not 5/6, the mean over the 6 problems). Its replicates are (r_a + 1) / 2 with r_a in {0, 1/2, 1}:
    # the interval is [1/2, 1].
    result = estimate({"a": np.array([0.0, 1.0]), "b": np.ones(4)}, replicates=1000, confidence=0.95, seed=0)
    assert (result["mean"].value, result["mean"].low, result["mean"].high) == (0.75, 0.5, 1.0)


def test_paired_difference_cancels_what_the_models_share() -> None:
    rng = np.random.default_rng(0)
    baseline = {"a": rng.integers(0, 2, 300).astype(float)}
    # The same problems solved: the difference is exactly 0 in every resample, although each model's
    # own interval is about +-0.057 wide.
    same = paired_difference(baseline, baseline, replicates=500, confidence=0.95, seed=0)["a"]
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    alone = estimate(baseline, replicates=500, confidence=0.95, seed=0)["a"]
    assert alone.high - alone.low > 0.08
    # One more problem solved than the baseline in every resampled problem: +1 exactly.
    better = paired_difference({"a": np.ones(5)}, {"a": np.zeros(5)}, replicates=500, confidence=0.95, seed=0)
    assert (better["a"].value, better["a"].low, better["a"].high) == (1.0, 1.0, 1.0)
    assert (better["mean"].value, better["mean"].low, better["mean"].high) == (1.0, 1.0, 1.0)


def test_paired_difference_equals_the_difference_of_the_resampled_means() -> None:
    rng = np.random.default_rng(1)
    variant, baseline = rng.random(40), rng.random(40)
    replicates = 300
    indices = bootstrap_indices(40, replicates, seed=5, benchmark="x")
    expected = percentile_interval(variant[indices].mean(1) - baseline[indices].mean(1), 0.9)
    result = paired_difference({"x": variant}, {"x": baseline}, replicates, confidence=0.9, seed=5)["x"]
    assert (result.low, result.high) == pytest.approx(expected, abs=1e-12)
    assert result.value == pytest.approx(variant.mean() - baseline.mean(), abs=1e-12)


def test_paired_difference_needs_the_same_problems() -> None:
    with pytest.raises(ValueError, match="3 problems vs 4"):
        paired_difference({"a": np.zeros(3)}, {"a": np.zeros(4)}, replicates=10, confidence=0.95, seed=0)
