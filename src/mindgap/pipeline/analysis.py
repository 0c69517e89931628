"""Read a pipeline report directory and draw its table and figures (used by the pipeline and the notebook)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

# The files of a report directory (mindgap.pipeline.report writes them).
RESULTS_CSV, RESULTS_MD = "results.csv", "results.md"
VARIANTS_JSON = "variants.json"
TRAINING_CSV = "training_metrics.csv"
LOGPROBS_CSV = "token_logprobs.csv"
COMPOSITION_CSV = "composition.csv"
TRAINING_SETS_CSV = "training_sets.csv"
# Written only by a multi-round pipeline (mindgap.pipeline.rounds).
ROUNDS_CSV = "rounds.csv"
FIGURES_DIR = "figures"
# The training curves drawn per variant: the importance weights' spread and effective sample size.
WEIGHT_CURVES = ("is/all/weight_var", "is/all/ess")
# The per-source statistics of the importance-weighted variants (IS against DR+IS: the papers' argument).
SOURCE_WEIGHT_STATISTICS = ("weight_var", "ess")
WEIGHT_SOURCES = ("self", "guided", "expert")


@dataclass
class Report:
    directory: Path
    variants: dict[str, Any]
    # One row per (group, variant, metric, benchmark or mean): value, interval, difference to the baseline.
    results: pd.DataFrame
    # Long format: variant, step, metric, value.
    training: pd.DataFrame
    # rewrite, source, bin_low, bin_high, count.
    token_logprobs: pd.DataFrame
    # rewrite, source, count.
    composition: pd.DataFrame
    # rewrite, source (and "all"), records, alignment_nll, diversity, distinct_2 (mindgap.pipeline.rewrite_quality).
    training_sets: pd.DataFrame
    # variant, round, composition, policy gap, weights, accuracy (mindgap.pipeline.rounds); None for one round.
    rounds: pd.DataFrame | None = None

    @property
    def headline_metric(self) -> str:
        return str(self.results["metric"].iloc[0])


def load_report(directory: Path | str) -> Report:
    directory = Path(directory)
    return Report(
        directory,
        json.loads((directory / VARIANTS_JSON).read_text()),
        pd.read_csv(directory / RESULTS_CSV),
        pd.read_csv(directory / TRAINING_CSV),
        pd.read_csv(directory / LOGPROBS_CSV),
        pd.read_csv(directory / COMPOSITION_CSV),
        pd.read_csv(directory / TRAINING_SETS_CSV),
        pd.read_csv(directory / ROUNDS_CSV) if (directory / ROUNDS_CSV).is_file() else None,
    )


def group_means(report: Report) -> pd.DataFrame:
    results = report.results
    return results[(results["benchmark"] == "mean") & (results["metric"] == report.headline_metric)]


def summary_table(report: Report) -> pd.DataFrame:
    """Variant x group (target, forgetting): the headline metric's mean over benchmarks, percent, with interval."""
    rows = group_means(report)
    table = {}
    for (variant, group), row in rows.set_index(["variant", "group"]).iterrows():
        table.setdefault(variant, {})[group] = (
            f"{100 * row['value']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"
        )
    order = list(dict.fromkeys(rows["variant"]))
    return pd.DataFrame.from_dict(table, orient="index").loc[order]


def seed_values(reports: list[Report]) -> pd.DataFrame:
    """seed, variant, group, value (percent): each run's headline mean per group."""
    frames = [
        group_means(report)[["variant", "group", "value"]].assign(seed=report.variants["seed"]) for report in reports
    ]
    values = pd.concat(frames)
    return values.assign(value=100 * values["value"])


def t_interval(values: pd.Series) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (nan for a single value)."""
    half = t_quantile_975(len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan
    return float(values.mean()), float(half)


def seed_table(reports: list[Report]) -> pd.DataFrame:
    """Across runs that differ only in seed: mean and 95% t-interval of each variant's group means, percent, and
    the number of seeds each variant ran with (a control swept beside the study may have fewer)."""
    cells: dict[str, dict[str, str | int]] = {}
    for (variant, group), scores in seed_values(reports).groupby(["variant", "group"], sort=False)["value"]:
        mean, half = t_interval(scores)
        row = cells.setdefault(variant, {})
        row[group] = f"{mean:.1f} ± {half:.1f}"
        row["seeds"] = max(int(row.get("seeds", 0)), len(scores))
    table = pd.DataFrame.from_dict(cells, orient="index")
    return table[[column for column in table.columns if column != "seeds"] + ["seeds"]]


# Student's t 97.5% quantiles for 1..10 degrees of freedom; beyond, the normal 1.96 is within 6%.
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_quantile_975(degrees_of_freedom: int) -> float:
    if degrees_of_freedom < 1:
        return float("nan")
    return _T_975[degrees_of_freedom - 1] if degrees_of_freedom <= len(_T_975) else 1.96


def plot_accuracy(report: Report, ax: plt.Axes | None = None) -> plt.Axes:
    """Bars per variant for each group's mean, with the bootstrap interval."""
    ax = ax or plt.subplots(figsize=(8, 4))[1]
    rows = group_means(report)
    variants = list(dict.fromkeys(rows["variant"]))
    groups = list(dict.fromkeys(rows["group"]))
    width = 0.8 / len(groups)
    for offset, group in enumerate(groups):
        part = rows[rows["group"] == group].set_index("variant").loc[variants]
        positions = np.arange(len(variants)) + (offset - (len(groups) - 1) / 2) * width
        errors = [100 * (part["value"] - part["ci_low"]), 100 * (part["ci_high"] - part["value"])]
        ax.bar(positions, 100 * part["value"], width, yerr=errors, capsize=3, label=group)
    ax.set_xticks(np.arange(len(variants)), variants, rotation=30, ha="right")
    ax.set_ylabel(f"{report.headline_metric} (%)")
    ax.set_title("Accuracy per variant (95% bootstrap interval)")
    ax.legend()
    return ax


def plot_weight_statistics(report: Report, axes: list[plt.Axes] | None = None) -> list[plt.Axes]:
    """Variance and effective sample size of the importance weights over training, per variant."""
    axes = axes if axes is not None else list(plt.subplots(1, len(WEIGHT_CURVES), figsize=(11, 4))[1])
    for ax, metric in zip(axes, WEIGHT_CURVES, strict=True):
        curves = report.training[report.training["metric"] == metric]
        for variant, curve in curves.groupby("variant", sort=False):
            ax.plot(curve["step"], curve["value"], marker=".", label=variant)
        ax.set_xlabel("optimiser step")
        ax.set_title(metric)
    axes[0].legend()
    return axes


def plot_weight_statistics_by_source(report: Report, axes: np.ndarray | None = None) -> np.ndarray:
    """Per source, the variance and ESS of the importance weights over training, for the ``is`` variants.

    The papers' central argument in one figure: on raw data every record is an expert record with a
    wide weight distribution; rewriting moves records to self and guided sources, whose weights sit
    near 1, so the variance falls and the effective sample size rises.
    """
    weighted = [item["name"] for item in report.variants["variants"] if item["loss"]["name"] == "is"]
    if axes is None:
        axes = plt.subplots(
            len(SOURCE_WEIGHT_STATISTICS), len(WEIGHT_SOURCES), figsize=(13, 6.5), sharex=True, squeeze=False
        )[1]
    for row, statistic in enumerate(SOURCE_WEIGHT_STATISTICS):
        for column, source in enumerate(WEIGHT_SOURCES):
            ax = axes[row][column]
            curves = report.training[report.training["metric"] == f"is/{source}/{statistic}"]
            for variant in weighted:
                curve = curves[curves["variant"] == variant]
                if len(curve):
                    ax.plot(curve["step"], curve["value"], marker=".", label=variant)
            ax.set_title(f"{source}: {statistic}")
            if row == len(SOURCE_WEIGHT_STATISTICS) - 1:
                ax.set_xlabel("optimiser step")
            if ax.get_lines():
                ax.legend()
    return axes


def plot_token_logprobs(report: Report, axes: list[plt.Axes] | None = None) -> list[plt.Axes]:
    """The policy gap: per-token log-probs of each training set under the initial model, per source."""
    rewrites = list(dict.fromkeys(report.token_logprobs["rewrite"]))
    if axes is None:
        figure_axes = plt.subplots(1, len(rewrites), figsize=(5 * len(rewrites), 4), sharey=True)[1]
        axes = list(np.atleast_1d(figure_axes))
    for ax, rewrite in zip(axes, rewrites, strict=True):
        data = report.token_logprobs[report.token_logprobs["rewrite"] == rewrite]
        for source, histogram in data.groupby("source", sort=False):
            total = histogram["count"].sum()
            centres = (histogram["bin_low"] + histogram["bin_high"]) / 2
            ax.plot(centres, histogram["count"] / total, drawstyle="steps-mid", label=f"{source} ({total} tokens)")
        ax.set_xlabel("log π₀(token)")
        ax.set_title(f"training data of rewrite={rewrite}")
        ax.legend()
    axes[0].set_ylabel("share of tokens")
    return axes


def plot_composition(report: Report, ax: plt.Axes | None = None) -> plt.Axes:
    """Records per source in each training set (stacked)."""
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    table = report.composition.pivot_table(index="rewrite", columns="source", values="count", fill_value=0)
    bottom = np.zeros(len(table))
    for source in table.columns:
        ax.bar(table.index, table[source], bottom=bottom, label=source)
        bottom += table[source].to_numpy()
    ax.set_ylabel("records")
    ax.set_title("Training set composition")
    ax.legend()
    return ax


def plot_rounds(report: Report, axes: list[plt.Axes] | None = None) -> list[plt.Axes]:
    """Per multi-round variant: the expert share of each round's training set, and its model's accuracy."""
    assert report.rounds is not None
    axes = axes if axes is not None else list(plt.subplots(1, 2, figsize=(10, 4))[1])
    for variant, rows in report.rounds.groupby("variant", sort=False):
        (line,) = axes[0].plot(rows["round"], 100 * rows["expert_share"], marker="o", label=variant)
        axes[1].plot(rows["round"], rows["target"], marker="o", color=line.get_color(), label=f"{variant} target")
        axes[1].plot(
            rows["round"],
            rows["forgetting"],
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"{variant} forgetting",
        )
    axes[0].set_ylabel("expert share of the training set (%)")
    axes[1].set_ylabel(f"{report.headline_metric} (%)")
    for ax, title in zip(axes, ("Expert fallback per round", "Accuracy after each round"), strict=True):
        ax.set_xlabel("round")
        ax.set_xticks(sorted(report.rounds["round"].unique()))
        ax.set_title(title)
        ax.legend()
    return axes


def write_figures(report_dir: Path | str) -> list[Path]:
    """Draw every figure of the report into ``<report_dir>/figures`` and return their paths."""
    report = load_report(report_dir)
    figures_dir = report.directory / FIGURES_DIR
    figures_dir.mkdir(exist_ok=True)
    drawings = {
        "accuracy.png": plot_accuracy,
        "weight_statistics.png": plot_weight_statistics,
        "weight_statistics_by_source.png": plot_weight_statistics_by_source,
        "token_logprobs.png": plot_token_logprobs,
        "composition.png": plot_composition,
    }
    if report.rounds is not None:
        drawings["rounds.png"] = plot_rounds
    paths = []
    for name, draw in drawings.items():
        axes = draw(report)
        figure = np.ravel(axes)[0].figure
        figure.tight_layout()
        figure.savefig(figures_dir / name, dpi=120)
        plt.close(figure)
        paths.append(figures_dir / name)
    return paths
