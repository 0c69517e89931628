"""How the benchmarks print what they measured: sizes in MiB, ratios to a baseline, their spread, targets."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from mindgap.measurement.memory import MIB


def console() -> Console:
    """A console that keeps wide tables on one line when the output goes to a file."""
    return Console(width=None if sys.stdout.isatty() else 150)


def mib(size: int) -> str:
    return f"{size / MIB:,.1f}"


def ratio(value: float) -> str:
    return f"{value:.3f}x"


def spread(ratios: Sequence[float]) -> str:
    """The range of the ratios behind a median: how much the machine's load moved them."""
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    met = value >= target if higher_is_better else value <= target
    return "[green]met[/green]" if met else "[red]not met[/red]"


def table(title: str, headers: Sequence[str]) -> Table:
    """A left-titled table whose first column is a name and the rest are right-aligned numbers."""
    result = Table(title=title, title_justify="left")
    for index, header in enumerate(headers):
        result.add_column(header, justify="left" if index == 0 else "right")
    return result


@dataclass(frozen=True)
class Throughput:
    """``amount`` units of work (tokens, verdicts) done in ``seconds``."""

    name: str
    amount: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.amount / self.seconds


def throughput_table(
    title: str,
    rows: Sequence[Throughput],
    unit: str,
    baseline: str,
    extra_columns: Mapping[str, Sequence[str]] | None = None,
) -> Table:
    """One row per measurement: amount, seconds, rate and the rate's ratio to the ``baseline`` row."""
    extra_columns = extra_columns or {}
    reference = next((row for row in rows if row.name == baseline), None)
    if reference is None:
        raise ValueError(f"throughput_table: no row named {baseline!r} to compare with")
    result = table(title, ["", unit, "seconds", f"{unit}/s", f"x {baseline}", *extra_columns])
    for index, row in enumerate(rows):
        extras = [values[index] for values in extra_columns.values()]
        result.add_row(
            row.name,
            f"{row.amount:,}",
            f"{row.seconds:,.1f}",
            f"{row.rate:,.1f}",
            ratio(row.rate / reference.rate),
            *extras,
        )
    return result
