"""The pipeline's report directory: the data behind the comparison's table and figures.

Everything the figures need is written as plain files (CSV, JSON, markdown), so that
``mindgap.analysis`` and the notebook can redraw them without the runs themselves.
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

from mindgap.config import MindgapConfig, VariantConfig
from mindgap.evaluation.compare import Comparison, Variant, compare, format_delta, format_percent, load_variant
from mindgap.rewriting.run import MANIFEST

BASE_LABEL = "base"
RESULTS_CSV, RESULTS_MD = "results.csv", "results.md"
VARIANTS_JSON = "variants.json"
TRAINING_CSV = "training_metrics.csv"
LOGPROBS_CSV = "token_logprobs.csv"
COMPOSITION_CSV = "composition.csv"
# Per-token log-probs under the initial model are binned on [-20, 0]; lower values join the first bin.
LOGPROB_EDGES = np.linspace(-20.0, 0.0, 41)
# The training metrics the report keeps (all of them for the importance weights).
TRAINING_PREFIXES = ("train/", "val/", "is/")


@dataclasses.dataclass
class TrainedVariant:
    variant: VariantConfig
    dataset: Path
    train_dir: Path
    model_dir: Path


def write_report(config: MindgapConfig, trained: list[TrainedVariant], eval_dir: Path, report_dir: Path) -> Path:
    """Write results (target and forgetting, with intervals), training curves, log-probs, composition, figures."""
    from mindgap.analysis import write_figures

    report_dir.mkdir(parents=True, exist_ok=True)
    evaluated = [load_variant(eval_dir / label, label) for label in config.eval.labels]
    sections = _grouped_comparisons(config, evaluated)
    _write_results(sections, report_dir)
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
    write_figures(report_dir)
    return report_dir


def _grouped_comparisons(config: MindgapConfig, evaluated: list[Variant]) -> dict[str, Comparison]:
    """One comparison over the target benchmarks and one over the forgetting benchmarks."""
    benchmarks = list(evaluated[0].outcomes)
    forgetting = [name for name in benchmarks if name in config.pipeline.forgetting_benchmarks]
    groups = {"target": [name for name in benchmarks if name not in forgetting], "forgetting": forgetting}
    return {
        group: compare(
            [dataclasses.replace(item, outcomes={name: item.outcomes[name] for name in names}) for item in evaluated],
            config.eval.baseline,
            config.eval.bootstrap,
        )
        for group, names in groups.items()
        if names
    }


def _write_results(sections: dict[str, Comparison], report_dir: Path) -> None:
    first = next(iter(sections.values()))
    metric = first.metrics[0]
    columns = [f"{group} {metric} ({', '.join(comparison.benchmarks)})" for group, comparison in sections.items()]
    lines = [
        f"# Results: {metric}, percent [{round(first.bootstrap.confidence * 100)}% bootstrap interval over problems]",
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
            }
            for item in trained
        ],
    }


def _training_rows(trained: list[TrainedVariant]) -> list[list[Any]]:
    from mindgap.train import STEP_METRICS

    rows = []
    for item in trained:
        with (item.train_dir / STEP_METRICS).open() as handle:
            for record in csv.DictReader(handle):
                for key, value in record.items():
                    if key.startswith(TRAINING_PREFIXES) and value != "":
                        rows.append([item.variant.name, int(record["step"]), key, float(value)])
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
