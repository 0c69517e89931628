"""Fault injection in the style of SQLite's crash tests (README "Reliability").

Each stage runs once uninterrupted, counting its commit points (mindgap.publish); then, for every
N, a fresh run is SIGKILLed at its N-th commit point (MINDGAP_KILL_AT_COMMIT) and rerun, and the
rerun must produce exactly what the uninterrupted run did. Runs are forked from the test process,
which has already imported everything, so that a run costs its work and not an interpreter start.
"""

from __future__ import annotations

import csv
import errno
import json
import multiprocessing
import os
import signal
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from datasets import load_from_disk
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from mindgap import publish
from mindgap.config import EvalAppConfig, MindgapConfig, register_configs, to_typed
from mindgap.paths import CONFIG_DIR

pytestmark = pytest.mark.slow

# Two chunks of one problem, raw expert records rescored by the tiny model: every commit point of the
# stage (chunks of both phases, the merge, the publish) in about a second a run.
REWRITE = ["experiment=smoke", "rewrite=none", "data.limit=2", "rewrite.chunk_size=1", "logger=none"]
EVAL = ["experiment=smoke", "eval.limit=2", "eval.chunk_size=1", "eval.sampling.max_tokens=8", "logger=none"]
TRAIN = [
    "experiment=smoke",
    "rewrite=none",
    "data.limit=8",
    "train.micro_batch_size=2",
    "train.max_steps=3",
    "train.checkpoint.every_n_steps=1",
    "train.checkpoint.keep=2",
    "train.checkpoint.resume=last",
    "train.progress_bar=false",
    "logger=none",
]


@pytest.fixture(autouse=True)
def _models_built(tiny_model_path: str) -> None:
    """The tiny model is built before any run, so that its build is not one of the counted commit points."""


def _config(app: str, overrides: list[str], schema: type = MindgapConfig):
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return to_typed(compose(app, overrides=overrides), schema)


def _forked(job: Callable[[], object], kill_at: int | None = None, trace: Path | None = None):
    """Start ``job`` in a forked process, with the fault-injection hook armed at ``kill_at``."""

    def target() -> None:
        import torch

        # The parent's OpenMP thread pool does not survive a fork: a child using it would hang.
        torch.set_num_threads(1)
        os.environ.pop(publish.KILL_AT_COMMIT, None)
        if kill_at is not None:
            os.environ[publish.KILL_AT_COMMIT] = str(kill_at)
        if trace is not None:
            os.environ[publish.COMMIT_TRACE] = str(trace)
        job()

    process = multiprocessing.get_context("fork").Process(target=target)
    process.start()
    return process


def _join(process: multiprocessing.Process) -> None:
    process.join(300)
    if process.exitcode is None:
        process.kill()
        raise AssertionError("the run hung")


def _in_child(job: Callable[[], object], kill_at: int | None = None, trace: Path | None = None) -> int:
    """Run ``job`` in a forked process and return its exit code (-9 when the hook killed it)."""
    process = _forked(job, kill_at, trace)
    _join(process)
    return process.exitcode


def _commit_points(job: Callable[[], object], trace: Path) -> list[str]:
    assert _in_child(job, trace=trace) == 0
    return trace.read_text().splitlines()


def _kill_and_rerun(job_in: Callable[[Path], Callable[[], object]], points: int, root: Path) -> list[Path]:
    """For every commit point N: kill a fresh run at N, rerun it to the end; the directories of the reruns."""
    runs = []
    for point in range(1, points + 1):
        run = root / f"kill-{point}"
        assert _in_child(job_in(run), kill_at=point) == -signal.SIGKILL, f"commit point {point} was not reached"
        assert _in_child(job_in(run)) == 0, f"the rerun after a kill at commit point {point} failed"
        runs.append(run)
    return runs


# ---------------------------------------------------------------------------- rewriting stage


def _rewrite_job_of(run: Path, overrides: list[str]) -> Callable[[], object]:
    from mindgap.rewriting.app import rewrite

    config = _config("rewrite", [*overrides, f"rewrite.work_dir={run / 'work'}", f"output_dir={run / 'out'}"])
    return lambda: rewrite(config, run / "out")


def _rewrite_job(run: Path) -> Callable[[], object]:
    return _rewrite_job_of(run, REWRITE)


def _published(run: Path) -> tuple[list[dict], dict]:
    manifest = json.loads((run / "out" / "manifest.json").read_text())
    kept = {key: manifest[key] for key in ("fingerprint", "records", "counts_per_source", "stages", "dropped")}
    return list(load_from_disk(str(run / "out" / "dataset"))), kept


def test_a_rewrite_killed_at_any_commit_point_reruns_to_the_uninterrupted_dataset(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    points = _commit_points(_rewrite_job(reference), tmp_path / "trace")
    # generated x2, rescored x2, the merged dataset and its manifest, the published dataset and manifest.
    assert len(points) == 8, points
    expected = _published(reference)
    for run in _kill_and_rerun(_rewrite_job, len(points), tmp_path):
        assert _published(run) == expected, run
        # The killed writer's staging paths are gone once the rerun has passed by.
        assert not list(run.rglob("*.staging")), run


def test_two_concurrent_rewrite_jobs_compute_every_chunk_once_and_agree(tmp_path: Path) -> None:
    from mindgap.rewriting.app import rewrite

    trace = tmp_path / "trace"
    jobs = []
    for name in ("a", "b"):
        overrides = [*REWRITE, "data.limit=6", f"rewrite.work_dir={tmp_path / 'work'}"]
        config = _config("rewrite", [*overrides, f"output_dir={tmp_path / name / 'out'}"])
        jobs.append(_forked(partial(rewrite, config, tmp_path / name / "out"), trace=trace))
    for process in jobs:
        _join(process)
        assert process.exitcode == 0
    chunk_commits = Counter(
        line.split()[-1] for line in trace.read_text().splitlines() if "/generated/" in line or "/rescored/" in line
    )
    assert len(chunk_commits) == 12 and set(chunk_commits.values()) == {1}, chunk_commits
    assert _published(tmp_path / "a") == _published(tmp_path / "b")


def test_a_full_disk_leaves_no_trusted_partial_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mindgap.rewriting.app import rewrite

    reference = tmp_path / "reference"
    assert _in_child(_rewrite_job(reference)) == 0
    run = tmp_path / "full"
    config = _config("rewrite", [*REWRITE, f"rewrite.work_dir={run / 'work'}", f"output_dir={run / 'out'}"])
    real_fsync, calls = os.fsync, []

    def fsync_until_full(descriptor: int) -> None:
        # The disk fills up while the merged dataset is flushed (NFS reports ENOSPC as late as fsync).
        calls.append(descriptor)
        if len(calls) > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(publish.os, "fsync", fsync_until_full)
    with pytest.raises(OSError, match="No space left"):
        rewrite(config, run / "out")
    assert not list(run.rglob("manifest.json"))
    assert not list(run.rglob("*.staging"))
    for chunk in run.rglob("chunk-*.json"):
        json.loads(chunk.read_text())  # what was committed is whole
    monkeypatch.setattr(publish.os, "fsync", real_fsync)
    rewrite(config, run / "out")
    assert _published(run) == _published(reference)


# ---------------------------------------------------------------------------- evaluation


def _eval_job(run: Path, tiny_model_path: str) -> Callable[[], object]:
    from mindgap.evaluation.app import evaluate

    config = _config("eval", [*EVAL, f"output_dir={run}", f"models=[{tiny_model_path}]"], EvalAppConfig)
    return lambda: evaluate(config, run)


def _evaluated(run: Path) -> tuple[str, str, dict]:
    bench = run / "gsm8k_test"
    summary = json.loads((bench / "benchmark.json").read_text())
    timing = ("generation_time_s", "tokens_per_s")
    results = json.loads((run / "results.json").read_text())
    return (
        (bench / "samples.jsonl").read_text(),
        (bench / "problems.jsonl").read_text(),
        {key: value for key, value in summary.items() if key not in timing} | {"mean": results["mean"]},
    )


def test_an_evaluation_killed_at_any_commit_point_reruns_to_the_uninterrupted_results(
    tmp_path: Path, tiny_model_path: str
) -> None:
    def job_in(run: Path) -> Callable[[], object]:
        return _eval_job(run, tiny_model_path)

    reference = tmp_path / "reference"
    points = _commit_points(job_in(reference), tmp_path / "trace")
    # chunk x2, samples, problems, benchmark.json, results.json, results.md.
    assert len(points) == 7, points
    expected = _evaluated(reference)
    for run in _kill_and_rerun(job_in, len(points), tmp_path):
        assert _evaluated(run) == expected, run


# ---------------------------------------------------------------------------- training


def test_training_killed_at_any_commit_point_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    from mindgap.training.run import run_training

    # The records are rewritten beforehand, so that only training's own commit points are counted.
    records = tmp_path / "records"
    assert _in_child(_rewrite_job_of(records, [*REWRITE, "data.limit=8"])) == 0

    def train_job(run: Path) -> Callable[[], object]:
        config = _config("train", [*TRAIN, f"train.dataset_path={records / 'out' / 'dataset'}", f"output_dir={run}"])
        return lambda: run_training(config, run, logger=None)

    reference = tmp_path / "reference"
    points = _commit_points(train_job(reference), tmp_path / "trace")
    # A marker per checkpoint (steps 1-3), the removal of step 1's when step 3's is kept, the finished run's marker.
    assert len(points) == 5, points
    expected = load_file(reference / "model" / "model.safetensors")
    for run in _kill_and_rerun(train_job, len(points), tmp_path):
        weights = load_file(run / "model" / "model.safetensors")
        assert weights.keys() == expected.keys()
        for name, tensor in expected.items():
            assert weights[name].equal(tensor), (run, name)


# ---------------------------------------------------------------------------- rounds of the pipeline


def _rounds_job(run: Path) -> Callable[[], object]:
    from mindgap.pipeline.app import pipeline

    overrides = [
        "experiment=smoke",
        "data.limit=4",
        "eval.limit=1",
        "pipeline.evaluate_base=false",
        "pipeline.variants=[{name: DR+SFT, rewrite: mind_the_gap, loss: {name: sft}}]",
        "pipeline.rounds=2",
        "train.max_steps=2",
        "logger=none",
        f"rewrite.work_dir={run / 'work'}",
        f"output_dir={run}",
    ]
    config = _config("pipeline", overrides)
    return lambda: pipeline(config, run)


def test_a_pipeline_killed_at_the_round_boundary_resumes_to_the_uninterrupted_rounds(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    points = _commit_points(_rounds_job(reference), tmp_path / "trace")
    round_one_done = next(i for i, line in enumerate(points, 1) if line.endswith("rounds/1/DR+SFT/train/finished.json"))
    last_model = Path("rounds/2/DR+SFT/train/model/model.safetensors")
    expected = load_file(reference / last_model)
    round_two = list(load_from_disk(str(reference / "rounds/2/DR+SFT/rewrite/dataset")))
    # Killed as round 1's run is marked finished (it trains again), and just after (round 2 starts from it).
    for point in (round_one_done, round_one_done + 1):
        run = tmp_path / f"kill-{point}"
        assert _in_child(_rounds_job(run), kill_at=point) == -signal.SIGKILL
        assert _in_child(_rounds_job(run)) == 0
        assert list(load_from_disk(str(run / "rounds/2/DR+SFT/rewrite/dataset"))) == round_two, point
        weights = load_file(run / last_model)
        assert all(weights[name].equal(tensor) for name, tensor in expected.items()), point
        for number in ("1", "2"):
            metrics = Path("rounds", number, "DR+SFT", "train", "metrics.csv")
            assert _losses(run / metrics) == _losses(reference / metrics), (point, number)


def _losses(metrics: Path) -> list[tuple[str, str]]:
    """Each logged step's loss, in order: a step logged twice (a retrained run appended) shows."""
    with metrics.open() as handle:
        return [(row["step"], row["train/loss"]) for row in csv.DictReader(handle) if row["train/loss"]]
