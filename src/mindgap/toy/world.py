"""The toy world's data sets: disjoint draws of each split, written as jsonl files under the cache.

Every problem text falls in one of three parts of the problem space by a hash of the text:
*held out* (never trained on: the target test set and the forgetting set come from it), *target
train* (the fine-tuning set) and *pretraining* (the toy model's corpus). So no split shares a
problem with a split it must be held out from, whatever the sizes, and a split's first N
problems do not depend on how many are drawn.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

from mindgap import publish
from mindgap.toy.config import ToyDataConfig, ToyDistributionConfig, ToyWorldConfig
from mindgap.toy.problems import ToyProblem, draw_problem
from mindgap.toy.styles import expert_solution, native_solution

# Bump when generation or the solution styles change, so that old files are not reused.
WORLD_VERSION = 3
HELD_OUT, TARGET_TRAIN, PRETRAINING = "held_out", "target_train", "pretraining"

# Split name -> (distribution, part of the problem space).
_SPLITS = {
    "target_train": ("target", TARGET_TRAIN),
    "target_test": ("target", HELD_OUT),
    "forgetting": ("pretraining", HELD_OUT),
    "pretraining": ("pretraining", PRETRAINING),
    # The pretraining examples shown with an expert-style solution, under hints_from=hinted.
    "hinted": ("hinted", PRETRAINING),
}
# Draws a split may make per problem it keeps before giving up (the distribution is too small).
_DRAWS_PER_PROBLEM = 200


def part_of(text: str, world: ToyWorldConfig) -> str:
    """Which part of the problem space a problem text belongs to (a function of the text only)."""
    position = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") / 2**64
    if position < world.held_out_share:
        return HELD_OUT
    if position < world.held_out_share + world.target_train_share:
        return TARGET_TRAIN
    return PRETRAINING


def _distribution(world: ToyWorldConfig, split: str) -> tuple[ToyDistributionConfig, str]:
    if split not in _SPLITS:
        raise ValueError(f"unknown toy split {split!r}; known: {', '.join(_SPLITS)}")
    name, part = _SPLITS[split]
    return getattr(world, name), part


def _draws(world: ToyWorldConfig, split: str) -> Iterator[ToyProblem]:
    """The split's problems in order: distinct, all in the split's part of the problem space."""
    spec, part = _distribution(world, split)
    rng = random.Random(f"mindgap-toy/{world.seed}/{split}")
    seen: set[str] = set()
    misses = 0
    while True:
        problem = draw_problem(spec, rng)
        if problem.text in seen or part_of(problem.text, world) != part:
            misses += 1
            if misses > _DRAWS_PER_PROBLEM * (len(seen) + 1):
                raise ValueError(f"toy split {split}: the distribution has too few distinct problems")
            continue
        seen.add(problem.text)
        yield problem


def split_problems(world: ToyWorldConfig, split: str, size: int) -> list[ToyProblem]:
    """The first ``size`` problems of ``split`` (target_train | target_test | forgetting | pretraining)."""
    draws = _draws(world, split)
    return [next(draws) for _ in range(size)]


def split_rows(world: ToyWorldConfig, split: str, size: int) -> list[dict]:
    """The rows of a split's jsonl file."""
    return [
        {
            "id": f"{split}-{index:05d}",
            "problem": problem.text,
            "answer": str(problem.answer),
            "expert_solution": expert_solution(problem),
            "native_solution": native_solution(problem),
            "family": problem.family,
            "steps": problem.steps,
        }
        for index, problem in enumerate(split_problems(world, split, size))
    ]


def world_fingerprint(world: ToyWorldConfig) -> str:
    payload = json.dumps({"world": dataclasses.asdict(world), "version": WORLD_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def split_file(directory: Path, world: ToyWorldConfig, split: str, size: int) -> Path:
    return directory / f"world-{world_fingerprint(world)}" / f"{split}-{size}.jsonl"


def materialise_split(toy: ToyDataConfig, split: str, directory: Path) -> Path:
    """The split's jsonl file under ``directory``, written on first use (atomically)."""
    path = split_file(directory, toy.world, split, toy.size)
    if path.is_file():
        return path
    publish.write_text(path, "".join(json.dumps(row) + "\n" for row in split_rows(toy.world, split, toy.size)))
    return path
