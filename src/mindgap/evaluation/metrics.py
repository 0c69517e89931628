"""Metrics over sampled answers (avg@n, unbiased pass@k, maj@n) and bootstrap intervals over problems.

Every metric is the mean over problems of a per-problem score, so one bootstrap (resampling a
benchmark's problems with replacement) gives intervals for all of them, and the same resamples
applied to two models evaluated on the same problems give a paired interval for their difference.

Metric names carry their parameter: ``avg@16``, ``pass@4``, ``maj@16``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mindgap.verification.answers import as_number, normalize_answer

_METRIC = re.compile(r"(avg|pass|maj)@(\d+)")


@dataclass(frozen=True)
class ProblemOutcome:
    """What the samples of one problem add up to; the input of every metric."""

    id: str
    # Samples drawn for the problem (n).
    samples: int
    # Samples the verifier judged correct (c).
    correct: int
    # The majority answer (None when no sample has an extractable answer) and whether it is correct.
    majority_answer: str | None
    majority_correct: bool


@dataclass(frozen=True)
class MajorityVote:
    answer: str | None
    votes: int
    correct: bool


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct of n samples (Chen et al., 2021).

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i): the same ratio without
    the binomials, which overflow for large n.
    """
    if not 0 <= c <= n:
        raise ValueError(f"c={c} correct samples must be in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def answer_class(answer: str) -> tuple[str, str]:
    """The key under which equivalent answers vote together.

    Plain numbers vote by exact value (``0.5``, ``\\frac{1}{2}`` and ``1/2`` agree), anything else by
    the verifier's normalised text (no ``$``, spacing, ``\\text{}`` wrappers or thousands commas).
    math-verify is not used for grouping: it would cost a symbolic check per pair of distinct answers.
    """
    number = as_number(answer)
    return ("number", str(number)) if number is not None else ("text", normalize_answer(answer))


def majority_vote(answers: Sequence[str | None], verdicts: Sequence[bool]) -> MajorityVote:
    """maj@n of one problem: the most frequent answer class among the samples that have an answer.

    Samples without an extractable answer do not vote. A tie goes to the class whose first vote came
    earliest (lowest sample index), so the outcome depends only on the samples and their order. The
    class is correct when its earliest sample was judged correct.
    """
    if len(answers) != len(verdicts):
        raise ValueError(f"{len(answers)} answers but {len(verdicts)} verdicts")
    # key -> [votes, index of the first vote]
    classes: dict[tuple[str, str], list[int]] = {}
    for index, answer in enumerate(answers):
        if answer is None or not answer.strip():
            continue
        entry = classes.setdefault(answer_class(answer), [0, index])
        entry[0] += 1
    if not classes:
        return MajorityVote(None, 0, False)
    votes, first = max(classes.values(), key=lambda entry: (entry[0], -entry[1]))
    return MajorityVote(answers[first], votes, bool(verdicts[first]))


def metric_names(n: int, pass_k: Sequence[int] | None) -> list[str]:
    """The metrics of a run with n samples per problem: avg@n, pass@k for each k (default n), maj@n."""
    ks = sorted(set(pass_k)) if pass_k else [n]
    return [f"avg@{n}", *(f"pass@{k}" for k in ks), f"maj@{n}"]


def problem_scores(outcomes: Sequence[ProblemOutcome], metric: str) -> np.ndarray:
    """The per-problem scores whose mean is ``metric`` (fractions in [0, 1], one per problem)."""
    match = _METRIC.fullmatch(metric)
    if match is None:
        raise ValueError(f"unknown metric {metric!r} (expected avg@n, pass@k or maj@n)")
    kind, parameter = match.group(1), int(match.group(2))
    if kind != "pass":
        mismatched = [outcome.id for outcome in outcomes if outcome.samples != parameter]
        if mismatched:
            raise ValueError(f"{metric} needs {parameter} samples per problem; {mismatched[0]} has another count")
    if kind == "avg":
        return np.array([outcome.correct / outcome.samples for outcome in outcomes], dtype=np.float64)
    if kind == "maj":
        return np.array([float(outcome.majority_correct) for outcome in outcomes], dtype=np.float64)
    return np.array([pass_at_k(outcome.samples, outcome.correct, parameter) for outcome in outcomes], dtype=np.float64)


def mean_score(scores: np.ndarray) -> float:
    return float(scores.mean()) if scores.size else 0.0


# --------------------------------------------------------------------------- bootstrap


def _stream(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def bootstrap_indices(num_problems: int, replicates: int, seed: int, benchmark: str) -> np.ndarray:
    """[replicates, num_problems] problem indices drawn with replacement.

    A function of (seed, benchmark, sizes) only: every model evaluated on the benchmark gets the same
    resamples, which makes differences paired and a model's interval the same in every table.
    """
    if num_problems == 0:
        return np.zeros((replicates, 0), dtype=np.int64)
    rng = np.random.default_rng([seed, _stream(benchmark)])
    return rng.integers(0, num_problems, size=(replicates, num_problems))


def replicate_means(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The mean score of each resample: shape [replicates]."""
    if scores.size == 0:
        return np.zeros(indices.shape[0])
    return scores[indices].mean(axis=1)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of the bootstrap distribution (percentile method)."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


def estimate(
    scores_by_benchmark: Mapping[str, np.ndarray], replicates: int, confidence: float, seed: int
) -> dict[str, Estimate]:
    """Mean and interval of each benchmark, and of their unweighted mean (key ``mean``).

    The mean's interval resamples every benchmark's problems independently (a stratified bootstrap),
    with the same resamples as the per-benchmark intervals.
    """
    results: dict[str, Estimate] = {}
    per_benchmark = []
    for benchmark, scores in scores_by_benchmark.items():
        means = replicate_means(scores, bootstrap_indices(len(scores), replicates, seed, benchmark))
        per_benchmark.append(means)
        results[benchmark] = Estimate(mean_score(scores), *percentile_interval(means, confidence))
    if per_benchmark:
        overall = np.mean(per_benchmark, axis=0)
        value = float(np.mean([mean_score(scores) for scores in scores_by_benchmark.values()]))
        results["mean"] = Estimate(value, *percentile_interval(overall, confidence))
    return results


def paired_difference(
    variant: Mapping[str, np.ndarray],
    baseline: Mapping[str, np.ndarray],
    replicates: int,
    confidence: float,
    seed: int,
) -> dict[str, Estimate]:
    """variant - baseline per benchmark and for the mean, with paired bootstrap intervals.

    Scores of one benchmark must be aligned problem by problem; each resample takes the same problems
    for both models, so what they share (problem difficulty) cancels out of the interval.
    """
    if variant.keys() != baseline.keys():
        raise ValueError(f"benchmarks differ: {sorted(variant)} vs {sorted(baseline)}")
    differences = {}
    for benchmark, scores in variant.items():
        if scores.shape != baseline[benchmark].shape:
            raise ValueError(f"{benchmark}: {scores.shape[0]} problems vs {baseline[benchmark].shape[0]}")
        differences[benchmark] = scores - baseline[benchmark]
    return estimate(differences, replicates, confidence, seed)
