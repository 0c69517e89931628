"""The training sets' diversity measures: the closed-form pairwise distance and distinct-2, against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from mindgap.pipeline.rewrite_quality import distinct_ngrams, mean_pairwise_cosine_distance, source_measures
from mindgap.rewriting.rewards import mean_pairwise_cosine_distance as pairwise_by_pairs


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # Identical directions (any lengths): cos 1, distance 0.
        ([[1.0, 0.0], [3.0, 0.0]], 0.0),
        # Opposite: cos -1, distance 1.
        ([[1.0, 0.0], [-2.0, 0.0]], 1.0),
        # Orthogonal: cos 0, distance 1/2.
        ([[1.0, 0.0], [0.0, 5.0]], 0.5),
        # Three at 0, 90 and 180 degrees: pairs (0, 90) 1/2, (0, 180) 1, (90, 180) 1/2; mean 2/3.
        ([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], 2 / 3),
        # Fewer than two rows: no pair.
        ([[1.0, 2.0]], 0.0),
    ],
)
def test_pairwise_distance_table(rows: list[list[float]], expected: float) -> None:
    assert mean_pairwise_cosine_distance(torch.tensor(rows)) == pytest.approx(expected, abs=1e-12)


def test_closed_form_equals_the_rewards_pair_by_pair_mean() -> None:
    embeddings = torch.randn(37, 16, generator=torch.Generator().manual_seed(0))
    assert mean_pairwise_cosine_distance(embeddings) == pytest.approx(float(pairwise_by_pairs(embeddings)), abs=1e-6)


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        # Bigrams (a b) (b c) | (a b) (b d): 3 distinct of 4.
        (["a b c", "a b d"], 3 / 4),
        # One template filled twice: (x =) (= 1), twice: 2 distinct of 4.
        (["x = 1", "x = 1"], 2 / 4),
        (["single"], 0.0),
        ([], 0.0),
    ],
)
def test_distinct_bigrams_table(texts: list[str], expected: float) -> None:
    assert distinct_ngrams(texts) == pytest.approx(expected)


def test_source_measures() -> None:
    measures = source_measures(torch.tensor([0.5, 1.5]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ["a b c", "a b d"])
    assert measures == {"records": 2, "alignment_nll": 1.0, "diversity": 0.5, "distinct_2": 0.75}
    assert math.isnan(source_measures(torch.zeros(0), torch.zeros(0, 2), [])["alignment_nll"])
