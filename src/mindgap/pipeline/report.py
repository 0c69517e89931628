"""The pipeline's report directory: the data behind the comparison's table and figures.

Everything the figures need is written as plain files (CSV, JSON, markdown), so that
``mindgap.pipeline.analysis`` and the notebook can redraw them without the runs themselves.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from datasets import load_from_disk

from mindgap.config import MindgapConfig
from mindgap.evaluation.compare import Comparison, Variant, compare, format_delta, format_percent, load_variant
from mindgap.evaluation.run import results_dir_of
from mindgap.pipeline.analysis import (
    COMPOSITION_CSV,
    LOGPROBS_CSV,
    RESULTS_CSV,
    RESULTS_MD,
    ROUNDS_CSV,
    TRAINING_CSV,
    TRAINING_SETS_CSV,
    VARIANTS_JSON,
    write_figures,
)
from mindgap.pipeline.config import VariantConfig
from mindgap.pipeline.rewrite_quality import QUALITY_JSON, QUALITY_MEASURES
from mindgap.pipeline.rounds import Round, rounds_markdown, write_rounds
from mindgap.rewriting.run import MANIFEST
from mindgap.training.app import STEP_METRICS

BASE_LABEL = "base"
# Per-token log-probs under the initial model are binned on [-20, 0]; lower values join the first bin.
LOGPROB_EDGES = np.linspace(-20.0, 0.0, 41)
# The training metrics the report keeps (all of them for the importance weights).
TRAINING_PREFIXES = ("train/", "val/", "is/")


@dataclasses.dataclass
class TrainedVariant:
    variant: VariantConfig
    # The training set of its first (or only) round.
    dataset: Path
    train_dir: Path
    model_dir: Path
    # Every round, when the variant trained for more than one (mindgap.pipeline.rounds); the last is train_dir's.
    rounds: list[Round] = dataclasses.field(default_factory=list)


def write_report(config: MindgapConfig, trained: list[TrainedVariant], eval_dir: Path, report_dir: Path) -> list[str]:
    """Write results (target and forgetting, with intervals), training curves, log-probs, composition, figures.

    Returns the findings, one line per benchmark group: the best trained variant against the baseline and
    the initial model (they open results.md too).
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    several = len(config.eval.labels) > 1
    evaluated = [load_variant(results_dir_of(eval_dir, label, several), label) for label in config.eval.labels]
    sections = _grouped_comparisons(config, evaluated, config.eval.baseline)
    against_base = _grouped_comparisons(config, evaluated, BASE_LABEL) if BASE_LABEL in config.eval.labels else {}
    found = findings(sections, against_base, [item.variant.name for item in trained])
    _write_results(sections, found, report_dir)
    (report_dir / VARIANTS_JSON).write_text(json.dumps(_variants_summary(config, trained), indent=2) + "\n")
    _write_rows(report_dir / TRAINING_CSV, ["variant", "step", "metric", "value"], _training_rows(trained))
    datasets = {item.variant.rewrite: item.dataset for item in trained}
    _write_rows(
        report_dir / LOGPROBS_CSV,
        ["rewrite", "source", "bin_low", "bin_high", "count"],
        [row for rewrite, dataset in datasets.items() for row in _logprob_rows(rewrite, dataset)],
    )
    _write_rows(
        report_dir / COMPOSITION_CSV,
        ["rewrite", "source", "count"],
        [
            [rewrite, source, count]
            for rewrite, dataset in datasets.items()
            for source, count in json.loads((dataset.parent / MANIFEST).read_text())["counts_per_source"].items()
        ],
    )
    training_sets = [
        [rewrite, source, *(measures[name] for name in QUALITY_MEASURES)]
        for rewrite, dataset in datasets.items()
        for source, measures in json.loads((dataset.parent / QUALITY_JSON).read_text())["sources"].items()
    ]
    _write_rows(report_dir / TRAINING_SETS_CSV, ["rewrite", "source", *QUALITY_MEASURES], training_sets)
    with (report_dir / RESULTS_MD).open("a") as handle:
        handle.write("\n" + _training_sets_markdown(training_sets))
    if any(item.rounds for item in trained):
        write_rounds(
            [(item.variant.name, item.rounds) for item in trained if item.rounds], sections, report_dir / ROUNDS_CSV
        )
        with (report_dir / RESULTS_MD).open("a") as handle:
            handle.write("\n" + rounds_markdown(report_dir / ROUNDS_CSV))
    write_figures(report_dir)
    return found


def _training_sets_markdown(rows: list[list[Any]]) -> str:
    return (
        "\n".join(
            [
                "## Training sets",
                "",
                "Alignment: mean per-token NLL of the responses under the initial model given the question alone"
                " (lower is closer). Diversity: mean cosine distance between the responses' embeddings under it."
                " Distinct-2: share of distinct word bigrams.",
                "",
                "| rewrite | source | records | alignment NLL | diversity | distinct-2 |",
                "|---|---|---:|---:|---:|---:|",
                *(
                    f"| {rewrite} | {source} | {records} | {nll:.3f} | {diversity:.4f} | {distinct:.3f} |"
                    for rewrite, source, records, nll, diversity, distinct in rows
                ),
            ]
        )
        + "\n"
    )


def findings(sections: dict[str, Comparison], against_base: dict[str, Comparison], trained: list[str]) -> list[str]:
    """Per benchmark group, the trained variant with the best mean of the headline metric (and any tied with it),
    with its interval and its paired differences to the baseline and (when evaluated) to the initial model."""
    lines = []
    for group, comparison in sections.items():
        metric = comparison.metrics[0]
        means = {variant: comparison.values[metric][variant]["mean"] for variant in trained}
        best = max(trained, key=lambda variant: means[variant].value)
        line = (
            f"best on {group} ({metric}, mean of {', '.join(comparison.benchmarks)}): {best} "
            f"{format_percent(means[best].value, (means[best].low, means[best].high))}"
        )
        # On a few hundred problems two variants often solve as many; naming one alone would rank them.
        tied = [variant for variant in trained if variant != best and means[variant].value == means[best].value]
        if tied:
            line += f" (tied with {', '.join(tied)})"
        if best != comparison.baseline:
            line += f"; vs {comparison.baseline} {format_delta(comparison.deltas[metric][best]['mean'])}"
        if group in against_base and comparison.baseline != BASE_LABEL:
            line += f"; vs {BASE_LABEL} {format_delta(against_base[group].deltas[metric][best]['mean'])}"
        lines.append(line)
    return lines


def _grouped_comparisons(config: MindgapConfig, evaluated: list[Variant], baseline: str) -> dict[str, Comparison]:
    """One comparison over the target benchmarks and one over the forgetting benchmarks."""
    benchmarks = list(evaluated[0].outcomes)
    forgetting = [name for name in benchmarks if name in config.pipeline.forgetting_benchmarks]
    groups = {"target": [name for name in benchmarks if name not in forgetting], "forgetting": forgetting}
    return {
        group: compare(
            [dataclasses.replace(item, outcomes={name: item.outcomes[name] for name in names}) for item in evaluated],
            baseline,
            config.eval.bootstrap,
        )
        for group, names in groups.items()
        if names
    }


def _write_results(sections: dict[str, Comparison], found: list[str], report_dir: Path) -> None:
    first = next(iter(sections.values()))
    metric = first.metrics[0]
    columns = [f"{group} {metric} ({', '.join(comparison.benchmarks)})" for group, comparison in sections.items()]
    lines = [
        f"# Results: {metric}, percent [{round(first.bootstrap.confidence * 100)}% bootstrap interval over problems]",
        "",
        *(f"- {line}" for line in found),
        "",
        f"Δ: difference to **{first.baseline}** on the same problems (paired bootstrap).",
        "",
        "| variant | " + " | ".join(f"{column} | Δ" for column in columns) + " |",
        "|---|" + "---:|---:|" * len(columns),
    ]
    for variant in first.variants:
        cells = []
        for comparison in sections.values():
            value = comparison.values[metric][variant]["mean"]
            delta = comparison.deltas[metric].get(variant)
            cells += [
                format_percent(value.value, (value.low, value.high)),
                "baseline" if delta is None else format_delta(delta["mean"]),
            ]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    for group, comparison in sections.items():
        lines += ["", f"## {group} benchmarks", "", comparison.markdown().split("\n", 1)[1]]
    (report_dir / RESULTS_MD).write_text("\n".join(lines) + "\n")
    rows = [{"group": group, **row} for group, comparison in sections.items() for row in comparison.rows()]
    _write_rows(report_dir / RESULTS_CSV, list(rows[0]), [list(row.values()) for row in rows])


def _variants_summary(config: MindgapConfig, trained: list[TrainedVariant]) -> dict[str, Any]:
    return {
        "experiment": config.experiment_name,
        "seed": config.seed,
        "data": config.data.name,
        "baseline": config.eval.baseline,
        "forgetting_benchmarks": list(config.pipeline.forgetting_benchmarks),
        "variants": [
            {
                "name": item.variant.name,
                "rewrite": item.variant.rewrite,
                "loss": dataclasses.asdict(item.variant.loss),
                "dataset": str(item.dataset),
                "train_dir": str(item.train_dir),
                "model": str(item.model_dir),
                "rounds": len(item.rounds) or 1,
            }
            for item in trained
        ],
    }


def _training_rows(trained: list[TrainedVariant]) -> list[list[Any]]:
    """variant, step, metric, value; a multi-round variant's rounds follow one another on one step axis."""
    rows = []
    for item in trained:
        offset = 0
        for train_dir, steps in [(step.train_dir, step.steps) for step in item.rounds] or [(item.train_dir, 0)]:
            with (train_dir / STEP_METRICS).open() as handle:
                for record in csv.DictReader(handle):
                    for key, value in record.items():
                        if key.startswith(TRAINING_PREFIXES) and value != "":
                            rows.append([item.variant.name, offset + int(record["step"]), key, float(value)])
            offset += steps
    return rows


def _logprob_rows(rewrite: str, dataset: Path) -> list[list[Any]]:
    """Histogram of the training tokens' log-probs under the initial model (the rescored values), per source."""
    per_source: dict[str, list[float]] = defaultdict(list)
    for record in load_from_disk(str(dataset)):
        if record["rescored_logprobs"] is not None:
            per_source[record["source"]].extend(record["rescored_logprobs"])
    rows = []
    for source, values in per_source.items():
        clipped = np.clip(np.asarray(values), LOGPROB_EDGES[0], LOGPROB_EDGES[-1])
        counts, _ = np.histogram(clipped, bins=LOGPROB_EDGES)
        rows += [
            [rewrite, source, float(low), float(high), int(count)]
            for low, high, count in zip(LOGPROB_EDGES[:-1], LOGPROB_EDGES[1:], counts, strict=True)
        ]
    return rows


def _write_rows(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
