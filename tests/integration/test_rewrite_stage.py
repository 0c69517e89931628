"""The rewriting stage on the tiny model: resumable after SIGKILL, sharded across jobs, reused by fingerprint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk
from hydra import compose, initialize_config_dir

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.paths import CONFIG_DIR, PROJECT_ROOT
from mindgap.rewriting.app import rewrite
from tests.conftest import run_app_subprocess

pytestmark = pytest.mark.slow

# 12 problems in 6 chunks of 2; short samples keep every run to a few seconds.
STAGE = ["experiment=smoke", "data.limit=12", "rewrite.chunk_size=2", "rewrite.samples_per_round=1"]


def _rows(output_dir: Path) -> list[dict]:
    return list(load_from_disk(str(output_dir / "dataset")))


def _run(*overrides: str) -> subprocess.CompletedProcess:
    result = run_app_subprocess("rewrite", *STAGE, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    _run(f"rewrite.work_dir={root / 'work'}", f"output_dir={root / 'out'}")
    return root / "out"


def _run_until(path_glob: str, work_dir: Path, output_dir: Path) -> None:
    """Start the stage and SIGKILL it as soon as a file matching ``path_glob`` exists in the work dir."""
    command = [
        sys.executable,
        "-m",
        "mindgap.rewriting.app",
        *STAGE,
        f"rewrite.work_dir={work_dir}",
        f"output_dir={output_dir}",
    ]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=os.environ.copy(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(work_dir.glob(path_glob)):
        assert process.poll() is None, "the stage finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_killed_runs_resume_to_the_uninterrupted_dataset(tmp_path: Path, uninterrupted: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    # Killed while generating, then again while rescoring.
    _run_until("*/generated/chunk-00001.json", work, out)
    _run_until("*/rescored/chunk-00001.json", work, out)
    (fingerprint_dir,) = work.iterdir()
    assert not (fingerprint_dir / "manifest.json").exists()
    assert len(list((fingerprint_dir / "generated").glob("chunk-*.json"))) == 6

    _run(f"rewrite.work_dir={work}", f"output_dir={out}")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunks"]["computed_by_this_run"] == 0
    assert _rows(out) == _rows(uninterrupted)
    # keep=first: one record per problem, none lost or duplicated, in problem order.
    assert [row["id"] for row in _rows(out)] == [f"gsm8k_train/{i}" for i in range(12)]


def test_shards_merge_to_the_unsharded_dataset(tmp_path: Path, uninterrupted: Path) -> None:
    work = tmp_path / "work"
    sharded = ["rewrite.num_shards=3", f"rewrite.work_dir={work}"]
    first = _run(*sharded, "rewrite.shard_index=1", f"output_dir={tmp_path / 'shard1'}")
    assert "shard 1 of 3 done; 2/6 chunks" in first.stdout

    early = run_app_subprocess("rewrite", *STAGE, *sharded, "rewrite.merge_only=true", f"output_dir={tmp_path / 'm'}")
    assert early.returncode == 2
    assert "4 of 6 chunks are not finished (shards [0, 2] of 3" in early.stderr

    # The multi-job path: a Hydra multirun over the remaining shard indices through the submitit launcher.
    sweep = run_app_subprocess(
        "rewrite",
        "-m",
        *STAGE,
        *sharded,
        "rewrite.shard_index=0,2",
        "hydra/launcher=local",
        f"output_dir={tmp_path}/sw",
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    _run(*sharded, "rewrite.merge_only=true", f"output_dir={tmp_path / 'merged'}")
    assert _rows(tmp_path / "merged") == _rows(uninterrupted)
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["problems"] == 12 and manifest["chunks"] == {"total": 6, "computed_by_this_run": 0, "size": 2}


def _rewrite_in_process(output_dir: Path, *overrides: str) -> None:
    """The app's job in this process (composed like the app): the stage without 15 s of imports per run."""
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("rewrite", overrides=[*STAGE, *overrides, f"output_dir={output_dir}"])
    rewrite(to_typed(cfg, MindgapConfig), output_dir)


def test_finished_work_is_reused_and_a_changed_input_recomputes(
    tmp_path: Path, uninterrupted: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    _rewrite_in_process(tmp_path / "a", f"rewrite.work_dir={work}")
    # Cut-off responses are counted per stage, in the manifest and next to the progress bar's acceptance.
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert all("rejected_truncated" in stats for stats in manifest["stages"].values())
    assert "truncated=" in capfd.readouterr().err
    _rewrite_in_process(tmp_path / "b", f"rewrite.work_dir={work}")
    assert "rewrite:" not in capfd.readouterr().err  # no progress bar: nothing was generated
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a") == _rows(uninterrupted)
    _rewrite_in_process(tmp_path / "c", f"rewrite.work_dir={work}", "rewrite.self_sampling.max_tokens=40")
    assert len(list(work.iterdir())) == 2
