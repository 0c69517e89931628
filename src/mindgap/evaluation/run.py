"""Sample answers on each benchmark, verify them and write per-sample and summary results."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mindgap.config import DataConfig, MindgapConfig
from mindgap.data.sources import data_config, load_problems
from mindgap.generation import make_generator
from mindgap.models import load_tokenizer, model_fingerprint
from mindgap.prompts import standard_prompt
from mindgap.tracking import Tracker
from mindgap.verify import extract_answer, is_correct

RESULTS = "results.json"


def _benchmarks(config: MindgapConfig) -> list[DataConfig]:
    names = config.eval.benchmarks or [config.data.name]
    return [config.data if name == config.data.name else data_config(name) for name in names]


def run_evaluation(config: MindgapConfig, output_dir: Path, model_path: str, tracker: Tracker) -> dict[str, Any]:
    """Write ``<bench>/samples.jsonl`` and ``results.json``; return the results."""
    sampling = config.eval.sampling
    generator = make_generator(config.generator, model_path, config.model.dtype)
    tokenizer = load_tokenizer(model_path) if config.prompt_type == "chat" else None
    per_benchmark: dict[str, dict[str, float]] = {}
    for benchmark in _benchmarks(config):
        limit = config.eval.limit or benchmark.limit
        problems = load_problems(dataclasses.replace(benchmark, limit=limit), config.data_root).problems
        prompts = [standard_prompt(problem.problem, config.prompt_type, tokenizer) for problem in problems]
        completions = generator.generate(prompts, sampling, seed=config.seed)
        bench_dir = output_dir / benchmark.name
        bench_dir.mkdir(parents=True, exist_ok=True)
        correct_total = 0
        empty = 0
        with (bench_dir / "samples.jsonl").open("w") as handle:
            for problem, prompt, samples in zip(problems, prompts, completions, strict=True):
                for index, sample in enumerate(samples):
                    verdict = bool(sample.text.strip()) and is_correct(sample.text, problem.answer)
                    empty += not sample.text.strip()
                    correct_total += verdict
                    handle.write(
                        json.dumps(
                            {
                                "id": problem.id,
                                "sample": index,
                                "prompt": prompt,
                                "response": sample.text,
                                "extracted_answer": extract_answer(sample.text),
                                "gold": problem.answer,
                                "correct": verdict,
                            }
                        )
                        + "\n"
                    )
        samples_total = len(problems) * sampling.n
        per_benchmark[benchmark.name] = {
            f"avg@{sampling.n}": correct_total / samples_total if samples_total else 0.0,
            "problems": len(problems),
            "empty_responses": empty,
        }
    key = f"avg@{sampling.n}"
    results = {
        "model": {"path": model_path, "fingerprint": model_fingerprint(model_path)},
        "sampling": sampling.__dict__,
        "benchmarks": per_benchmark,
        "mean": {key: sum(b[key] for b in per_benchmark.values()) / max(1, len(per_benchmark))},
    }
    (output_dir / RESULTS).write_text(json.dumps(results, indent=2))
    tracker.log_metrics(
        {f"eval/{name}/{metric}": value for name, metrics in per_benchmark.items() for metric, value in metrics.items()}
        | {f"eval/mean/{key}": results["mean"][key]}
    )
    return results
