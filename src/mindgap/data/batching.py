"""Optimiser-step plans: which examples each rank trains on in each micro-batch of each step.

The loss is a per-token mean over the whole optimiser step (DESIGN.md §1), so every
micro-batch must know how many loss tokens its step holds on all ranks together. Planning
the epoch up front gives every rank that number without communication.

A step is a uniform sample of the data: the epoch is shuffled and cut into steps first, and
only then are a step's examples ordered by length into its micro-batches (little padding, and
no step made of one length band or one source). Every example is trained once per epoch: the
last step holds what is left, with fewer micro-batches per rank when it is small.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from mindgap.errors import ConfigError


@dataclass(frozen=True)
class MicroBatch:
    indices: list[int]
    # Loss tokens of the micro-batch's optimiser step, summed over its micro-batches on every rank.
    step_loss_tokens: int


@dataclass(frozen=True)
class EpochPlan:
    # steps[s][r] is rank r's list of micro-batches in optimiser step s; every rank of a step has
    # the same number of micro-batches (accumulate, or fewer in the last step).
    steps: list[list[list[MicroBatch]]]

    def micro_batches(self, rank: int) -> list[MicroBatch]:
        return [batch for step in self.steps for batch in step[rank]]


def step_sizes(examples: int, micro_batch_size: int, accumulate: int, world_size: int) -> list[int]:
    """Examples per optimiser step: full steps of ``micro x accumulate x world``, then what is left.

    Every rank needs at least one example in every step (they run the same collectives). When
    fewer than ``world_size`` examples are left for the last step, it borrows from the step before.
    Raises ``ConfigError`` naming the counts when no plan gives every rank a micro-batch.
    """
    per_step = micro_batch_size * accumulate * world_size
    full, left = divmod(examples, per_step)
    sizes = [per_step] * full + ([left] if left else [])
    if sizes and sizes[-1] < world_size and len(sizes) > 1:
        borrowed = world_size - sizes[-1]
        sizes[-2:] = [per_step - borrowed, world_size]
    if not sizes or any(_micro_batches_per_rank(size, micro_batch_size, world_size) is None for size in sizes):
        raise ConfigError(
            f"train: {examples} records cannot give each of {world_size} ranks a micro-batch in every optimiser step"
            f" of {micro_batch_size} x {accumulate} x {world_size} = {per_step} records; use fewer devices, a larger"
            f" micro_batch_size, or a record count that is a multiple of {world_size}"
        )
    return sizes


def _micro_batches_per_rank(size: int, micro_batch_size: int, world_size: int) -> int | None:
    """Micro-batches each rank gets for a step of ``size`` examples, or None when none fits."""
    per_rank = math.ceil(size / (micro_batch_size * world_size))
    return per_rank if world_size * per_rank <= size else None


def plan_epoch(
    lengths: list[int],
    loss_tokens: list[int],
    micro_batch_size: int,
    accumulate: int,
    world_size: int,
    seed: int,
    group_by_length: bool,
) -> EpochPlan:
    """Shuffle, cut into steps of ``micro x accumulate x world`` examples, then batch inside each step.

    With ``group_by_length`` a step's examples are sorted by length before they are cut into
    micro-batches, and the micro-batches are dealt to ranks in turn, so each rank gets a spread of
    lengths. Micro-batches never exceed ``micro_batch_size``; in the last step they may be smaller.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    steps = []
    start = 0
    for size in step_sizes(len(order), micro_batch_size, accumulate, world_size):
        members = order[start : start + size]
        start += size
        if group_by_length:
            members.sort(key=lambda index: lengths[index])
        per_rank = _micro_batches_per_rank(size, micro_batch_size, world_size)
        assert per_rank is not None
        slots = per_rank * world_size
        # Sizes differ by at most one, the larger ones first; consecutive examples stay together.
        bounds = [0]
        for slot in range(slots):
            bounds.append(bounds[-1] + size // slots + (slot < size % slots))
        total = sum(loss_tokens[index] for index in members)
        batches = [MicroBatch(members[bounds[slot] : bounds[slot + 1]], total) for slot in range(slots)]
        steps.append([batches[rank::world_size] for rank in range(world_size)])
    return EpochPlan(steps)


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

    def steps_per_epoch(self) -> int:
        return len(step_sizes(len(self.lengths), self.micro_batch_size, self.accumulate, self.world_size))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        skip, self.skip = self.skip, 0
        for batch in self.plan().micro_batches(self.rank)[skip:]:
            yield [(index, batch.step_loss_tokens) for index in batch.indices]

    def __len__(self) -> int:
        sizes = step_sizes(len(self.lengths), self.micro_batch_size, self.accumulate, self.world_size)
        return sum(_micro_batches_per_rank(size, self.micro_batch_size, self.world_size) or 0 for size in sizes)


class ValidationBatchSampler:
    """Validation micro-batches by length, dealt to ranks in turn; yields ``(index, counted)`` lists.

    Every rank runs the same number of micro-batches (the sharded strategies gather parameters in
    each forward): a rank short of one runs the first one again with ``counted`` False, to be left out of
    the sums.
    """

    def __init__(self, lengths: list[int], micro_batch_size: int, world_size: int, rank: int):
        order = sorted(range(len(lengths)), key=lambda index: lengths[index])
        batches = [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
        self.batches = batches[rank::world_size]
        self.filler = batches[0] if batches else []
        self.per_rank = math.ceil(len(batches) / world_size)

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for position in range(self.per_rank):
            counted = position < len(self.batches)
            yield [(index, counted) for index in (self.batches[position] if counted else self.filler)]

    def __len__(self) -> int:
        return self.per_rank
