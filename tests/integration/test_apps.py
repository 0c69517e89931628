"""The four apps end to end through their command lines, on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nbformat
import pytest
from datasets import load_from_disk
from nbclient import NotebookClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from mindgap.paths import PROJECT_ROOT
from tests.conftest import run_app_subprocess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("pipeline") / "smoke"
    return out, run_app_subprocess("pipeline", "experiment=smoke", f"output_dir={out}", "logger=wandb")


def test_smoke_pipeline_rewrites_trains_and_evaluates(smoke_pipeline) -> None:
    out, result = smoke_pipeline
    assert result.returncode == 0, result.stderr[-3000:]
    # The last lines say what was found, then where: one variant (run) against the initial model (base).
    *_, finding, report_line, outputs_line = result.stdout.strip().splitlines()
    assert finding.startswith("mindgap-pipeline: best on target (avg@1, mean of gsm8k_test): run ")
    assert "; vs base " in finding
    assert (report_line, outputs_line) == (
        f"mindgap-pipeline: report in {out / 'report'}",
        f"mindgap-pipeline: outputs in {out}",
    )
    # At n = 1 the three metrics coincide: the comparison (values, then differences) is printed once, not thrice.
    assert result.stdout.count("| variant |") == 2
    assert "anonymous" not in result.stderr

    manifest = json.loads((out / "rewrite" / "manifest.json").read_text())
    assert manifest["problems"] == 8
    assert sum(manifest["counts_per_source"].values()) == manifest["records"] >= 8
    assert manifest["stages"]["self"]["sampled"] == 16
    assert manifest["config"]["rewrite"]["strategy"] == "mind_the_gap"
    records = load_from_disk(str(out / "rewrite" / "dataset"))
    assert len(records) == manifest["records"]

    model_dir = out / "train" / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.model_type == "qwen2" and tokenizer.eos_token == "<|im_end|>"

    # The trained model and the initial one ("base"), compared; then the report.
    results = json.loads((out / "eval" / "run" / "results.json").read_text())
    assert results["benchmarks"]["gsm8k_test"]["problems"] == 8
    assert results["model"]["path"] == str(model_dir)
    samples = (out / "eval" / "run" / "gsm8k_test" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 8
    assert (out / "eval" / "base" / "results.json").is_file()
    report = out / "report"
    assert sorted(path.name for path in (report / "figures").iterdir()) == [
        "accuracy.png",
        "composition.png",
        "token_logprobs.png",
        "weight_statistics.png",
        "weight_statistics_by_source.png",
    ]
    assert "| run |" in (report / "results.md").read_text()
    # Each training set measured once under the initial model, per source and in all.
    quality = json.loads((out / "rewrite" / "quality.json").read_text())
    assert quality["fingerprint"] == manifest["fingerprint"]
    counts = {source: count for source, count in manifest["counts_per_source"].items() if count}
    assert {source: m["records"] for source, m in quality["sources"].items()} == {"all": len(records), **counts}
    assert all(m["alignment_nll"] > 0 and 0 <= m["diversity"] <= 1 for m in quality["sources"].values())
    training_sets = (report / "training_sets.csv").read_text().splitlines()
    assert training_sets[0] == "rewrite,source,records,alignment_nll,diversity,distinct_2"
    assert len(training_sets) == 1 + len(quality["sources"])
    assert "## Training sets" in (report / "results.md").read_text()

    # One offline W&B run per stage and evaluated model, and one for the comparison table.
    for stage in ("rewrite", "train", "eval/run", "eval/base", "eval"):
        assert len(list((out / stage / "wandb").glob("offline-run-*"))) == 1, stage


def test_pipeline_of_one_variant_without_the_initial_model(tmp_path: Path) -> None:
    # One evaluated model writes its results into eval/ itself; the report reads them there.
    out = tmp_path / "alone"
    result = run_app_subprocess("pipeline", "experiment=smoke", "pipeline.evaluate_base=false", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "eval" / "results.json").is_file() and not (out / "eval" / "base").exists()
    assert "| run |" in (out / "report" / "results.md").read_text()
    assert "vs base" not in result.stdout


def test_analysis_notebook_runs_on_the_report(smoke_pipeline) -> None:
    out, result = smoke_pipeline
    assert result.returncode == 0, result.stderr[-3000:]
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    # Committed without outputs.
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    os.environ["MINDGAP_REPORT"] = str(out / "report")
    try:
        NotebookClient(
            notebook, timeout=300, resources={"metadata": {"path": str(PROJECT_ROOT / "notebooks")}}
        ).execute()
    finally:
        del os.environ["MINDGAP_REPORT"]
    images = [output for cell in code_cells for output in cell.outputs if "image/png" in output.get("data", {})]
    # Accuracy, the weight statistics overall and per source, the log-probs, the composition.
    assert len(images) == 5
    summary = next(cell for cell in code_cells if "summary_table" in cell.source)
    assert "run" in summary.outputs[0]["data"]["text/plain"]
    measured = next(cell for cell in code_cells if "training_sets" in cell.source)
    assert "alignment_nll" in measured.outputs[0]["data"]["text/plain"]


def test_rewrite_app_skips_bad_records_when_not_strict(tmp_path: Path) -> None:
    data = tmp_path / "mine.jsonl"
    rows = [
        {"q": "What is 1+1?", "sol": "1+1=2\n#### 2"},
        {"q": "What is 2+2?", "sol": "no final answer line"},
        {"q": "What is 3+3?", "sol": "3+3=6\n#### 6"},
        {"q": "What is 4+4?", "sol": "4+4\n#### \\frac{"},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = [
        "data=file",
        f"data.path={data}",
        "data.fields.problem=q",
        "data.fields.solution=sol",
        "data.fields.answer=sol",
        "data.answer_format=gsm8k",
        "rewrite=none",
        "logger=csv",
    ]
    strict = run_app_subprocess("rewrite", *common, f"output_dir={tmp_path / 'strict'}")
    assert strict.returncode == 2
    assert strict.stderr.strip() == (
        f"mindgap-rewrite: error: data 'file': {data}:2: record file/1: no gold answer in field 'sol'"
        " (answer_format=gsm8k)"
    )

    lenient = run_app_subprocess("rewrite", *common, "rewrite.strict=false", f"output_dir={tmp_path / 'lenient'}")
    assert lenient.returncode == 0, lenient.stderr[-3000:]
    manifest = json.loads((tmp_path / "lenient" / "manifest.json").read_text())
    assert manifest["counts_per_source"] == {"expert": 2}
    assert [skip["id"] for skip in manifest["skipped"]] == ["file/1", "file/3"]
    assert manifest["skipped"][1]["reason"] == (
        "record file/3: math-verify cannot parse the gold answer '\\\\frac{' and it is not a plain number or text"
        " (data.fields.answer)"
    )
    records = load_from_disk(str(tmp_path / "lenient" / "dataset"))
    assert records[0]["response"] == "1+1=2\nThe final answer is $\\boxed{2}$."
    assert list((tmp_path / "lenient" / "csv").glob("*/rewrite_samples.csv"))


def test_eval_app_on_a_named_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = run_app_subprocess(
        "eval",
        "benchmarks=[math500]",
        "eval.limit=2",
        "max_tokens=8",
        "n_samples=2",
        "temperature=1.0",
        f"output_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["benchmarks"]["math500"]["problems"] == 2
    assert "avg@2" in results["mean"]
    assert len((out / "math500" / "samples.jsonl").read_text().splitlines()) == 4


def test_train_app_with_two_ddp_processes_reuses_the_rewritten_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    args = ["experiment=smoke", "strategy=ddp", "train.strategy.accelerator=cpu", f"output_dir={out}"]
    result = run_app_subprocess("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("mindgap-train: outputs in") == 1
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    manifest = out / "rewrite" / "manifest.json"
    written = manifest.stat().st_mtime_ns
    assert AutoModelForCausalLM.from_pretrained(out / "model").config.model_type == "qwen2"

    again = run_app_subprocess("train", *args, "train.max_steps=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest.stat().st_mtime_ns == written


def test_local_multirun_of_two_process_runs(tmp_path: Path) -> None:
    # A 2-job sweep, each job on 2 spawned processes: ddp would re-run the sweep in its second rank.
    out = tmp_path / "sweep"
    result = run_app_subprocess(
        "train",
        "-m",
        "experiment=smoke",
        "rewrite=none",
        "data.limit=4",
        "train.max_steps=1",
        "strategy=ddp_spawn",
        "train.strategy.accelerator=cpu",
        "train.progress_bar=false",
        "loss=sft,dft",
        f"output_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("mindgap-train: outputs in") == 2
    for job in range(2):
        assert AutoModelForCausalLM.from_pretrained(out / str(job) / "model").config.model_type == "qwen2"
    assert json.loads((out / "1" / "data_report.json").read_text())["trained"] == 4
