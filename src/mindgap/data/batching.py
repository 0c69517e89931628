"""Optimiser-step plans: which examples each rank trains on in each micro-batch of each step.

The loss is a per-token mean over the whole optimiser step (DESIGN.md §1), so every
micro-batch must know how many loss tokens its step holds on all ranks together. Planning
the epoch up front gives every rank that number without communication, and lets batches be
grouped by length (little padding) while the order of steps stays random.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

# Examples sorted together by length: this many micro-batches' worth.
LENGTH_WINDOW_BATCHES = 64


@dataclass(frozen=True)
class MicroBatch:
    indices: list[int]
    # Loss tokens of the micro-batch's optimiser step, summed over its micro-batches on every rank.
    step_loss_tokens: int


@dataclass(frozen=True)
class EpochPlan:
    # steps[s][r] is rank r's list of micro-batches in optimiser step s.
    steps: list[list[list[MicroBatch]]]
    # Examples left out of this epoch because too few remained for a full step.
    left_out: list[int]


def plan_epoch(
    lengths: list[int],
    loss_tokens: list[int],
    micro_batch_size: int,
    accumulate: int,
    world_size: int,
    seed: int,
    group_by_length: bool,
) -> EpochPlan:
    """Cut a shuffled epoch into steps of ``world_size × accumulate`` micro-batches.

    With ``group_by_length``, examples are sorted by length inside windows of
    ``LENGTH_WINDOW_BATCHES`` micro-batches before being cut, and the resulting steps are
    shuffled. Every rank gets exactly ``accumulate`` non-empty micro-batches per step; the last
    step may hold smaller micro-batches, and examples too few to give every micro-batch one
    are left out (reported in ``left_out``).
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    per_step = micro_batch_size * accumulate * world_size
    full_steps, remainder = divmod(len(order), per_step)
    slots = accumulate * world_size
    tail = order[full_steps * per_step :] if remainder >= slots else []
    left_out = sorted(order[full_steps * per_step :]) if remainder < slots else []
    body = order[: full_steps * per_step]

    batches: list[list[int]] = []
    window = micro_batch_size * LENGTH_WINDOW_BATCHES
    for start in range(0, len(body), window):
        chunk = body[start : start + window]
        if group_by_length:
            chunk = sorted(chunk, key=lambda index: lengths[index])
        batches.extend(chunk[i : i + micro_batch_size] for i in range(0, len(chunk), micro_batch_size))
    step_groups = [batches[i : i + slots] for i in range(0, len(batches), slots)]
    if group_by_length:
        # Neighbouring steps hold similar lengths; shuffling keeps the epoch's order random.
        rng.shuffle(step_groups)
    if tail:
        if group_by_length:
            tail = sorted(tail, key=lambda index: lengths[index])
        step_groups.append([tail[slot::slots] for slot in range(slots)])

    steps = []
    for group in step_groups:
        total = sum(loss_tokens[index] for batch in group for index in batch)
        micro_batches = [MicroBatch(batch, total) for batch in group]
        steps.append([micro_batches[rank * accumulate : (rank + 1) * accumulate] for rank in range(world_size)])
    return EpochPlan(steps, left_out)


class StepBatchSampler:
    """A DataLoader batch sampler over rank ``rank``'s micro-batches, one epoch plan per epoch.

    Each micro-batch is a list of ``(example index, step loss tokens)`` pairs, so the dataset
    item (and the collated batch) carries the step's token count.
    """

    def __init__(
        self,
        lengths: list[int],
        loss_tokens: list[int],
        micro_batch_size: int,
        accumulate: int,
        world_size: int,
        rank: int,
        seed: int,
        group_by_length: bool,
    ):
        self.lengths = lengths
        self.loss_tokens = loss_tokens
        self.micro_batch_size = micro_batch_size
        self.accumulate = accumulate
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0
        # Micro-batches of the current epoch already trained on (a resumed run skips them once).
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, micro_batches_done: int) -> None:
        self.epoch = epoch
        self.skip = micro_batches_done

    def plan(self) -> EpochPlan:
        return plan_epoch(
            self.lengths,
            self.loss_tokens,
            self.micro_batch_size,
            self.accumulate,
            self.world_size,
            self.seed + self.epoch,
            self.group_by_length,
        )

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro_batches = [batch for step in self.plan().steps for batch in step[self.rank]]
        skip, self.skip = self.skip, 0
        for batch in micro_batches[skip:]:
            yield [(index, batch.step_loss_tokens) for index in batch.indices]

    def __len__(self) -> int:
        examples = len(self.lengths)
        per_step = self.micro_batch_size * self.accumulate * self.world_size
        steps = examples // per_step + (examples % per_step >= self.accumulate * self.world_size)
        return steps * self.accumulate
