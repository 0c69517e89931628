"""Timers that wait for the device, a fair order for interleaved measurements, and a quiet collector."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch

Item = TypeVar("Item")


def synchronize(device: torch.device | None) -> None:
    """Wait for queued device work, so that a clock read after it counts that work."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """The seconds of each ``with stopwatch:`` span, device work finished at both ends."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.spans: list[float] = []
        self._started = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        synchronize(self.device)
        self.spans.append(time.perf_counter() - self._started)

    @property
    def seconds(self) -> float:
        return sum(self.spans)

    @property
    def last(self) -> float:
        return self.spans[-1]

    @property
    def median(self) -> float:
        return statistics.median(self.spans)


def rotated(items: Sequence[Item], round_index: int) -> list[Item]:
    """The items with a different one first each round, so that drift in the machine's load spreads evenly."""
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects alive now (modules, models) out of the garbage collector's sight meanwhile.

    transformers and TRL make a large heap: a collection before each measured step then takes
    milliseconds instead of a fifth of a second. Undone at the end, so that the collection at exit
    still finds what extension modules left behind.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
