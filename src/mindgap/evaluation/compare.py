"""The side-by-side table of evaluated variants, with bootstrap intervals and paired differences to a baseline.

Works from results directories written by mindgap-eval (``results.json`` and each benchmark's
``problems.jsonl``), so runs made at different times or on different machines compare as long as they
share benchmarks and problems. Every metric is a mean of per-problem scores (mindgap.evaluation.metrics):
a variant's interval resamples each benchmark's problems, and its difference to the baseline uses the
same resamples for both, which pairs them problem by problem. ``results_markdown`` is one model's table.
Metrics whose every value coincides (avg@1, pass@1 and maj@1 at one sample) are shown once, under all their names.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mindgap import publish
from mindgap.checks import require_label
from mindgap.errors import ConfigError, DataError
from mindgap.evaluation.config import BootstrapConfig
from mindgap.evaluation.metrics import Estimate, ProblemOutcome, estimate, paired_difference, problem_scores

RESULTS = "results.json"
PROBLEMS = "problems.jsonl"
COMPARISON_FILES = ("comparison.md", "comparison.csv", "comparison.json")
CSV_COLUMNS = [
    "variant",
    "metric",
    "benchmark",
    "problems",
    "value",
    "ci_low",
    "ci_high",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
]


def write_outcomes(path: Path, outcomes: Sequence[ProblemOutcome]) -> None:
    publish.write_text(path, "".join(json.dumps(asdict(outcome)) + "\n" for outcome in outcomes))


def read_outcomes(path: Path) -> list[ProblemOutcome]:
    with path.open() as handle:
        return [ProblemOutcome(**json.loads(line)) for line in handle if line.strip()]


def format_percent(value: float, interval: Sequence[float]) -> str:
    return f"{100 * value:.2f} [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"


def format_delta(delta: Estimate) -> str:
    return f"{100 * delta.value:+.2f} [{100 * delta.low:+.2f}, {100 * delta.high:+.2f}]"


@dataclass
class Variant:
    """One evaluated model: its results.json and per-problem outcomes per benchmark."""

    label: str
    results_dir: Path
    results: dict[str, Any]
    outcomes: dict[str, list[ProblemOutcome]]


def load_variant(results_dir: Path | str, label: str | None = None) -> Variant:
    """Read a results directory; ``label`` defaults to the one its results.json records."""
    results_dir = Path(results_dir)
    results_file = results_dir / RESULTS
    if not results_file.is_file():
        raise DataError(f"{results_dir}: no {RESULTS} (not a results directory of mindgap-eval)")
    results = json.loads(results_file.read_text())
    outcomes = {}
    for benchmark in results["benchmarks"]:
        problems_file = results_dir / benchmark / PROBLEMS
        if not problems_file.is_file():
            raise DataError(f"{results_dir}: {benchmark}/{PROBLEMS} is missing")
        outcomes[benchmark] = read_outcomes(problems_file)
    return Variant(label or results["label"], results_dir, results, outcomes)


@dataclass
class Comparison:
    """Values and differences of every variant, metric and benchmark (and their mean, key ``mean``)."""

    variants: list[str]
    baseline: str
    benchmarks: list[str]
    # Problems per benchmark (the same for every variant).
    problems: dict[str, int]
    metrics: list[str]
    # metric -> variant -> benchmark or "mean" -> estimate
    values: dict[str, dict[str, dict[str, Estimate]]]
    # metric -> variant (all but the baseline) -> benchmark or "mean" -> variant - baseline
    deltas: dict[str, dict[str, dict[str, Estimate]]]
    bootstrap: BootstrapConfig
    # What was left out or differs between the variants' protocols.
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One row per (variant, metric, benchmark or mean), fractions in [0, 1]."""
        rows = []
        for metric in self.metrics:
            for variant in self.variants:
                for benchmark in [*self.benchmarks, "mean"]:
                    value = self.values[metric][variant][benchmark]
                    delta = self.deltas[metric].get(variant, {}).get(benchmark)
                    rows.append(
                        {
                            "variant": variant,
                            "metric": metric,
                            "benchmark": benchmark,
                            "problems": self.problems[benchmark]
                            if benchmark != "mean"
                            else sum(self.problems.values()),
                            "value": value.value,
                            "ci_low": value.low,
                            "ci_high": value.high,
                            "delta": None if delta is None else delta.value,
                            "delta_ci_low": None if delta is None else delta.low,
                            "delta_ci_high": None if delta is None else delta.high,
                        }
                    )
        return rows

    def table_rows(self) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows for a W&B (or CSV) table."""
        return list(CSV_COLUMNS), [[row[column] for column in CSV_COLUMNS] for row in self.rows()]

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return buffer.getvalue()

    def as_dict(self) -> dict[str, Any]:
        return {
            "variants": self.variants,
            "baseline": self.baseline,
            "benchmarks": self.benchmarks,
            "problems": self.problems,
            "metrics": self.metrics,
            "bootstrap": asdict(self.bootstrap),
            "notes": self.notes,
            "rows": self.rows(),
        }

    def coinciding_metrics(self) -> dict[str, list[str]]:
        """Each metric to print, with the later metrics whose every value equals its own (at n = 1, avg@1, pass@1
        and maj@1 are one number per problem)."""
        groups: dict[str, list[str]] = {}
        for metric in self.metrics:
            first = next((shown for shown in groups if self.values[shown] == self.values[metric]), None)
            if first is None:
                groups[metric] = []
            else:
                groups[first].append(metric)
        return groups

    def markdown(self) -> str:
        confidence = round(self.bootstrap.confidence * 100)
        columns = [*self.benchmarks, "mean"]
        header_cells = [f"{name} ({self.problems[name]})" for name in self.benchmarks] + ["mean"]
        lines = [
            f"# Comparison: {', '.join(self.variants)}",
            "",
            f"Percent, with [{confidence}% bootstrap interval over problems] ({self.bootstrap.replicates} resamples"
            f" per benchmark). mean: unweighted mean over the benchmarks. Δ: difference to the baseline"
            f" **{self.baseline}** on the same problems, with a paired bootstrap interval.",
        ]
        lines += [f"- note: {note}" for note in self.notes]
        for metric, same in self.coinciding_metrics().items():
            lines += [
                "",
                f"## {' = '.join([metric, *same])}" + (" (the same values: printed once)" if same else ""),
                "",
                "| variant | " + " | ".join(header_cells) + f" | Δ mean vs {self.baseline} |",
                "|---|" + "---:|" * (len(columns) + 1),
            ]
            for variant in self.variants:
                values = self.values[metric][variant]
                cells = [format_percent(values[c].value, (values[c].low, values[c].high)) for c in columns]
                delta = self.deltas[metric].get(variant)
                cells.append("baseline" if delta is None else format_delta(delta["mean"]))
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
            others = [variant for variant in self.variants if variant != self.baseline]
            if others:
                lines += [
                    "",
                    f"Δ {metric} vs {self.baseline}:",
                    "",
                    "| variant | " + " | ".join(columns) + " |",
                    "|---|" + "---:|" * len(columns),
                ]
                for variant in others:
                    deltas = self.deltas[metric][variant]
                    lines.append(f"| {variant} | " + " | ".join(format_delta(deltas[c]) for c in columns) + " |")
        return "\n".join(lines) + "\n"


def _protocol_differences(baseline: Variant, variant: Variant) -> list[str]:
    differences = []
    ours, theirs = baseline.results.get("protocol", {}), variant.results.get("protocol", {})
    flat_ours = {**{k: v for k, v in ours.items() if k != "sampling"}, **ours.get("sampling", {})}
    flat_theirs = {**{k: v for k, v in theirs.items() if k != "sampling"}, **theirs.get("sampling", {})}
    for key in sorted(flat_ours.keys() | flat_theirs.keys()):
        if key in ("pass_k", "generator"):  # which extra metrics, and how fast: not what the samples mean
            continue
        if flat_ours.get(key) != flat_theirs.get(key):
            differences.append(f"{key} {flat_theirs.get(key)} (baseline {flat_ours.get(key)})")
    return differences


def compare(variants: Sequence[Variant], baseline: str | None, bootstrap: BootstrapConfig) -> Comparison:
    """The comparison of ``variants`` (at least one) against ``baseline`` (default: the first)."""
    if not variants:
        raise ConfigError("compare: no results to compare")
    labels = [variant.label for variant in variants]
    for label in labels:
        require_label(f"compare: label {label!r}", label)
        if labels.count(label) > 1:
            raise ConfigError(f"compare: two results directories have the label {label!r}; name them with labels=[...]")
    baseline = baseline or labels[0]
    if baseline not in labels:
        raise ConfigError(f"compare: baseline={baseline!r} is not one of the labels: {', '.join(labels)}")
    reference = variants[labels.index(baseline)]
    notes = []

    benchmarks = [name for name in reference.outcomes if all(name in variant.outcomes for variant in variants)]
    left_out = sorted({name for variant in variants for name in variant.outcomes} - set(benchmarks))
    if not benchmarks:
        raise ConfigError("compare: the results share no benchmark")
    if left_out:
        notes.append(f"benchmarks not evaluated for every variant are left out: {', '.join(left_out)}")
    metrics = [name for name in reference.results["metrics"] if all(name in v.results["metrics"] for v in variants)]
    if not metrics:
        raise ConfigError("compare: the results share no metric (different eval.sampling.n?)")
    dropped = sorted({name for variant in variants for name in variant.results["metrics"]} - set(metrics))
    if dropped:
        notes.append(f"metrics not computed for every variant are left out: {', '.join(dropped)}")
    for variant in variants:
        differences = _protocol_differences(reference, variant)
        if differences:
            notes.append(f"{variant.label} was evaluated under another protocol: {'; '.join(differences)}")

    # Each variant's outcomes in the baseline's problem order, so that scores pair up problem by problem.
    aligned: dict[str, dict[str, list[ProblemOutcome]]] = {}
    for variant in variants:
        aligned[variant.label] = {}
        for name in benchmarks:
            by_id = {outcome.id: outcome for outcome in variant.outcomes[name]}
            order = [outcome.id for outcome in reference.outcomes[name]]
            if set(by_id) != set(order):
                raise ConfigError(
                    f"compare: benchmark {name}: {variant.label} was evaluated on other problems than {baseline}"
                    f" ({len(by_id)} vs {len(order)}; same data and eval.limit?)"
                )
            aligned[variant.label][name] = [by_id[problem_id] for problem_id in order]

    values: dict[str, dict[str, dict[str, Estimate]]] = {}
    deltas: dict[str, dict[str, dict[str, Estimate]]] = {}
    for metric in metrics:
        scores = {
            label: {name: problem_scores(outcomes, metric) for name, outcomes in per_benchmark.items()}
            for label, per_benchmark in aligned.items()
        }
        values[metric] = {
            label: estimate(scores[label], bootstrap.replicates, bootstrap.confidence, bootstrap.seed)
            for label in labels
        }
        deltas[metric] = {
            label: paired_difference(
                scores[label], scores[baseline], bootstrap.replicates, bootstrap.confidence, bootstrap.seed
            )
            for label in labels
            if label != baseline
        }
    problems = {name: len(reference.outcomes[name]) for name in benchmarks}
    return Comparison(labels, baseline, benchmarks, problems, metrics, values, deltas, bootstrap, notes)


def write_comparison(comparison: Comparison, output_dir: Path) -> None:
    """comparison.md, comparison.csv and comparison.json in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown_file, csv_file, json_file = (output_dir / name for name in COMPARISON_FILES)
    publish.write_text(markdown_file, comparison.markdown())
    publish.write_text(csv_file, comparison.csv())
    publish.write_json(json_file, comparison.as_dict(), indent=2)


def compare_results(
    runs: Mapping[str, Path | str],
    baseline: str | None,
    output_dir: Path | None,
    bootstrap: BootstrapConfig | None = None,
) -> Comparison:
    """Compare labelled results directories (e.g. SFT, DFT, IS, DR+SFT, DR+DFT, DR+IS) against ``baseline``.

    Writes comparison.md, .csv and .json into ``output_dir`` (unless None) and returns the comparison.
    """
    variants = [load_variant(results_dir, label) for label, results_dir in runs.items()]
    comparison = compare(variants, baseline, bootstrap or BootstrapConfig())
    if output_dir is not None:
        write_comparison(comparison, output_dir)
    return comparison


def _same(values: dict[str, Any], metric: str, other: str) -> bool:
    return values[metric] == values[other] and values["ci"][metric] == values["ci"][other]


def results_markdown(results: dict[str, Any]) -> str:
    """One model's table: every metric per benchmark and their mean, in percent, with intervals and counts."""
    # Metrics equal on every benchmark (avg@1, pass@1 and maj@1 at n = 1) share one column.
    columns: dict[str, list[str]] = {}
    benchmarks = results["benchmarks"].values()
    for metric in results["metrics"]:
        shown = next((m for m in columns if all(_same(values, m, metric) for values in benchmarks)), metric)
        columns.setdefault(shown, []).append(metric)
    metrics = list(columns)
    protocol = results["protocol"]
    sampling = protocol["sampling"]
    confidence = round(results["bootstrap"]["confidence"] * 100)
    lines = [
        f"# Evaluation: {results['label']}",
        "",
        f"Model: `{results['model']['spec']}` ({results['model']['kind']}). Protocol: n={sampling['n']}, "
        f"T={sampling['temperature']}, top-p={sampling['top_p']}, max_tokens={sampling['max_tokens']}, "
        f"prompt {protocol['prompt_type']}, seed {protocol['seed']}, generator {protocol['generator']}. "
        f"Percent; [{confidence}% bootstrap interval over problems].",
        "",
        "| benchmark | problems | "
        + " | ".join(" = ".join(columns[m]) for m in metrics)
        + " | empty | no answer | truncated |",
        "|---|---:|" + "---:|" * len(metrics) + "---:|---:|---:|",
    ]
    for name, values in results["benchmarks"].items():
        cells = [format_percent(values[m], values["ci"][m]) for m in metrics]
        counts = [str(values[key]) for key in ("empty_responses", "no_answer", "truncated")]
        lines.append(f"| {name} | {values['problems']} | " + " | ".join(cells + counts) + " |")
    totals = [str(sum(values[key] for values in benchmarks)) for key in ("empty_responses", "no_answer", "truncated")]
    mean_cells = [format_percent(results["mean"][m], results["mean_ci"][m]) for m in metrics]
    problems = sum(values["problems"] for values in benchmarks)
    lines.append(f"| **mean** | {problems} | " + " | ".join(mean_cells + totals) + " |")
    return "\n".join(lines) + "\n"
