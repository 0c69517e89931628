"""Run the rewriting stage for an app config: load problems, rewrite, save dataset and manifest."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from datasets import Dataset

from mindgap.config import MindgapConfig
from mindgap.data.sources import SkippedRecord, load_problems
from mindgap.errors import DataError
from mindgap.fingerprints import config_fingerprint, problems_fingerprint
from mindgap.generation import make_generator
from mindgap.models import load_tokenizer, model_fingerprint, resolve_model_path
from mindgap.records import FEATURES, Problem
from mindgap.rewriting.stages import Rewriter
from mindgap.tracking import Tracker

DATASET_DIR = "dataset"
MANIFEST = "manifest.json"
SAMPLE_ROWS = 32


def _with_expert_solution(problems: list[Problem], strict: bool, skipped: list[SkippedRecord]) -> list[Problem]:
    usable = []
    for problem in problems:
        if problem.expert_solution:
            usable.append(problem)
            continue
        reason = f"record {problem.id}: empty expert solution (data.fields.solution)"
        if strict:
            raise DataError(reason)
        skipped.append(SkippedRecord(id=problem.id, reason=reason))
    return usable


def stage_fingerprint(config: MindgapConfig) -> str:
    """Identifies what the stage computes: the same fingerprint means the same dataset."""
    inputs = {
        "model": dataclasses.asdict(config.model),
        "data": dataclasses.asdict(config.data),
        "generator": dataclasses.asdict(config.generator),
        "rewrite": dataclasses.asdict(config.rewrite),
        "prompt_type": config.prompt_type,
        "seed": config.seed,
    }
    return config_fingerprint(inputs)


def finished_dataset(config: MindgapConfig, output_dir: Path) -> Path | None:
    """The dataset already written to ``output_dir`` by a run with the same fingerprint, if any."""
    manifest_path = output_dir / MANIFEST
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    return output_dir / DATASET_DIR if manifest.get("fingerprint") == stage_fingerprint(config) else None


def run_rewrite_stage(config: MindgapConfig, output_dir: Path, tracker: Tracker) -> Path:
    """Write ``output_dir/dataset`` (Arrow) and ``output_dir/manifest.json``; return the dataset path."""
    started = time.time()
    loaded = load_problems(config.data, config.data_root, strict=config.rewrite.strict)
    problems = _with_expert_solution(loaded.problems, config.rewrite.strict, loaded.skipped)
    model_path = resolve_model_path(config.model, config.cache_dir, config.data_root)
    needs_model = config.rewrite.strategy != "none"
    generator = make_generator(config.generator, model_path, config.model.dtype) if needs_model else None
    tokenizer = load_tokenizer(model_path) if config.prompt_type == "chat" else None
    outcome = Rewriter(config.rewrite, generator, tokenizer, config.prompt_type, config.seed).run(problems)

    dataset_dir = output_dir / DATASET_DIR
    rows = [record.to_dict() for record in outcome.records]
    Dataset.from_list(rows, features=FEATURES).save_to_disk(str(dataset_dir))
    manifest = {
        "fingerprint": stage_fingerprint(config),
        "records": len(rows),
        "problems": len(problems),
        "counts_per_source": outcome.counts_per_source(),
        "stages": {stage: stats.as_dict() for stage, stats in outcome.stages.items()},
        "tokens_generated": sum(stats.tokens_generated for stats in outcome.stages.values()),
        "dropped": outcome.dropped,
        "skipped": [dataclasses.asdict(skip) for skip in loaded.skipped],
        "wall_time_s": round(time.time() - started, 3),
        "model": {"path": model_path, "fingerprint": model_fingerprint(model_path)},
        "data": {"name": config.data.name, "fingerprint": problems_fingerprint(problems)},
        "config": dataclasses.asdict(config),
    }
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))

    tracker.log_metrics(
        {
            f"rewrite/{stage}/{key}": value
            for stage, stats in outcome.stages.items()
            for key, value in stats.as_dict().items()
        }
        | {f"rewrite/count/{source}": count for source, count in manifest["counts_per_source"].items()}
    )
    tracker.log_table(
        "rewrite/samples",
        ["id", "source", "answer", "response"],
        [[row["id"], row["source"], row["answer"], row["response"]] for row in rows[:SAMPLE_ROWS]],
    )
    return dataset_dir
