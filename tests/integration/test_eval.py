"""mindgap-eval end to end: the tiny model on the five benchmarks and GSM8K test, the cache, resumption,
determinism, exact scores from a scripted generator, and several models compared side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM

from mindgap.config import EvalAppConfig, register_configs, to_typed
from mindgap.errors import ConfigError
from mindgap.evaluation.app import evaluate
from mindgap.evaluation.run import ModelEvaluation
from mindgap.generation.base import Completion
from mindgap.generation.config import SamplingConfig
from mindgap.paths import CONFIG_DIR
from tests.conftest import run_app_subprocess

BENCHMARKS = ["math500", "minerva_math", "olympiadbench", "aime24", "amc23", "gsm8k_test"]
# The papers' command (avg@n at T=1), shrunk: 4 problems per benchmark, 2 samples of 16 tokens.
COMMAND = [
    "model=tiny",
    f"benchmarks=[{','.join(BENCHMARKS)}]",
    "eval.limit=4",
    "n_samples=2",
    "temperature=1.0",
    "top_p=1.0",
    "max_tokens=16",
    "prompt_type=qwen-boxed",
]
SAMPLE_FIELDS = {
    "benchmark",
    "id",
    "sample",
    "prompt",
    "response",
    "extracted_answer",
    "gold",
    "correct",
    "finish_reason",
    "truncated",
    "num_tokens",
    "verifier_timeout",
}


def eval_config(output_dir: Path, *overrides: str) -> EvalAppConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"output_dir={output_dir}", *overrides])
    return to_typed(cfg, EvalAppConfig)


def run_eval(output_dir: Path, *overrides: str) -> dict:
    evaluate(eval_config(output_dir, *overrides), output_dir)
    return json.loads((output_dir / "results.json").read_text())


def samples_text(results_dir: Path, benchmark: str) -> str:
    return (results_dir / benchmark / "samples.jsonl").read_text()


@pytest.mark.slow
def test_eval_command_on_four_problems_of_each_benchmark_then_from_cache(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    first = run_app_subprocess("eval", *COMMAND, f"output_dir={out}", "logger=wandb")
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"mindgap-eval: outputs in {out}" in first.stdout
    assert "| **mean** | 24 |" in first.stdout

    results = json.loads((out / "results.json").read_text())
    assert results["label"] == "tiny" and results["model"]["kind"] == "hf_dir"
    assert results["metrics"] == ["avg@2", "pass@2", "maj@2"]
    assert results["protocol"]["sampling"] == {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_tokens": 16}
    assert list(results["benchmarks"]) == BENCHMARKS
    for benchmark in BENCHMARKS:
        summary = results["benchmarks"][benchmark]
        assert (summary["problems"], summary["samples"], summary["reused"]) == (4, 8, False)
        assert 0 <= summary["avg@2"] <= summary["pass@2"] <= 1
        low, high = summary["ci"]["avg@2"]
        assert low <= summary["avg@2"] <= high
        rows = [json.loads(line) for line in samples_text(out, benchmark).splitlines()]
        assert len(rows) == 8 and set(rows[0]) == SAMPLE_FIELDS
        assert [row["sample"] for row in rows] == [0, 1] * 4
        assert all(row["prompt"].startswith("<|im_start|>system\nPlease reason step by step") for row in rows)
        assert all(
            0 < row["num_tokens"] <= 16 and row["truncated"] == (row["finish_reason"] == "length") for row in rows
        )
        # Unanswered samples (every sample of the untrained model) are scored wrong and counted.
        assert summary["no_answer"] == sum(row["extracted_answer"] is None for row in rows)
        assert not any(row["correct"] for row in rows if row["extracted_answer"] is None)
        assert len((out / benchmark / "problems.jsonl").read_text().splitlines()) == 4
    assert results["mean"]["avg@2"] == pytest.approx(sum(results["benchmarks"][b]["avg@2"] for b in BENCHMARKS) / 6)
    assert (out / "results.md").read_text().startswith("# Evaluation: tiny")
    # One offline W&B run, with the results and samples tables.
    (run,) = (out / "wandb").glob("offline-run-*")
    tables = {path.name.split("_")[0] for path in (run / "files" / "media" / "table" / "eval").glob("*.table.json")}
    assert tables == {"results", "samples"}

    # The same command again: every benchmark comes from the cache; the model is not even loaded.
    written = {b: (out / b / "benchmark.json").stat().st_mtime_ns for b in BENCHMARKS}
    before = {b: samples_text(out, b) for b in BENCHMARKS}
    again = run_app_subprocess("eval", *COMMAND, f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    cached = json.loads((out / "results.json").read_text())
    assert all(cached["benchmarks"][b]["reused"] for b in BENCHMARKS)
    assert {b: (out / b / "benchmark.json").stat().st_mtime_ns for b in BENCHMARKS} == written
    assert {b: samples_text(out, b) for b in BENCHMARKS} == before
    assert cached["mean"] == results["mean"] and cached["mean_ci"] == results["mean_ci"]


def test_config_values_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^unknown benchmark 'math501'; known: aime24, aime24_hub, amc23,") as error:
        eval_config(tmp_path, "benchmarks=[math500,math501]")
    assert "math500, math500_hub, minerva_math" in str(error.value)
    with pytest.raises(ConfigError, match=r"eval.pass_k: k=4 must be in \[1, eval.sampling.n=2\]"):
        eval_config(tmp_path, "n_samples=2", "eval.pass_k=[1,4]")
    with pytest.raises(ConfigError, match=r"eval\.labels has 1 entries for 2 eval\.models"):
        eval_config(tmp_path, "models=[a,b]", "labels=[A]")
    with pytest.raises(ConfigError, match="two configs load the benchmark 'math500'"):
        evaluate(eval_config(tmp_path, "benchmarks=[math500,math500_hub]"), tmp_path)
    # The shorthands land in eval.*, after experiment files.
    config = eval_config(tmp_path, "experiment=smoke", "n_samples=3", "temperature=0.5", "benchmarks=[amc23]")
    assert config.eval.sampling == SamplingConfig(n=3, temperature=0.5, top_p=1.0, max_tokens=48)
    assert config.eval.benchmarks == ["amc23"]


# Two chunks of one problem per benchmark.
SMALL = ["benchmarks=[amc23,gsm8k_test]", "eval.limit=2", "eval.chunk_size=1", "n_samples=2", "max_tokens=8"]


def test_same_seed_same_samples_and_an_interrupted_run_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uninterrupted = tmp_path / "uninterrupted"
    run_eval(uninterrupted, *SMALL)

    original = ModelEvaluation._sample_chunk
    calls: list[tuple[str, int]] = []

    def killed_at_gsm8k_chunk_1(self, benchmark, index, problems, prompts):
        if (benchmark.name, index) == ("gsm8k_test", 1):
            raise KeyboardInterrupt
        calls.append((benchmark.name, index))
        return original(self, benchmark, index, problems, prompts)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(ModelEvaluation, "_sample_chunk", killed_at_gsm8k_chunk_1)
    with pytest.raises(KeyboardInterrupt):
        run_eval(resumed, *SMALL)
    assert calls == [("amc23", 0), ("amc23", 1), ("gsm8k_test", 0)]
    assert (resumed / "amc23" / "benchmark.json").is_file()
    assert not (resumed / "gsm8k_test" / "benchmark.json").exists()
    assert len(list((resumed / "gsm8k_test" / "chunks").glob("*/chunk-00000.json"))) == 1

    def recorded(self, benchmark, index, problems, prompts):
        calls.append((benchmark.name, index))
        return original(self, benchmark, index, problems, prompts)

    calls.clear()
    monkeypatch.setattr(ModelEvaluation, "_sample_chunk", recorded)
    results = run_eval(resumed, *SMALL)
    # Only the lost chunk is sampled again; the result equals the uninterrupted run's.
    assert calls == [("gsm8k_test", 1)]
    assert results["benchmarks"]["amc23"]["reused"] and not results["benchmarks"]["gsm8k_test"]["reused"]
    for benchmark in ("amc23", "gsm8k_test"):
        assert samples_text(resumed, benchmark) == samples_text(uninterrupted, benchmark)
    assert not (resumed / "gsm8k_test" / "chunks").exists()

    # Another seed draws other samples; another max_tokens is not served from the cache.
    other_seed = run_eval(tmp_path / "seed1", *SMALL, "seed=1")
    assert samples_text(tmp_path / "seed1", "amc23") != samples_text(uninterrupted, "amc23")
    assert not other_seed["benchmarks"]["amc23"]["reused"]
    calls.clear()
    longer = run_eval(resumed, *SMALL, "max_tokens=9")
    assert calls == [("amc23", 0), ("amc23", 1), ("gsm8k_test", 0), ("gsm8k_test", 1)]
    assert longer["benchmarks"]["amc23"]["fingerprint"] != results["benchmarks"]["amc23"]["fingerprint"]


class ScriptedGenerator:
    """Answers each prompt with fixed responses; the model is never run."""

    backend = "scripted"
    fingerprint = "scripted"

    def __init__(self, script: dict[str, list[str]]):
        self.script = script

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[list[Completion]]:
        return [
            [
                Completion(text, [1] * max(1, len(text)), [0.0] * max(1, len(text)), "length" if text == "" else "stop")
                for text in self.script[prompt][: sampling.n]
            ]
            for prompt in prompts
        ]

    def close(self) -> None:
        pass


def test_scores_of_scripted_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GSM8K test's first four gold answers are 18, 3, 70000 and 540.
    responses = [
        # 2 of 4 correct; majority 18 (2 votes) is correct. One empty response.
        ["so \\boxed{18}", "The answer is 18.", "\\boxed{-1}", ""],
        # 1 of 4 correct; majority -1 is wrong. A response without a final answer.
        ["\\boxed{-1}", "\\boxed{-1}", "#### 3", "I give up."],
        # Nothing generated at all: wrong, counted as empty and unanswered, no majority.
        ["", "", "", ""],
        # 2 of 4 correct; a 2-2 tie goes to the answer voted first (540): correct.
        ["\\boxed{540}", "\\boxed{7}", "\\boxed{7}", "\\boxed{540}"],
    ]
    config = eval_config(tmp_path, "benchmarks=[gsm8k_test]", "eval.limit=4", "n_samples=4", "eval.pass_k=[1,2]")
    from mindgap.evaluation.benchmarks import load_benchmarks
    from mindgap.prompts import standard_prompt

    problems = load_benchmarks(config)[0].problems
    script = {standard_prompt(p.problem, "qwen-boxed"): r for p, r in zip(problems, responses, strict=True)}
    monkeypatch.setattr("mindgap.evaluation.run.make_generator", lambda *args: ScriptedGenerator(script))
    evaluate(config, tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())["benchmarks"]["gsm8k_test"]
    # avg@4 = (2 + 1 + 0 + 2) / 16; pass@1 = the same; pass@2 = mean(1 - C(2,2)/C(4,2), 1 - C(3,2)/C(4,2), 0,
    # 1 - C(2,2)/C(4,2)) = (5/6 + 1/2 + 0 + 5/6) / 4 = 13/24; maj@4 = (1 + 0 + 0 + 1) / 4.
    assert summary["avg@4"] == 5 / 16 and summary["pass@1"] == 5 / 16
    assert summary["pass@2"] == pytest.approx(13 / 24, abs=1e-12)
    assert summary["maj@4"] == 0.5
    # 5 empty responses (the scripted engine marks them truncated), 6 without an answer.
    assert (summary["empty_responses"], summary["no_answer"], summary["truncated"]) == (5, 6, 5)
    problems_rows = [json.loads(line) for line in (tmp_path / "gsm8k_test" / "problems.jsonl").read_text().splitlines()]
    assert [(row["correct"], row["majority_answer"]) for row in problems_rows] == [
        (2, "18"),
        (1, "-1"),
        (0, None),
        (2, "540"),
    ]


@pytest.mark.slow
def test_several_models_compared_checkpoint_equals_its_export(tiny_model_path: str, tmp_path: Path) -> None:
    # A checkpoint of the tiny model's own weights: exported on the fly, it must sample exactly like the model.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000001.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    out = tmp_path / "eval"
    evaluate(
        eval_config(
            out,
            f"models=[{tiny_model_path},{checkpoint}]",
            "labels=[base,DR+DFT]",
            "baseline=base",
            f"eval.base_model={tiny_model_path}",
            "benchmarks=[amc23,gsm8k_test]",
            "eval.limit=3",
            "n_samples=2",
            "max_tokens=8",
            "logger=csv",
        ),
        out,
    )
    for benchmark in ("amc23", "gsm8k_test"):
        assert samples_text(out / "base", benchmark) == samples_text(out / "DR+DFT", benchmark)
    assert (out / "exported" / "DR+DFT" / "config.json").is_file()
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["variants"] == ["base", "DR+DFT"] and comparison["baseline"] == "base"
    deltas = [row for row in comparison["rows"] if row["variant"] == "DR+DFT"]
    assert deltas and all(row["delta"] == row["delta_ci_low"] == row["delta_ci_high"] == 0 for row in deltas)
    assert "| DR+DFT |" in (out / "comparison.md").read_text()
    # One CSV run per model, and the comparison table.
    assert list((out / "base" / "csv").glob("*/eval_results.csv"))
    assert list((out / "csv").glob("*/eval_comparison.csv"))
