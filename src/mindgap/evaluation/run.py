"""Sample answers on each benchmark, verify them, and write per-sample, per-problem and summary results.

One model's results directory:

    results.json, results.md         metrics per benchmark and their mean, with bootstrap intervals
    <benchmark>/samples.jsonl        one row per sample: prompt, response, extracted answer, gold, verdict
    <benchmark>/problems.jsonl       one row per problem: samples, correct ones, majority answer
    <benchmark>/benchmark.json       written last: the fingerprint and counts of a finished benchmark
    <benchmark>/chunks/<fingerprint>/chunk-NNNNN.json   committed work of an unfinished benchmark

A benchmark whose ``benchmark.json`` carries the current fingerprint is not sampled again (its model
is not even loaded), and an unfinished one keeps every committed chunk. The fingerprint covers what
decides the samples (weights, dtype, prompts, sampling, seed, generator, chunking), so a changed
config never reuses stale samples. A chunk's seed depends on (seed, benchmark, chunk index) only, so a
resumed run writes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mindgap import publish
from mindgap.config import MindgapConfig
from mindgap.errors import ConfigError, MindgapError
from mindgap.evaluation.benchmarks import Benchmark, load_benchmarks
from mindgap.evaluation.compare import Comparison, compare_results, read_outcomes, results_markdown, write_outcomes
from mindgap.evaluation.metrics import ProblemOutcome, estimate, majority_vote, metric_names, problem_scores
from mindgap.evaluation.models import EvalModel, materialise, resolve_models, weights_fingerprint
from mindgap.fingerprints import config_fingerprint, problems_fingerprint, verifier_fingerprint
from mindgap.generation.base import Generator
from mindgap.generation.factory import make_generator
from mindgap.models.loading import load_tokenizer
from mindgap.prompts import standard_prompt
from mindgap.tracking import Tracker
from mindgap.verification.verifier import Verifier

RESULTS = "results.json"
RESULTS_TABLE = "results.md"
SAMPLES = "samples.jsonl"
PROBLEMS = "problems.jsonl"
BENCHMARK_DONE = "benchmark.json"
CHUNKS = "chunks"
EXPORTS = "exported"
# Bump when cached chunks change meaning, so that old ones are never mixed with new.
CACHE_FORMAT = 1
# Directories of output_dir that are not a model's results (labels name the others).
RESERVED_NAMES = (EXPORTS, "wandb", "csv", ".hydra")
# Generator keys that decide how fast samples come, not which ones: changing them keeps the cache.
SCHEDULING_KEYS = ("gpu_memory_utilization", "enforce_eager")

# (save_dir, label or None, stage) -> the tracker of one model's evaluation (stage eval) or of the comparison.
TrackerFactory = Callable[[Path, str | None, str], Tracker]


@dataclass
class ModelResults:
    model: EvalModel
    results_dir: Path
    # The content of results.json.
    results: dict[str, Any]


@dataclass
class EvaluationOutcome:
    models: list[ModelResults]
    # The side-by-side table when several models were evaluated.
    comparison: Comparison | None


def results_dir_of(output_dir: Path, label: str, several: bool) -> Path:
    """Where ``run_evaluation`` writes a model's results: ``output_dir`` itself when it evaluates one model."""
    return output_dir / label if several else output_dir


def run_evaluation(
    config: MindgapConfig, output_dir: Path, make_tracker: TrackerFactory, model_path: str | None = None
) -> EvaluationOutcome:
    """Evaluate every model on every benchmark; compare them when there are several.

    One model writes its results into ``output_dir``; several write into ``output_dir/<label>`` and the
    comparison (``comparison.md``, ``.csv``, ``.json``) into ``output_dir``.
    """
    benchmarks = load_benchmarks(config)
    models = resolve_models(config, output_dir / EXPORTS, model_path)
    several = len(models) > 1
    for model in models if several else []:
        if model.label in RESERVED_NAMES:
            raise ConfigError(f"label {model.label!r} names a directory of the evaluation itself; choose another")
    evaluated = []
    with Verifier.from_config(config.verifier) as verifier:
        for model in models:
            results_dir = results_dir_of(output_dir, model.label, several)
            tracker = make_tracker(results_dir, model.label if several else None, "eval")
            try:
                evaluated.append(ModelEvaluation(config, model, results_dir, verifier).run(benchmarks, tracker))
            finally:
                tracker.finish()
    comparison = None
    if several:
        runs = {result.model.label: result.results_dir for result in evaluated}
        baseline = config.eval.baseline or models[0].label
        comparison = compare_results(runs, baseline, output_dir, config.eval.bootstrap)
        tracker = make_tracker(output_dir, None, "compare")
        try:
            tracker.log_table("eval/comparison", *comparison.table_rows())
        finally:
            tracker.finish()
    return EvaluationOutcome(evaluated, comparison)


class _LazyGenerator:
    """The model's generator, started on first use: a model whose benchmarks are all cached is never loaded."""

    def __init__(self, config: MindgapConfig, model: EvalModel):
        self.config = config
        self.model = model
        self.generator: Generator | None = None

    def get(self) -> Generator:
        if self.generator is None:
            self.model = materialise(self.model)
            self.generator = make_generator(self.config.generator, self.model.source, self.config.model.dtype)
        return self.generator

    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()
            self.generator = None


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def chunk_seed(seed: int, benchmark: str, index: int) -> int:
    """The sampling seed of one chunk: fixed by (seed, benchmark, chunk index), whatever ran before it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{benchmark}:{index}".encode()).digest()[:4], "big")


class ModelEvaluation:
    """One model on every benchmark: sampling (resumable, chunk by chunk), verdicts, metrics, reports."""

    def __init__(self, config: MindgapConfig, model: EvalModel, results_dir: Path, verifier: Verifier):
        self.config = config
        self.model = model
        self.results_dir = results_dir
        self.verifier = verifier
        self.sampling = config.eval.sampling
        self.metrics = metric_names(self.sampling.n, config.eval.pass_k)
        self.generator = _LazyGenerator(config, model)
        self._tokenizer = None

    # ------------------------------------------------------------------ the run

    def run(self, benchmarks: list[Benchmark], tracker: Tracker) -> ModelResults:
        started = time.time()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        summaries: dict[str, dict[str, Any]] = {}
        outcomes: dict[str, list[ProblemOutcome]] = {}
        try:
            for benchmark in benchmarks:
                summaries[benchmark.name], outcomes[benchmark.name] = self._benchmark(benchmark)
        finally:
            self.generator.close()
        results = self._results(summaries, outcomes, time.time() - started)
        publish.write_text(self.results_dir / RESULTS, json.dumps(results, indent=2))
        publish.write_text(self.results_dir / RESULTS_TABLE, results_markdown(results))
        self._track(results, benchmarks, tracker)
        return ModelResults(self.generator.model, self.results_dir, results)

    def _benchmark(self, benchmark: Benchmark) -> tuple[dict[str, Any], list[ProblemOutcome]]:
        bench_dir = self.results_dir / benchmark.name
        prompts = [self._prompt(problem.problem) for problem in benchmark.problems]
        fingerprint = self._fingerprint(benchmark, prompts)
        done = bench_dir / BENCHMARK_DONE
        if done.is_file() and (bench_dir / SAMPLES).is_file() and (bench_dir / PROBLEMS).is_file():
            summary = json.loads(done.read_text())
            if summary.get("fingerprint") == fingerprint:
                return summary | {"reused": True}, read_outcomes(bench_dir / PROBLEMS)
        work = bench_dir / CHUNKS / fingerprint
        size = self.config.eval.chunk_size
        chunks = math.ceil(len(benchmark.problems) / size)
        publish.clean_stale_staging(work)
        pending = [index for index in range(chunks) if not _chunk_file(work, index).is_file()]
        if pending:
            left = sum(len(benchmark.problems[index * size : (index + 1) * size]) for index in pending)
            progress = tqdm(
                total=len(benchmark.problems),
                initial=len(benchmark.problems) - left,
                desc=f"eval {self.model.label}/{benchmark.name}",
                unit="problem",
                dynamic_ncols=True,
            )
            try:
                for index in pending:
                    chunk = slice(index * size, (index + 1) * size)
                    payload = self._sample_chunk(benchmark, index, benchmark.problems[chunk], prompts[chunk])
                    publish.write_text(_chunk_file(work, index), json.dumps(payload))
                    progress.update(len(payload["problem_ids"]))
            finally:
                progress.close()
        summary, outcomes = self._merge(benchmark, work, chunks, fingerprint)
        return summary | {"reused": False}, outcomes

    # ------------------------------------------------------------------ sampling and verdicts

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            # A checkpoint's tokenizer is its base model's: the export copies it.
            self._tokenizer = load_tokenizer(
                self.model.base_source if self.model.kind == "checkpoint" else self.model.source
            )
        return self._tokenizer

    def _prompt(self, problem: str) -> str:
        tokenizer = self.tokenizer if self.config.prompt_type == "chat" else None
        return standard_prompt(problem, self.config.prompt_type, tokenizer)

    def _fingerprint(self, benchmark: Benchmark, prompts: list[str]) -> str:
        generator = {
            key: value for key, value in dataclasses.asdict(self.config.generator).items() if key not in SCHEDULING_KEYS
        }
        return config_fingerprint(
            {
                "cache_format": CACHE_FORMAT,
                "benchmark": benchmark.name,
                "problems": problems_fingerprint(benchmark.problems),
                "prompts": hashlib.sha256("\0".join(prompts).encode()).hexdigest(),
                "weights": weights_fingerprint(self.model, self.config.cache_dir),
                "dtype": self.config.model.dtype,
                "generator": generator,
                "sampling": dataclasses.asdict(self.sampling),
                # The verdicts are stored with the samples.
                "verifier": verifier_fingerprint(self.config.verifier),
                "seed": self.config.seed,
                "chunk_size": self.config.eval.chunk_size,
            }
        )

    def _sample_chunk(self, benchmark: Benchmark, index: int, problems: list, prompts: list[str]) -> dict[str, Any]:
        generator = self.generator.get()
        # Timed after the engine start, so that tokens/s measures sampling and verification only.
        started = time.time()
        seed = chunk_seed(self.config.seed, benchmark.name, index)
        completions = generator.generate(prompts, self.sampling, seed=seed)
        responses = [sample.text for samples in completions for sample in samples]
        golds = [problem.answer for problem, samples in zip(problems, completions, strict=True) for _ in samples]
        verdicts = iter(self.verifier.verify(responses, golds))
        rows = []
        for problem, prompt, samples in zip(problems, prompts, completions, strict=True):
            for sample_index, sample in enumerate(samples):
                verdict = next(verdicts)
                rows.append(
                    {
                        "benchmark": benchmark.name,
                        "id": problem.id,
                        "sample": sample_index,
                        "prompt": prompt,
                        "response": sample.text,
                        "extracted_answer": verdict.predicted,
                        "gold": problem.answer,
                        "correct": verdict.correct,
                        "finish_reason": sample.finish_reason,
                        "truncated": sample.finish_reason == "length",
                        "num_tokens": len(sample.token_ids),
                        "verifier_timeout": verdict.timed_out,
                    }
                )
        return {
            "index": index,
            "seed": seed,
            "problem_ids": [problem.id for problem in problems],
            "wall_time_s": time.time() - started,
            "rows": rows,
        }

    def _merge(
        self, benchmark: Benchmark, work: Path, chunks: int, fingerprint: str
    ) -> tuple[dict[str, Any], list[ProblemOutcome]]:
        """Publish samples.jsonl and problems.jsonl, then benchmark.json (the mark of a finished benchmark)."""
        rows: list[dict[str, Any]] = []
        generation_time = 0.0
        size = self.config.eval.chunk_size
        for index, payload in enumerate(_chunk_payloads(work, chunks)):
            expected = [problem.id for problem in benchmark.problems[index * size : (index + 1) * size]]
            if payload["problem_ids"] != expected:
                raise MindgapError(f"eval: chunk {index} in {work} holds other problems; delete that directory")
            rows.extend(payload["rows"])
            generation_time += payload["wall_time_s"]
        outcomes = problem_outcomes(rows)
        bench_dir = work.parent.parent
        # The old marker goes first: no crash may leave it vouching for samples it did not see.
        publish.remove(bench_dir / BENCHMARK_DONE)
        publish.clean_stale_staging(bench_dir)
        publish.write_text(bench_dir / SAMPLES, _jsonl(rows))
        write_outcomes(bench_dir / PROBLEMS, outcomes)
        tokens = sum(row["num_tokens"] for row in rows)
        summary = {
            "fingerprint": fingerprint,
            "benchmark": benchmark.name,
            "problems": len(outcomes),
            "samples": len(rows),
            "empty_responses": sum(not row["response"].strip() for row in rows),
            "no_answer": sum(row["extracted_answer"] is None for row in rows),
            "truncated": sum(row["truncated"] for row in rows),
            "verifier_timeouts": sum(row["verifier_timeout"] for row in rows),
            "tokens_generated": tokens,
            "mean_response_tokens": tokens / len(rows) if rows else 0.0,
            # Sampling and verification, summed over chunks (across resumed runs).
            "generation_time_s": round(generation_time, 3),
            "tokens_per_s": tokens / generation_time if generation_time else 0.0,
        }
        publish.write_text(bench_dir / BENCHMARK_DONE, json.dumps(summary, indent=2))
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):  # other fingerprints' unfinished work stays
            work.parent.rmdir()
        return summary, outcomes

    # ------------------------------------------------------------------ results

    def _results(
        self, summaries: dict[str, dict[str, Any]], outcomes: dict[str, list[ProblemOutcome]], wall_time: float
    ) -> dict[str, Any]:
        bootstrap = self.config.eval.bootstrap
        estimates = {
            metric: estimate(
                {name: problem_scores(problems, metric) for name, problems in outcomes.items()},
                bootstrap.replicates,
                bootstrap.confidence,
                bootstrap.seed,
            )
            for metric in self.metrics
        }
        benchmarks = {}
        for name, summary in summaries.items():
            values = {metric: estimates[metric][name].value for metric in self.metrics}
            intervals = {metric: [estimates[metric][name].low, estimates[metric][name].high] for metric in self.metrics}
            benchmarks[name] = {"problems": summary["problems"], **values, "ci": intervals} | {
                key: value for key, value in summary.items() if key not in ("problems", "benchmark")
            }
        model = self.generator.model
        return {
            "label": model.label,
            "model": {
                "spec": model.spec,
                "kind": model.kind,
                "path": model.path,
                "fingerprint": weights_fingerprint(self.model, self.config.cache_dir),
                "checkpoint": model.checkpoint,
                "base_model": model.base_model,
            },
            "protocol": {
                "sampling": dataclasses.asdict(self.sampling),
                "pass_k": sorted(set(self.config.eval.pass_k or [self.sampling.n])),
                "prompt_type": self.config.prompt_type,
                "seed": self.config.seed,
                "generator": self.config.generator.backend,
                "dtype": self.config.model.dtype,
                "limit": self.config.eval.limit,
            },
            "bootstrap": dataclasses.asdict(bootstrap),
            "metrics": self.metrics,
            "benchmarks": benchmarks,
            "mean": {metric: estimates[metric]["mean"].value for metric in self.metrics},
            "mean_ci": {
                metric: [estimates[metric]["mean"].low, estimates[metric]["mean"].high] for metric in self.metrics
            },
            "wall_time_s": round(wall_time, 3),
        }

    def _track(self, results: dict[str, Any], benchmarks: list[Benchmark], tracker: Tracker) -> None:
        metrics = {
            f"eval/{name}/{key}": value
            for name, values in results["benchmarks"].items()
            for key, value in values.items()
            if key in self.metrics or key in ("problems", "empty_responses", "no_answer", "truncated")
        }
        metrics |= {f"eval/mean/{metric}": value for metric, value in results["mean"].items()}
        tracker.log_metrics(metrics)
        tracker.log_summary(
            metrics
            | {
                "eval/model": results["model"]["path"],
                "eval/model_fingerprint": results["model"]["fingerprint"],
                "eval/protocol": json.dumps(results["protocol"]),
            }
        )
        columns = ["benchmark", "problems", *self.metrics, *(f"{metric} ci" for metric in self.metrics)]
        rows = [
            [
                name,
                values["problems"],
                *(values[m] for m in self.metrics),
                *(str(values["ci"][m]) for m in self.metrics),
            ]
            for name, values in results["benchmarks"].items()
        ]
        rows.append(
            [
                "mean",
                sum(values["problems"] for values in results["benchmarks"].values()),
                *(results["mean"][m] for m in self.metrics),
                *(str(results["mean_ci"][m]) for m in self.metrics),
            ]
        )
        tracker.log_table("eval/results", columns, rows)
        tracker.log_table("eval/samples", *self._sample_table(benchmarks))

    def _sample_table(self, benchmarks: list[Benchmark]) -> tuple[list[str], list[list[Any]]]:
        """The first sample of the first ``eval.table_problems`` problems of each benchmark."""
        columns = ["benchmark", "id", "prompt", "response", "extracted_answer", "gold", "correct", "num_tokens"]
        rows = []
        wanted = self.config.eval.table_problems
        for benchmark in benchmarks:
            if wanted == 0:
                break
            for row in _first_samples(self.results_dir / benchmark.name / SAMPLES, wanted):
                rows.append([row[column] for column in columns])
        return columns, rows


def _chunk_file(work: Path, index: int) -> Path:
    return work / f"chunk-{index:05d}.json"


def _chunk_payloads(work: Path, chunks: int) -> Iterator[dict[str, Any]]:
    for index in range(chunks):
        yield json.loads(_chunk_file(work, index).read_text())


def _first_samples(path: Path, problems: int) -> Iterator[dict[str, Any]]:
    seen = 0
    with path.open() as handle:
        for line in handle:
            row = json.loads(line)
            if row["sample"] != 0:
                continue
            yield row
            seen += 1
            if seen == problems:
                return


def problem_outcomes(rows: list[dict[str, Any]]) -> list[ProblemOutcome]:
    """Per problem (in order of first appearance): samples, correct ones, and the majority vote."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["id"], []).append(row)
    outcomes = []
    for problem_id, samples in grouped.items():
        samples.sort(key=lambda row: row["sample"])
        vote = majority_vote([row["extracted_answer"] for row in samples], [row["correct"] for row in samples])
        outcomes.append(
            ProblemOutcome(
                id=problem_id,
                samples=len(samples),
                correct=sum(bool(row["correct"]) for row in samples),
                majority_answer=vote.answer,
                majority_correct=vote.correct,
            )
        )
    return outcomes
