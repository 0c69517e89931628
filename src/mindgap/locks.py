"""Advisory locks that let jobs on one shared file system split work without computing it twice.

Two kinds, chosen with ``rewrite.lock``:

- ``flock``: ``fcntl.flock`` on the lock file. The kernel (or the file system's lock manager)
  releases it when the holder dies, so it is never stale. Needs a file system whose flock is
  coherent across nodes (local disks, NFSv4, Lustre mounted with ``-o flock``, GPFS).
- ``file``: the lock file itself, created with O_CREAT|O_EXCL (atomic on every POSIX file
  system, NFS included). The holder refreshes its modification time every ``stale_after_s / 10``;
  a lock is stale, and broken, when its holder is a dead process of this host or its heartbeat is
  older than ``stale_after_s``.

Either way the lock file records the holder's host and pid, for the messages of jobs that wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from mindgap.publish import HOST, staging_path, writer_is_dead

LOCK_KINDS = ("flock", "file")


class Lock:
    """One advisory lock on ``path``; ``acquire(blocking=False)`` tells whether it was taken."""

    def __init__(self, path: Path, kind: str = "flock", stale_after_s: float = 600.0, poll_s: float = 0.5):
        if kind not in LOCK_KINDS:
            raise ValueError(f"lock kind {kind!r}: expected one of {LOCK_KINDS}")
        self.path = path
        self.kind = kind
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self._descriptor: int | None = None
        self._token = ""
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()

    def acquire(self, blocking: bool = True) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not (self._try_flock() if self.kind == "flock" else self._try_file()):
            if not blocking:
                return False
            time.sleep(self.poll_s)
        return True

    def release(self) -> None:
        if self._descriptor is None:
            return
        if self.kind == "flock":
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        else:
            self._stop.set()
            assert self._heartbeat is not None
            self._heartbeat.join()
            # Only this holder's own file: a lock broken as stale meanwhile belongs to another job now.
            if (holder(self.path) or {}).get("token") == self._token:
                self.path.unlink(missing_ok=True)
        os.close(self._descriptor)
        self._descriptor = None

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *_: Any) -> None:
        self.release()

    def _holder_record(self) -> bytes:
        self._token = secrets.token_hex(8)
        return json.dumps({"host": HOST, "pid": os.getpid(), "token": self._token, "since": time.time()}).encode()

    def _try_flock(self) -> bool:
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, self._holder_record(), 0)
        self._descriptor = descriptor
        return True

    def _try_file(self) -> bool:
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._break_if_stale()
            return False
        os.write(descriptor, self._holder_record())
        os.fsync(descriptor)
        self._descriptor = descriptor
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._heartbeat.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_after_s / 10):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def _break_if_stale(self) -> None:
        try:
            modified = self.path.stat().st_mtime
        except FileNotFoundError:
            return
        found = holder(self.path)
        if found is None:
            # Created but not yet written by its holder, or written by a holder killed in between.
            if time.time() - modified > self.stale_after_s:
                self.path.unlink(missing_ok=True)
            return
        if not writer_is_dead(found["host"], int(found["pid"]), modified, self.stale_after_s):
            return
        # Renamed aside first, so that of several jobs breaking it at once only one succeeds; if what
        # was moved is no longer the stale holder's (it was broken and retaken meanwhile), put it back.
        aside = staging_path(self.path)
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if (holder(aside) or {}).get("token") != found.get("token"):
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)


def holder(path: Path) -> dict[str, Any] | None:
    """Who holds (or last held, for ``flock``) the lock at ``path``: host, pid, token, since."""
    try:
        record = json.loads(path.read_bytes() or b"null")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and {"host", "pid"} <= record.keys() else None
