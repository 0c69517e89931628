"""A study over seeds: the reports of pipeline runs that differ only in seed, summed up in one place.

``python -m mindgap.pipeline.study <dir>`` reads every ``<dir>/<job>/report`` (a ``-m +sweep=seeds``
multirun) and writes ``<dir>/summary/``: the seed table (mean and 95% t-interval over seeds of each
variant's target and forgetting means), the paired differences the papers' claims rest on (each
difference taken within a seed, then its mean, interval and the seeds in which it is positive), the
training sets' composition per rewrite strategy and their alignment and diversity per source, the rounds of
multi-round variants (expert share and accuracy per round), ``study.md`` with them all, and ``accuracy.png``.
The notebook reads the same reports (``MINDGAP_REPORTS``, printed at the end).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mindgap.pipeline.analysis import Report, load_report, seed_table, seed_values, t_interval

SUMMARY_DIR = "summary"
# (compared, reference, groups): DR against raw data per loss, the rewriters against plain SFT, rounds.
PAIRS = (
    ("DR+SFT", "SFT", ("target", "forgetting")),
    ("DR+DFT", "DFT", ("target", "forgetting")),
    ("DR+IS", "IS", ("target", "forgetting")),
    ("SDFT+SFT", "SFT", ("target", "forgetting")),
    ("RL+SFT", "SFT", ("target", "forgetting")),
    ("DR+DFT", "base", ("target", "forgetting")),
    ("oracle", "base", ("target", "forgetting")),
    # Three rounds of rewriting against one, at equal steps (experiment=study_rounds), and against three rounds
    # on round 1's data (experiment=study_rounds_restarts): what rewriting again adds, what the restarts cost.
    ("DR+DFT-3rounds", "DR+DFT", ("target", "forgetting")),
    ("DR+IS-3rounds", "DR+IS", ("target", "forgetting")),
    ("DR+DFT-3rounds", "DR+DFT-3restarts", ("target", "forgetting")),
    ("DR+IS-3rounds", "DR+IS-3restarts", ("target", "forgetting")),
    ("DR+DFT-3restarts", "DR+DFT", ("target", "forgetting")),
    ("DR+IS-3restarts", "DR+IS", ("target", "forgetting")),
)


def paired_differences(values: pd.DataFrame) -> pd.DataFrame:
    """Per pair present in the runs: the within-seed difference's mean, 95% t-interval and sign count."""
    table = values.pivot_table(index=["seed", "group"], columns="variant", values="value")
    rows = []
    for compared, reference, groups in PAIRS:
        if compared not in table.columns or reference not in table.columns:
            continue
        for group in groups:
            if group not in table.index.get_level_values("group"):
                continue
            differences = (table[compared] - table[reference]).xs(group, level="group").dropna()
            if differences.empty:
                continue
            mean, half = t_interval(differences)
            rows.append(
                {
                    "comparison": f"{compared} - {reference}",
                    "group": group,
                    "seeds": len(differences),
                    "mean": mean,
                    "ci_low": mean - half,
                    "ci_high": mean + half,
                    "positive": int((differences > 0).sum()),
                    "per_seed": " ".join(f"{value:+.1f}" for value in differences),
                }
            )
    return pd.DataFrame(rows)


def _by_training_set(reports: list[Report], table: str) -> pd.DataFrame:
    """The reports' ``table`` rows, the rewrite strategy named with its data where a run trained on other
    data than most runs did (the oracle control's native solutions: "none (toy_train_native)")."""
    datasets = [report.variants.get("data") for report in reports]
    usual = max(dict.fromkeys(datasets), key=datasets.count)  # a tie goes to the first runs (the sweep's)
    frames = []
    for report, data in zip(reports, datasets, strict=True):
        frame = getattr(report, table)
        frames.append(frame if data == usual else frame.assign(rewrite=frame["rewrite"] + f" ({data})"))
    return pd.concat(frames)


def composition(reports: list[Report]) -> pd.DataFrame:
    """Records per source of each rewrite strategy's training set, mean over seeds."""
    frames = _by_training_set(reports, "composition")
    table = frames.pivot_table(index="rewrite", columns="source", values="count", aggfunc="mean")
    return table.fillna(0).round(1)


def training_sets(reports: list[Report]) -> pd.DataFrame:
    """Alignment NLL, diversity and distinct-2 of each training set per source, mean over seeds."""
    frames = _by_training_set(reports, "training_sets")
    return frames.groupby(["rewrite", "source"], sort=False).mean().round(4)


# The rounds summary's measures, with the decimals study.md shows them to.
ROUND_MEASURES = {"expert_share": 1, "behavior_logprob": 3, "alignment_nll": 3, "target": 1, "forgetting": 1}


def rounds_summary(reports: list[Report]) -> pd.DataFrame | None:
    """Per multi-round variant and round: expert share (percent), behaviour log-prob, alignment NLL and accuracy,
    each as its mean over seeds and the half-width of its 95% t-interval (``<measure>_ci``); None when no run had
    several rounds."""
    frames = [report.rounds for report in reports if report.rounds is not None]
    if not frames:
        return None
    table = pd.concat(frames).assign(expert_share=lambda frame: 100 * frame["expert_share"])
    rows = {}
    for key, group in table.groupby(["variant", "round"], sort=False):
        intervals = {measure: t_interval(group[measure]) for measure in ROUND_MEASURES}
        rows[key] = {
            **{measure: mean for measure, (mean, _) in intervals.items()},
            **{f"{measure}_ci": half for measure, (_, half) in intervals.items()},
            "seeds": len(group),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["variant", "round"])


def rounds_markdown_table(rounds: pd.DataFrame) -> str:
    """The rounds summary as study.md shows it: mean ± half-width of the 95% t-interval over seeds."""
    shown = pd.DataFrame(
        {
            measure: [
                f"{mean:.{decimals}f} ± {half:.{decimals}f}"
                for mean, half in zip(rounds[measure], rounds[f"{measure}_ci"], strict=True)
            ]
            for measure, decimals in ROUND_MEASURES.items()
        },
        index=rounds.index,
    ).assign(seeds=rounds["seeds"])
    return markdown_table(shown.reset_index(), index=False)


def plot_seed_means(values: pd.DataFrame, path: Path) -> None:
    variants = list(dict.fromkeys(values["variant"]))
    groups = list(dict.fromkeys(values["group"]))
    figure, ax = plt.subplots(figsize=(1.2 * len(variants) + 3, 4))
    width = 0.8 / len(groups)
    for offset, group in enumerate(groups):
        part = values[values["group"] == group]
        means, halves = zip(*(t_interval(part[part["variant"] == v]["value"]) for v in variants), strict=True)
        positions = np.arange(len(variants)) + (offset - (len(groups) - 1) / 2) * width
        ax.bar(positions, means, width, yerr=np.nan_to_num(halves), capsize=3, label=group)
    ax.set_xticks(np.arange(len(variants)), variants, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%), mean over seeds")
    ax.set_title(f"Accuracy per variant over {values['seed'].nunique()} seeds (95% t-interval)")
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown_table(frame: pd.DataFrame, index: bool = True) -> str:
    """A pipe table of ``frame`` (its index as the first column when ``index``)."""
    headers = ([frame.index.name or ""] if index else []) + [str(column) for column in frame.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for label, row in frame.iterrows():
        cells = ([str(label)] if index else []) + [str(value) for value in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_dirs(study_dir: Path) -> list[Path]:
    """Every ``report/`` under ``study_dir``: one per job of the sweep, and of any control swept beside it
    (``make study`` puts the oracle control's jobs under ``<study_dir>/oracle/<n>``)."""
    found = sorted(path.parent for path in study_dir.rglob("report/variants.json"))
    if not found:
        raise FileNotFoundError(f"{study_dir}: no <job>/report/variants.json (run the sweep first)")
    return found


def write_study(study_dir: Path, directories: list[Path]) -> str:
    """Write ``<study_dir>/summary/`` from the runs' report ``directories``; returns ``study.md``'s text."""
    reports = [load_report(directory) for directory in directories]
    values = seed_values(reports)
    out = study_dir / SUMMARY_DIR
    out.mkdir(parents=True, exist_ok=True)
    seeds, pairs, sources = seed_table(reports), paired_differences(values), composition(reports)
    measured_sets, rounds = training_sets(reports), rounds_summary(reports)
    seeds.to_csv(out / "seed_table.csv")
    pairs.to_csv(out / "paired_differences.csv", index=False)
    sources.to_csv(out / "composition.csv")
    measured_sets.to_csv(out / "training_sets.csv")
    values.to_csv(out / "seed_values.csv", index=False)
    if rounds is not None:
        rounds.to_csv(out / "rounds.csv")
    plot_seed_means(values, out / "accuracy.png")
    intervals = zip(pairs.get("mean", []), pairs.get("ci_low", []), pairs.get("ci_high", []), strict=True)
    shown = pairs.assign(difference=[f"{m:+.1f} [{low:+.1f}, {high:+.1f}]" for m, low, high in intervals])
    columns = ["comparison", "group", "difference", "positive", "seeds", "per_seed"]
    summary = (
        f"# {reports[0].variants['experiment']}: {values['seed'].nunique()} seeds, {len(reports)} runs\n\n"
        f"## Accuracy (percent, mean ± 95% t-interval over seeds)\n\n{markdown_table(seeds)}\n\n"
        f"## Paired differences (points, within seed)\n\n"
        f"{markdown_table(shown[columns], index=False) if len(pairs) else 'no pair of variants to compare'}\n\n"
        f"## Training-set composition (records per source, mean over seeds)\n\n{markdown_table(sources)}\n\n"
        "## Training sets' alignment (NLL under the initial model given the question alone) and diversity,"
        f" mean over seeds\n\n{markdown_table(measured_sets.reset_index(), index=False)}\n"
    )
    if rounds is not None:
        summary += (
            "\n## Rounds (expert share and accuracy in percent; mean ± 95% t-interval over seeds)\n\n"
            f"{rounds_markdown_table(rounds)}\n"
        )
    (out / "study.md").write_text(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path, help="the multirun's output_dir (one <job>/report per seed)")
    args = parser.parse_args(argv)
    try:
        directories = report_dirs(args.study_dir)
    except FileNotFoundError as error:
        print(f"mindgap-study: error: {error}", file=sys.stderr)
        return 2
    print(write_study(args.study_dir, directories))
    reports = ":".join(str(path) for path in directories)
    print(
        f"mindgap-study: summary in {args.study_dir / SUMMARY_DIR};"
        f" the notebook reads the runs with MINDGAP_REPORTS={reports}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
