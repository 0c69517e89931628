"""Crash-safe commits of results: a file or directory appears complete or not at all.

Every result is written under a staging name unique to its writer (host, pid and a random
token, so that jobs on different nodes or containers never collide), flushed to disk with
fsync, then renamed into place; the directory holding it is fsynced so the rename survives a
power loss. A result guarded by a "done" marker has its stale marker removed before its data
is replaced, and the marker is written last. Staging paths left by writers that died are
removed by :func:`clean_stale_staging`.

Each rename and marker removal is a *commit point*. For fault-injection tests,
``MINDGAP_KILL_AT_COMMIT=N`` SIGKILLs the process just before its N-th commit point (the
staged data written, the rename not yet done), and ``MINDGAP_COMMIT_TRACE=FILE`` appends one
line per commit point (host, pid, count, path) to FILE.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KILL_AT_COMMIT = "MINDGAP_KILL_AT_COMMIT"
COMMIT_TRACE = "MINDGAP_COMMIT_TRACE"
# A staging path older than this is abandoned whoever wrote it (a writer on another host, whose
# liveness cannot be checked from here); no single write of a result takes this long.
STALE_STAGING_AGE_S = 24 * 3600
HOST = socket.gethostname()
# ".<name>~<host>~<pid>~<token>.staging"; host names hold no "~".
_STAGING = re.compile(r"^\.(?P<name>.+)~(?P<host>[^~]+)~(?P<pid>\d+)~(?P<token>[0-9a-f]+)\.staging$")

# Commit points of this process: (pid, count), so that a forked child counts from zero.
_commits = (os.getpid(), 0)


def commit_point(path: Path) -> None:
    """Count one commit of ``path``; the fault-injection hook kills the process at the chosen one."""
    global _commits
    pid = os.getpid()
    count = (_commits[1] if _commits[0] == pid else 0) + 1
    _commits = (pid, count)
    trace = os.environ.get(COMMIT_TRACE)
    if trace:
        with open(trace, "a") as handle:
            handle.write(f"{HOST} {pid} {count} {path}\n")
    if os.environ.get(KILL_AT_COMMIT) == str(count):
        os.kill(pid, signal.SIGKILL)


def staging_path(target: Path) -> Path:
    """A name beside ``target`` that no other writer, on any host, uses."""
    return target.with_name(f".{target.name}~{HOST}~{os.getpid()}~{secrets.token_hex(4)}.staging")


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(directory) / name)
        _fsync_path(Path(directory))


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(path)
    try:
        with open(staging, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        commit_point(path)
        os.replace(staging, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
    _fsync_path(path.parent)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: Any, indent: int | None = None) -> None:
    """Strict JSON (a NaN or an infinity raises ValueError): what every committed chunk and manifest is."""
    write_text(path, json.dumps(payload, indent=indent, allow_nan=False))


def remove(path: Path) -> None:
    """Remove a (stale) marker durably before the data it vouches for is replaced."""
    if not path.exists():
        return
    commit_point(path)
    path.unlink(missing_ok=True)
    _fsync_path(path.parent)


def replace_dir(staging: Path, target: Path) -> None:
    """Move the finished directory ``staging`` to ``target``, replacing what is there.

    A directory cannot be renamed over a non-empty one, so an existing ``target`` is first
    renamed aside: a crash in between leaves no ``target`` (never a mixed one), and what was
    set aside is a staging path that :func:`clean_stale_staging` removes.
    """
    fsync_tree(staging)
    commit_point(target)
    if target.exists():
        aside = staging_path(target)
        os.replace(target, aside)
        os.replace(staging, target)
        _fsync_path(target.parent)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, target)
        _fsync_path(target.parent)


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh staging directory for ``target``, moved into place when the block ends without an error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(target)
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def writer_is_dead(host: str, pid: int, modified: float, max_age_s: float = STALE_STAGING_AGE_S) -> bool:
    """Dead: a process of this host that no longer exists, or silent for longer than ``max_age_s``."""
    if time.time() - modified > max_age_s:
        return True
    if host != HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def clean_stale_staging(directory: Path) -> int:
    """Remove the staging paths in ``directory`` whose writers are dead; returns how many."""
    removed = 0
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _STAGING.match(entry.name)
        if match is None:
            continue
        try:
            modified = entry.lstat().st_mtime
        except FileNotFoundError:  # removed meanwhile
            continue
        if not writer_is_dead(match["host"], int(match["pid"]), modified):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed
