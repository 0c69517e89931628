"""Epoch plans: every example once, full steps on every rank, step token counts, little padding."""

from __future__ import annotations

import random

import pytest

from mindgap.data.batching import StepBatchSampler, plan_epoch
from mindgap.data.sources import data_config, load_problems
from mindgap.prompts import standard_prompt
from mindgap.rewriting.expert import normalize_expert_solution


def _padding_efficiency(lengths: list[int], batches: list[list[int]]) -> float:
    real = sum(lengths[i] for batch in batches for i in batch)
    processed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return real / processed


@pytest.mark.parametrize(("examples", "micro", "accumulate", "world"), [(37, 2, 3, 2), (48, 4, 1, 2), (10, 3, 2, 1)])
def test_every_example_once_and_full_steps_on_every_rank(examples: int, micro: int, accumulate: int, world: int):
    rng = random.Random(0)
    lengths = [rng.randint(5, 50) for _ in range(examples)]
    loss_tokens = [length - 3 for length in lengths]
    plan = plan_epoch(lengths, loss_tokens, micro, accumulate, world, seed=1, group_by_length=True)
    seen = [i for step in plan.steps for rank in step for batch in rank for i in batch.indices]
    assert sorted(seen + plan.left_out) == list(range(examples))
    assert len(plan.left_out) < accumulate * world
    for step in plan.steps:
        assert [len(rank) for rank in step] == [accumulate] * world
        assert all(batch.indices for rank in step for batch in rank)
        total = sum(loss_tokens[i] for rank in step for batch in rank for i in batch.indices)
        assert {batch.step_loss_tokens for rank in step for batch in rank} == {total}
    for rank in range(world):
        sampler = StepBatchSampler(lengths, loss_tokens, micro, accumulate, world, rank, seed=1, group_by_length=True)
        assert len(list(sampler)) == len(sampler) == len(plan.steps) * accumulate


def test_same_seed_same_plan_and_each_epoch_reshuffles() -> None:
    lengths = list(range(10, 50))
    sampler = StepBatchSampler(lengths, lengths, 4, 1, 1, 0, seed=3, group_by_length=False)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_length_grouping_reaches_90_percent_padding_efficiency_on_gsm8k(data_root: str, tiny_tokenizer) -> None:
    problems = load_problems(data_config("gsm8k_train"), data_root, strict=True).problems[:2048]
    lengths = [
        len(tiny_tokenizer(standard_prompt(p.problem, "qwen-boxed"))["input_ids"])
        + len(tiny_tokenizer(normalize_expert_solution(p.expert_solution, p.answer))["input_ids"])
        + 1
        for p in problems
    ]
    efficiency = {}
    for grouped in (False, True):
        plan = plan_epoch(lengths, lengths, 8, 2, 2, seed=0, group_by_length=grouped)
        batches = [batch.indices for step in plan.steps for rank in step for batch in rank]
        efficiency[grouped] = _padding_efficiency(lengths, batches)
    assert efficiency[True] >= 0.9 > efficiency[False]
