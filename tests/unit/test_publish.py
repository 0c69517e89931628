"""Crash-safe publishing and advisory locks: stale markers, dead writers' staging paths, stale locks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mindgap import publish
from mindgap.locks import Lock, holder


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped, so no process has it for now)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_names_are_unique_per_writer_and_recognised_as_such(tmp_path: Path) -> None:
    first, second = publish.staging_path(tmp_path / "x.json"), publish.staging_path(tmp_path / "x.json")
    assert first != second
    assert publish.HOST in first.name and str(os.getpid()) in first.name


def test_clean_stale_staging_removes_dead_writers_paths_only(tmp_path: Path) -> None:
    dead = tmp_path / f".dataset~{publish.HOST}~{_dead_pid()}~ab12cd34.staging"
    dead.mkdir()
    (dead / "part").write_text("x")
    alive = publish.staging_path(tmp_path / "dataset")
    alive.mkdir()
    elsewhere = tmp_path / ".dataset~another-host~1~ab12cd34.staging"
    elsewhere.mkdir()
    old = tmp_path / ".x.json~another-host~2~ab12cd34.staging"
    old.write_text("{")
    os.utime(old, (0, 0))
    (tmp_path / "dataset").mkdir()
    assert publish.clean_stale_staging(tmp_path) == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["dataset", alive.name, elsewhere.name])


def test_replace_dir_swaps_a_whole_directory(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "old").write_text("old")
    with publish.staged_dir(target) as staging:
        (staging / "new").write_text("new")
    assert [path.name for path in target.iterdir()] == ["new"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dataset"]


def test_a_failed_staged_dir_leaves_the_old_directory(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError), publish.staged_dir(target) as staging:
        (staging / "half").write_text("x")
        raise RuntimeError("killed")
    assert [path.name for path in target.iterdir()] == ["old"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dataset"]


def test_republishing_removes_the_old_manifest_before_it_replaces_the_dataset(tmp_path: Path) -> None:
    """A kill while the new dataset is copied must not leave the old manifest beside a mixed dataset."""
    from mindgap.rewriting.app import _publish
    from mindgap.rewriting.run import StageResult

    output = tmp_path / "out"
    (output / "dataset").mkdir(parents=True)
    (output / "dataset" / "data.arrow").write_text("old")
    (output / "manifest.json").write_text(json.dumps({"fingerprint": "old"}))
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "data.arrow").write_text("new")
    seen = []

    def observe(path: Path) -> None:
        seen.append((path.name, (output / "manifest.json").exists()))

    real = publish.commit_point
    try:
        publish.commit_point = observe
        _publish(StageResult(merged, {"fingerprint": "new"}, reused=False), output)
    finally:
        publish.commit_point = real
    assert seen == [("manifest.json", True), ("dataset", False), ("manifest.json", False)]
    assert json.loads((output / "manifest.json").read_text()) == {"fingerprint": "new"}
    assert (output / "dataset" / "data.arrow").read_text() == "new"


@pytest.mark.parametrize("kind", ["flock", "file"])
def test_a_held_lock_is_refused_to_others_and_names_its_holder(tmp_path: Path, kind: str) -> None:
    first, second = Lock(tmp_path / "x.lock", kind), Lock(tmp_path / "x.lock", kind)
    assert first.acquire(blocking=False)
    assert not second.acquire(blocking=False)
    assert holder(tmp_path / "x.lock")["pid"] == os.getpid()
    first.release()
    assert second.acquire(blocking=False)
    second.release()


def test_a_file_lock_of_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"host": publish.HOST, "pid": _dead_pid(), "token": "t"}))
    lock = Lock(path, "file")
    assert not lock.acquire(blocking=False)  # the stale lock is broken on this attempt
    assert lock.acquire(blocking=False)
    lock.release()
    assert not path.exists()


def test_a_file_lock_whose_heartbeat_stopped_is_stale_even_from_another_host(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"host": "another-host", "pid": 1, "token": "t"}))
    lock = Lock(path, "file", stale_after_s=60)
    assert not lock.acquire(blocking=False)
    assert path.exists()  # fresh: another host's live holder
    os.utime(path, (0, 0))
    assert not lock.acquire(blocking=False)  # broken on this attempt
    assert lock.acquire(blocking=False)
    lock.release()


def test_the_lock_kind_is_chosen_in_the_config() -> None:
    from mindgap.errors import ConfigError
    from mindgap.rewriting.config import RewriteConfig

    assert RewriteConfig(work_dir="w", lock="file").lock == "file"
    with pytest.raises(ConfigError, match=r"rewrite\.lock"):
        RewriteConfig(work_dir="w", lock="nfs")
