"""The pool of math-verify worker processes: per-item wall-clock limits, stuck workers killed and replaced.

A worker imports only this module and math-verify; the batched ``Verifier`` (``verifier``) feeds it.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Outcomes a worker reports for one task.
FALSE, TRUE, TIMEOUT, GOLD_TIMEOUT, ERROR = 0, 1, 2, 3, 4
# Task kinds: compare a prediction with a gold answer, or only check that the gold parses.
COMPARE, GOLD = 0, 1
_READY = -1
# Tasks per message, and bytes per message (with at most two messages in a pipe, a send never blocks).
_CHUNK_ITEMS = 16
_CHUNK_BYTES = 16_384
# Seconds a fresh worker may take to import math-verify and answer a warm-up check.
_STARTUP_TIMEOUT_S = 120.0


# Workers are fresh interpreters started with subprocess, talking over two pipes each.
# * Not fork: the parent may hold torch/CUDA/vLLM threads and locks, and a forked child can
#   inherit a lock held by another thread and deadlock (Python 3.12 warns about exactly this).
# * Not multiprocessing's spawn/forkserver either, which are also fresh interpreters but
#   re-import the parent's __main__ in every worker: a Hydra app run with `python -m` would
#   import torch and transformers again in each one (seconds per restart), and a script or
#   notebook without an `if __name__ == "__main__"` guard would fail. forkserver also shares one
#   process-wide server and preload list with the rest of the program.
# A worker imports only this module and math-verify (about 0.7 s), so starting or replacing one
# is cheap and does not depend on who the parent is; subprocess also works inside daemonic
# processes, where multiprocessing may not start children. concurrent.futures cannot be used:
# it has no way to stop a task that hangs.


@dataclass
class _Worker:
    process: subprocess.Popen
    tasks: Connection  # parent -> worker
    results: Connection  # worker -> parent
    started: float
    ready: bool = False
    last_progress: float = 0.0
    # task indices sent and not answered yet, in order; sizes of the messages they were sent in
    pending: deque[int] = field(default_factory=deque)
    chunks: deque[int] = field(default_factory=deque)


def _stop_workers(workers: list[_Worker], owner_pid: int) -> None:
    """Kill and reap the workers: they hold nothing to flush, and SIGKILL does not wait for the
    interpreter's slow teardown (sympy), nor for a check that is hung."""
    if os.getpid() != owner_pid:
        return
    for worker in workers:
        worker.tasks.close()
        worker.process.kill()
    for worker in workers:
        worker.process.wait()
        worker.results.close()
    workers.clear()


class Pool:
    def __init__(self, size: int, soft_timeout: bool, memory_limit_mb: int | None) -> None:
        self.size = size
        self.soft_timeout = soft_timeout
        self.memory_limit_mb = memory_limit_mb
        self.workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop_workers, self.workers, os.getpid())

    def close(self) -> None:
        self._finalizer()

    def abandon(self) -> None:
        self._finalizer.detach()
        for worker in self.workers:
            worker.tasks.close()
            worker.results.close()
        self.workers.clear()

    def _spawn(self) -> _Worker:
        task_read, task_write = os.pipe()
        result_read, result_write = os.pipe()
        # Parent death kills the worker (PR_SET_PDEATHSIG) only when the parent thread is the main
        # thread: the signal follows the thread that started the child, not the process.
        die_with_parent = threading.current_thread() is threading.main_thread()
        argv = [
            sys.executable,
            "-c",
            "from mindgap.verification.pool import worker_main; worker_main()",
            str(task_read),
            str(result_write),
            str(os.getpid()),
            "1" if die_with_parent else "0",
            "1" if self.soft_timeout else "0",
            str(self.memory_limit_mb or 0),
        ]
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            process = subprocess.Popen(argv, pass_fds=(task_read, result_write), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(task_read)
            os.close(result_write)
        worker = _Worker(
            process=process,
            tasks=Connection(task_write, readable=False),
            results=Connection(result_read, writable=False),
            started=time.monotonic(),
        )
        self.workers.append(worker)
        return worker

    def _kill(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.wait()
        worker.tasks.close()
        worker.results.close()
        self.workers.remove(worker)

    def run(
        self, tasks: list[tuple[int, str, str]], timeout_s: float, grace_s: float, slow_golds: set[str]
    ) -> tuple[list[int], int]:
        """Outcomes of the tasks (kind, gold, predicted) in order, and the number of workers replaced.

        Each worker gets messages of a few tasks (at most two messages in flight, so that a send
        never blocks on a full pipe) and answers one result per task. A worker's clock restarts at
        each answer, so the running task is the head of its pending list and is the one failed
        when the worker hangs past ``timeout_s + grace_s`` or dies; the rest are sent again.
        """
        self._outcomes: list[int | None] = [None] * len(tasks)
        self._queue: deque[int] = deque(range(len(tasks)))
        self._left = len(tasks)
        self._restarts = 0
        limit = timeout_s + grace_s
        while self._left:
            # Keep the pool at strength (no more workers than there is work for).
            while len(self.workers) < min(self.size, self._left):
                self._spawn()
            for worker in list(self.workers):
                self._feed(worker, tasks, timeout_s, slow_golds)
            if not self._left:
                break
            busy = [worker for worker in self.workers if worker.pending or not worker.ready]
            if not busy:  # every worker was found dead while feeding: start new ones
                continue
            deadline = min(self._deadline(worker, limit) for worker in busy)
            readable = wait([worker.results for worker in busy], timeout=max(0.0, deadline - time.monotonic()))
            for worker in busy:
                if worker.results in readable:
                    self._collect(worker, tasks, slow_golds)
                if worker in self.workers and time.monotonic() >= self._deadline(worker, limit):
                    if not worker.ready:
                        self._kill(worker)
                        raise RuntimeError(f"a math-verify worker did not start within {_STARTUP_TIMEOUT_S:g}s")
                    logger.warning("a math-verify check ran past %.3gs; killing its worker", limit)
                    self._replace(worker, TIMEOUT)
        outcomes = [outcome if outcome is not None else ERROR for outcome in self._outcomes]
        return outcomes, self._restarts

    @staticmethod
    def _deadline(worker: _Worker, limit: float) -> float:
        if not worker.ready:
            return worker.started + _STARTUP_TIMEOUT_S
        return worker.last_progress + limit if worker.pending else float("inf")

    def _feed(self, worker: _Worker, tasks: list[tuple[int, str, str]], timeout_s: float, slow_golds: set[str]) -> None:
        queue = self._queue
        while queue and len(worker.chunks) < 2:
            chunk: list[tuple[int, int, str, str]] = []
            size = 0
            per_message = max(1, min(_CHUNK_ITEMS, len(queue) // (2 * len(self.workers))))
            while queue and len(chunk) < per_message:
                kind, gold, predicted = tasks[queue[0]]
                if gold in slow_golds:  # its parse already ran past the limit
                    self._resolve(queue.popleft(), GOLD_TIMEOUT)
                    continue
                if chunk and size + len(gold) + len(predicted) > _CHUNK_BYTES:
                    break
                chunk.append((queue.popleft(), kind, gold, predicted))
                size += len(gold) + len(predicted)
            if not chunk:
                return
            try:
                worker.tasks.send_bytes(pickle.dumps((timeout_s, chunk)))
            except OSError:  # the worker is gone: send the chunk elsewhere
                queue.extendleft(reversed([task[0] for task in chunk]))
                self._dead(worker)
                return
            if not worker.pending:
                worker.last_progress = time.monotonic()
            worker.pending.extend(task[0] for task in chunk)
            worker.chunks.append(len(chunk))

    def _collect(self, worker: _Worker, tasks: list[tuple[int, str, str]], slow_golds: set[str]) -> None:
        try:
            while worker.results.poll():
                task_index, outcome = pickle.loads(worker.results.recv_bytes())
                worker.last_progress = time.monotonic()
                if task_index == _READY:
                    worker.ready = True
                    continue
                worker.pending.popleft()
                worker.chunks[0] -= 1
                if worker.chunks[0] == 0:
                    worker.chunks.popleft()
                if outcome == GOLD_TIMEOUT:
                    slow_golds.add(tasks[task_index][1])
                self._resolve(task_index, outcome)
        except (EOFError, OSError):
            self._dead(worker)

    def _resolve(self, index: int, outcome: int) -> None:
        self._outcomes[index] = outcome
        self._left -= 1

    def _dead(self, worker: _Worker) -> None:
        """The worker exited (segfault, out of memory, killed from outside): its current task scores wrong."""
        code = worker.process.wait()
        if not worker.ready:
            self._kill(worker)
            raise RuntimeError(
                f"a math-verify worker exited with code {code} while starting "
                f"(is math-verify installed for {sys.executable}?)"
            )
        logger.warning("a math-verify worker died (exit code %s); replacing it", code)
        self._replace(worker, ERROR)

    def _replace(self, worker: _Worker, outcome: int) -> None:
        """Kill the worker (a new one is started on the next round), fail its current task, requeue the rest."""
        pending = list(worker.pending)
        self._kill(worker)
        self._restarts += 1
        if pending:
            self._resolve(pending[0], outcome)
            self._queue.extendleft(reversed(pending[1:]))


# --------------------------------------------------------------------------- the worker


class _ItemTimeout(BaseException):
    """Raised by SIGALRM inside a check; a BaseException so that math-verify's handlers let it through."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _ItemTimeout


def _limit_worker(parent_pid: int, die_with_parent: bool, memory_limit_mb: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if die_with_parent and sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(0)
    if memory_limit_mb > 0:
        try:
            import resource

            limit = memory_limit_mb * 1024 * 1024
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        except (ImportError, ValueError, OSError):
            pass


class _Checker:
    """math-verify with parse caches; golds and predictions parsed once per distinct string."""

    def __init__(self) -> None:
        from functools import lru_cache

        from math_verify import parse, verify
        from sympy import Basic, MatrixBase

        def parse_latex(text: str) -> list:
            return parse(f"${text}$", parsing_timeout=None)

        self._verify = verify
        self._parsed_types = (Basic, MatrixBase)
        self._parse_gold = lru_cache(maxsize=4096)(parse_latex)
        self._parse_predicted = lru_cache(maxsize=16384)(parse_latex)

    def check(self, kind: int, gold: str, predicted: str, timeout_s: float, soft_timeout: bool) -> int:
        stage = GOLD_TIMEOUT
        try:
            if soft_timeout:
                signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                gold_parsed = self._parse_gold(gold)
                if kind == GOLD:
                    return TRUE if any(isinstance(item, self._parsed_types) for item in gold_parsed) else FALSE
                stage = TIMEOUT
                predicted_parsed = self._parse_predicted(predicted)
                return TRUE if self._verify(gold_parsed, predicted_parsed, timeout_seconds=None) else FALSE
            finally:
                if soft_timeout:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _ItemTimeout:
            return stage
        except Exception:  # math-verify catches its own errors; anything else scores wrong
            return ERROR


def worker_main() -> None:
    """Entry point of a worker process: read task messages, answer one result per task."""
    task_fd, result_fd, parent_pid, die_with_parent, soft_timeout, memory_limit_mb = map(int, sys.argv[1:7])
    tasks = Connection(task_fd, writable=False)
    results = Connection(result_fd, readable=False)
    _limit_worker(parent_pid, bool(die_with_parent), memory_limit_mb)
    # The worker handles timeouts itself; math-verify's notes about that (and about each timeout) are noise.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    signal.signal(signal.SIGALRM, _on_alarm)
    checker = _Checker()
    # Warm up the parser and sympy's simplification (lazy imports, caches: ~0.4 s) before any clock runs.
    checker.check(COMPARE, "\\frac{1}{2}", "0.5", 60.0, bool(soft_timeout))
    checker.check(COMPARE, "(x+1)^2", "x^2+2x+1", 60.0, bool(soft_timeout))
    results.send_bytes(pickle.dumps((_READY, os.getpid())))
    while True:
        try:
            timeout_s, chunk = pickle.loads(tasks.recv_bytes())
        except (EOFError, OSError):
            return
        for task_index, kind, gold, predicted in chunk:
            outcome = checker.check(kind, gold, predicted, timeout_s, bool(soft_timeout))
            try:
                results.send_bytes(pickle.dumps((task_index, outcome)))
            except OSError:
                return
