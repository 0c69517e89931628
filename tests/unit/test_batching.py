"""Epoch plans: every example once, steps sampled like the data, balanced ranks, step token counts, little padding."""

from __future__ import annotations

import random
import statistics

import pytest

from mindgap.data.batching import StepBatchSampler, ValidationBatchSampler, plan_epoch, step_sizes
from mindgap.data.sources import data_config, load_problems
from mindgap.errors import ConfigError
from mindgap.prompts import standard_prompt
from mindgap.rewriting.expert import normalize_expert_solution


def _padding_efficiency(lengths: list[int], batches: list[list[int]]) -> float:
    real = sum(lengths[i] for batch in batches for i in batch)
    processed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return real / processed


@pytest.mark.parametrize(
    ("examples", "micro", "accumulate", "world"),
    [
        (37, 2, 3, 2),  # 3 full steps of 12, then 1 left for 2 ranks: the last step borrows one
        (48, 4, 1, 2),  # 6 full steps
        (10, 3, 2, 1),  # 1 full step of 6, then a step of 4 in 2 micro-batches
        (9, 4, 2, 8),  # fewer records than one step: a single step, one micro-batch per rank
        (7473, 4, 8, 8),  # the paper recipe on GSM8K: 29 steps of 256, then 49
    ],
)
def test_every_example_once_per_epoch_and_ranks_in_step(examples: int, micro: int, accumulate: int, world: int):
    rng = random.Random(0)
    lengths = [rng.randint(5, 50) for _ in range(examples)]
    loss_tokens = [length - 3 for length in lengths]
    plan = plan_epoch(lengths, loss_tokens, micro, accumulate, world, seed=1, group_by_length=True)
    seen = [i for step in plan.steps for rank in step for batch in rank for i in batch.indices]
    assert sorted(seen) == list(range(examples))
    for position, step in enumerate(plan.steps):
        per_rank = {len(rank) for rank in step}
        assert len(per_rank) == 1, "every rank runs the same number of micro-batches"
        if position < len(plan.steps) - 1:
            assert per_rank == {accumulate}
        assert all(1 <= len(batch.indices) <= micro for rank in step for batch in rank)
        total = sum(loss_tokens[i] for rank in step for batch in rank for i in batch.indices)
        assert {batch.step_loss_tokens for rank in step for batch in rank} == {total}
    for rank in range(world):
        sampler = StepBatchSampler(lengths, loss_tokens, micro, accumulate, world, rank, seed=1, group_by_length=True)
        assert len(list(sampler)) == len(sampler) == len(plan.micro_batches(rank))
        assert sampler.steps_per_epoch() == len(plan.steps)


def test_the_paper_recipe_on_gsm8k_ends_with_a_step_of_49() -> None:
    assert step_sizes(7473, 4, 8, 8) == [256] * 29 + [49]
    # 12 full steps of 12 examples would leave 1 for 2 ranks: the step before lends one.
    assert step_sizes(37, 2, 3, 2) == [12, 12, 11, 2]


@pytest.mark.parametrize(("examples", "micro", "accumulate", "world"), [(7, 1, 1, 8), (17, 1, 2, 4), (3, 4, 4, 4)])
def test_a_plan_that_leaves_a_rank_without_a_micro_batch_stops_with_the_counts(
    examples: int, micro: int, accumulate: int, world: int
) -> None:
    with pytest.raises(ConfigError, match=rf"{examples} records cannot give each of {world} ranks a micro-batch"):
        step_sizes(examples, micro, accumulate, world)


def test_same_seed_same_plan_and_each_epoch_reshuffles() -> None:
    lengths = list(range(10, 50))
    sampler = StepBatchSampler(lengths, lengths, 4, 1, 1, 0, seed=3, group_by_length=False)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_each_step_is_a_sample_of_the_data_not_a_length_band() -> None:
    # 512 records: 256 short expert solutions and 256 long own responses. A step of 16 drawn at
    # random holds a hypergeometric share of experts, variance p(1-p)/n (N-n)/(N-1) =
    # 0.25/16 * 496/511 = 0.01517. Length grouping must order records inside a step only; grouping
    # before cutting steps (one length band per step) would give a variance near 0.25.
    rng = random.Random(0)
    sources = ["expert"] * 256 + ["self"] * 256
    lengths = [rng.randint(20, 40) if source == "expert" else rng.randint(80, 160) for source in sources]
    variances = []
    for seed in range(20):
        plan = plan_epoch(lengths, lengths, 4, 4, 1, seed=seed, group_by_length=True)
        shares = [
            sum(sources[i] == "expert" for rank in step for batch in rank for i in batch.indices) / 16
            for step in plan.steps
        ]
        variances.append(statistics.pvariance(shares))
    expected = 0.25 / 16 * 496 / 511
    # Mean of 20 epochs of 32 steps: within 25% of the random shuffle's variance.
    assert statistics.mean(variances) == pytest.approx(expected, rel=0.25)


def test_length_grouping_within_steps_reaches_90_percent_padding_efficiency_at_the_paper_recipe(
    data_root: str, tiny_tokenizer
) -> None:
    # GSM8K's expert records at micro-batch 4 x accumulation 8 x 8 ranks (256 records a step).
    problems = load_problems(data_config("gsm8k_train"), data_root, strict=True).problems
    lengths = [
        len(tiny_tokenizer(standard_prompt(p.problem, "qwen-boxed"))["input_ids"])
        + len(tiny_tokenizer(normalize_expert_solution(p.expert_solution, p.answer))["input_ids"])
        + 1
        for p in problems
    ]
    efficiency = {}
    for grouped in (False, True):
        plan = plan_epoch(lengths, lengths, 4, 8, 8, seed=0, group_by_length=grouped)
        batches = [batch.indices for step in plan.steps for rank in step for batch in rank]
        efficiency[grouped] = _padding_efficiency(lengths, batches)
    assert efficiency[True] >= 0.9 > efficiency[False]


def test_validation_batches_keep_ranks_in_step() -> None:
    # 5 examples in batches of 2 (sorted by length): [1, 3], [0, 4], [2]; 2 ranks get 2 batches each,
    # rank 1's second is a repeat that is not counted.
    lengths = [5, 1, 9, 2, 7]
    rank0 = list(ValidationBatchSampler(lengths, 2, world_size=2, rank=0))
    rank1 = list(ValidationBatchSampler(lengths, 2, world_size=2, rank=1))
    assert rank0 == [[(1, True), (3, True)], [(2, True)]]
    assert rank1 == [[(0, True), (4, True)], [(1, False), (3, False)]]
    counted = sorted(index for batch in rank0 + rank1 for index, is_counted in batch if is_counted)
    assert counted == list(range(5))
