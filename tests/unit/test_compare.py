"""The comparison table on fabricated results whose intervals are known in closed form."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from mindgap.errors import ConfigError, DataError
from mindgap.evaluation.compare import compare_results, load_variant, results_markdown
from mindgap.evaluation.config import BootstrapConfig, CompareConfig
from mindgap.evaluation.metrics import ProblemOutcome
from tests.conftest import run_app_subprocess

PROTOCOL = {
    "sampling": {"n": 1, "temperature": 1.0, "top_p": 1.0, "max_tokens": 4096},
    "pass_k": [1],
    "prompt_type": "qwen-boxed",
    "seed": 0,
    "generator": "vllm",
    "dtype": "bfloat16",
    "limit": None,
}


def fabricate(root: Path, label: str, solved: dict[str, list[int]], protocol: dict | None = None) -> Path:
    """A results directory as mindgap-eval writes it: one sample per problem, ``solved`` = its verdicts."""
    results_dir = root / label
    benchmarks = {}
    for benchmark, verdicts in solved.items():
        outcomes = [
            ProblemOutcome(f"{benchmark}/{i}", 1, v, str(v) if v else None, bool(v)) for i, v in enumerate(verdicts)
        ]
        (results_dir / benchmark).mkdir(parents=True)
        (results_dir / benchmark / "problems.jsonl").write_text(
            "".join(json.dumps(asdict(outcome)) + "\n" for outcome in outcomes)
        )
        benchmarks[benchmark] = {"problems": len(verdicts)}
    results = {
        "label": label,
        "protocol": protocol or PROTOCOL,
        "metrics": ["avg@1", "pass@1", "maj@1"],
        "benchmarks": benchmarks,
    }
    (results_dir / "results.json").write_text(json.dumps(results))
    return results_dir


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    # a: SFT solves [0, 1], DFT [1, 1], IS [0, 0]; b: everyone solves all 4 problems.
    return {
        "SFT": fabricate(tmp_path, "SFT", {"a": [0, 1], "b": [1, 1, 1, 1]}),
        "DFT": fabricate(tmp_path, "DFT", {"a": [1, 1], "b": [1, 1, 1, 1]}),
        "IS": fabricate(tmp_path, "IS", {"a": [0, 0], "b": [1, 1, 1, 1]}),
    }


def test_known_intervals_and_paired_differences(runs: dict[str, Path], tmp_path: Path) -> None:
    comparison = compare_results(runs, baseline="SFT", output_dir=tmp_path / "table")
    assert comparison.benchmarks == ["a", "b"] and comparison.problems == {"a": 2, "b": 4}
    assert comparison.metrics == ["avg@1", "pass@1", "maj@1"]
    values = comparison.values["avg@1"]
    # SFT on a = [0, 1]: resampled means 0, 1/2, 1 (probabilities 1/4, 1/2, 1/4), 95% interval [0, 1].
    # SFT's mean over a and b = (r_a + 1) / 2: value 3/4, interval [1/2, 1].
    assert [(e.value, e.low, e.high) for e in values["SFT"].values()] == [(0.5, 0, 1), (1, 1, 1), (0.75, 0.5, 1)]
    # DFT solves everything: point intervals at 1.
    assert [(e.value, e.low, e.high) for e in values["DFT"].values()] == [(1, 1, 1), (1, 1, 1), (1, 1, 1)]
    deltas = comparison.deltas["avg@1"]
    assert "SFT" not in deltas
    # DFT - SFT per problem on a = [1, 0]: like SFT's own [0, 1], value 1/2 in [0, 1]; on b 0 exactly;
    # on the mean, (d_a + 0) / 2: value 1/4 in [0, 1/2].
    assert [(e.value, e.low, e.high) for e in deltas["DFT"].values()] == [(0.5, 0, 1), (0, 0, 0), (0.25, 0, 0.5)]
    # IS - SFT on a = [0, -1]: value -1/2 in [-1, 0].
    assert [(e.value, e.low, e.high) for e in deltas["IS"].values()] == [(-0.5, -1, 0), (0, 0, 0), (-0.25, -0.5, 0)]

    markdown = (tmp_path / "table" / "comparison.md").read_text()
    assert markdown == comparison.markdown()
    assert "| variant | a (2) | b (4) | mean | Δ mean vs SFT |" in markdown
    assert "| SFT | 50.00 [0.00, 100.00] | 100.00 [100.00, 100.00] | 75.00 [50.00, 100.00] | baseline |" in markdown
    assert (
        "| DFT | 100.00 [100.00, 100.00] | 100.00 [100.00, 100.00] | 100.00 [100.00, 100.00] | +25.00 [+0.00, +50.00] |"
        in markdown
    )
    assert "| IS | -50.00 [-100.00, +0.00] | +0.00 [+0.00, +0.00] | -25.00 [-50.00, +0.00] |" in markdown

    with (tmp_path / "table" / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 3 * 3  # metrics x variants x (benchmarks + mean)
    dft_mean = next(r for r in rows if (r["variant"], r["metric"], r["benchmark"]) == ("DFT", "avg@1", "mean"))
    assert dft_mean == {
        "variant": "DFT",
        "metric": "avg@1",
        "benchmark": "mean",
        "problems": "6",
        "value": "1.0",
        "ci_low": "1.0",
        "ci_high": "1.0",
        "delta": "0.25",
        "delta_ci_low": "0.0",
        "delta_ci_high": "0.5",
    }
    saved = json.loads((tmp_path / "table" / "comparison.json").read_text())
    assert saved["baseline"] == "SFT" and saved["variants"] == ["SFT", "DFT", "IS"] and len(saved["rows"]) == 27


def test_metrics_that_coincide_are_printed_once(runs: dict[str, Path], tmp_path: Path) -> None:
    """At n = 1, avg@1, pass@1 and maj@1 are one number per problem: one table, headed by all three."""
    markdown = compare_results(runs, baseline="SFT", output_dir=tmp_path / "table").markdown()
    assert markdown.count("| variant | a (2) | b (4) | mean | Δ mean vs SFT |") == 1
    assert "## avg@1 = pass@1 = maj@1 (the same values: printed once)" in markdown


def test_the_single_model_table_merges_coinciding_columns() -> None:
    values = {"avg@1": 0.5, "pass@1": 0.5, "maj@1": 0.25, "ci": {"avg@1": [0, 1], "pass@1": [0, 1], "maj@1": [0, 1]}}
    counts = {"problems": 4, "empty_responses": 0, "no_answer": 1, "truncated": 0}
    results = {
        "label": "SFT",
        "model": {"spec": "runs/sft", "kind": "directory"},
        "protocol": PROTOCOL,
        "bootstrap": {"confidence": 0.95},
        "metrics": ["avg@1", "pass@1", "maj@1"],
        "benchmarks": {"a": {**values, **counts}},
        "mean": {"avg@1": 0.5, "pass@1": 0.5, "maj@1": 0.25},
        "mean_ci": {"avg@1": [0, 1], "pass@1": [0, 1], "maj@1": [0, 1]},
    }
    table = results_markdown(results)
    assert "| benchmark | problems | avg@1 = pass@1 | maj@1 | empty | no answer | truncated |" in table
    assert "| a | 4 | 50.00 [0.00, 100.00] | 25.00 [0.00, 100.00] | 0 | 1 | 0 |" in table


def test_problems_are_paired_by_id_not_by_position(tmp_path: Path) -> None:
    baseline = fabricate(tmp_path, "SFT", {"a": [0, 1, 1]})
    shuffled = fabricate(tmp_path, "DFT", {"a": [0, 1, 1]})
    lines = (shuffled / "a" / "problems.jsonl").read_text().splitlines()
    (shuffled / "a" / "problems.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    comparison = compare_results({"SFT": baseline, "DFT": shuffled}, "SFT", None)
    delta = comparison.deltas["avg@1"]["DFT"]["a"]
    assert (delta.value, delta.low, delta.high) == (0, 0, 0)


def test_bootstrap_settings_are_used(runs: dict[str, Path]) -> None:
    # A 50% interval of SFT on a (resampled means 0, 1/2, 1 with 1/4, 1/2, 1/4) is [0, 1] at its edges
    # but the quartiles 25% / 75% land on 0 / 1 only by interpolation; at 40% it is exactly [1/2, 1/2].
    comparison = compare_results(runs, "SFT", None, BootstrapConfig(replicates=2000, confidence=0.4, seed=3))
    sft = comparison.values["avg@1"]["SFT"]["a"]
    assert (sft.low, sft.high) == (0.5, 0.5)


def test_differing_protocols_and_benchmarks_are_noted(tmp_path: Path) -> None:
    baseline = fabricate(tmp_path, "SFT", {"a": [0, 1], "b": [1]})
    other = fabricate(
        tmp_path, "DFT", {"a": [1, 1]}, protocol={**PROTOCOL, "sampling": {**PROTOCOL["sampling"], "temperature": 0.6}}
    )
    comparison = compare_results({"SFT": baseline, "DFT": other}, None, None)
    assert comparison.baseline == "SFT" and comparison.benchmarks == ["a"]
    assert comparison.notes == [
        "benchmarks not evaluated for every variant are left out: b",
        "DFT was evaluated under another protocol: temperature 0.6 (baseline 1.0)",
    ]


def test_bad_comparisons_fail_with_the_reason(tmp_path: Path, runs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="baseline='DR\\+IS' is not one of the labels: SFT, DFT, IS"):
        compare_results(runs, "DR+IS", None)
    fewer = fabricate(tmp_path, "few", {"a": [1], "b": [1, 1, 1, 1]})
    with pytest.raises(ConfigError, match="benchmark a: few was evaluated on other problems than SFT \\(1 vs 2"):
        compare_results({"SFT": runs["SFT"], "few": fewer}, None, None)
    with pytest.raises(DataError, match=r"no results\.json"):
        load_variant(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="labels has 1 entries for 2"):
        CompareConfig(results=["x", "y"], labels=["a"], output_dir="out")


def test_compare_command(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = run_app_subprocess(
        "compare",
        f"results=[{runs['SFT']},{runs['DFT']},{runs['IS']}]",
        "labels=[SFT,DR+DFT,IS]",
        "baseline=SFT",
        f"output_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| DR+DFT | 100.00 [100.00, 100.00] |" in result.stdout
    assert f"mindgap-compare: outputs in {out}" in result.stdout
    assert {path.name for path in out.iterdir()} >= {"comparison.md", "comparison.csv", "comparison.json"}


def test_findings_name_the_best_variant_and_compare_with_the_initial_model_once(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from mindgap.evaluation.compare import compare
    from mindgap.pipeline.report import findings

    base = fabricate(tmp_path, "base", {"a": [0, 0], "b": [1, 1, 1, 1]})
    variants = [load_variant(path) for path in (*runs.values(), base)]
    trained = ["SFT", "DFT", "IS"]
    against_base = {"target": compare(variants, "base", BootstrapConfig())}
    (line,) = findings({"target": compare(variants, "SFT", BootstrapConfig())}, against_base, trained)
    # DFT solves 6 of 6 problems' means: a 100%, b 100%, mean 100; SFT (50 + 100) / 2 = 75; base 50.
    assert line.startswith("best on target (avg@1, mean of a, b): DFT 100.00")
    assert "; vs SFT +25.00" in line and "; vs base +50.00" in line
    # With the initial model as the baseline, its difference is given once.
    (line,) = findings(against_base, against_base, trained)
    assert line.count("vs base") == 1


def test_findings_name_every_variant_tied_for_best(runs: dict[str, Path], tmp_path: Path) -> None:
    from mindgap.evaluation.compare import compare
    from mindgap.pipeline.report import findings

    # DR+DFT solves what DFT solves: neither is ranked above the other.
    twin = fabricate(tmp_path, "DR+DFT", {"a": [1, 1], "b": [1, 1, 1, 1]})
    variants = [load_variant(path) for path in (*runs.values(), twin)]
    (line,) = findings({"target": compare(variants, "SFT", BootstrapConfig())}, {}, ["SFT", "DFT", "IS", "DR+DFT"])
    assert line.startswith("best on target (avg@1, mean of a, b): DFT 100.00 [100.00, 100.00] (tied with DR+DFT);")
