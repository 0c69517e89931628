"""Final-answer extraction and verification against a gold answer.

Two paths decide a verdict:

* the **fast path**, in process: extract the final answer (last non-empty ``\\boxed{}``, GSM8K
  ``####``, "the answer is ..."; a multiple-choice answer with its value, "(C) 12", compares by its
  letter against a letter gold and by its value otherwise), then compare normalised strings, then
  exact rationals when both sides are plain numbers (``1,000``, ``\\$12.50``, ``\\frac{1}{2}``,
  ``5 \\text{ cm}``). Most GSM8K-style verdicts end here, at tens of thousands per second;
* the **slow path**, only when the fast path is inconclusive: math-verify's ``parse`` + ``verify``
  in a pool of worker processes with a per-item wall-clock limit. A pathological answer (a tower
  of exponents, anything that makes sympy spin) times out, is scored wrong and counted; a worker
  stuck in C code, where no signal can interrupt it, is killed and replaced.

Nothing here evaluates or executes model output: answers are compared as normalised strings, as
exact rationals parsed by ``fractions.Fraction``, and otherwise by math-verify's own LaTeX parser,
which runs in the worker processes only.

One module past the usual size: extraction, the fast path and the worker pool are one contract
(what counts as correct, decided the same way in process and in the workers), and the workers
import only this file.

Use :class:`Verifier` for batches (it owns the pool; use it as a context manager) and
:func:`is_correct` for a single check (it shares one lazily created module-level verifier).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from itertools import accumulate, islice
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mindgap.config import VerifierConfig

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- extraction

# Everything after the marker to the end of its line (stripped by the caller). Not ``(.+?)\s*$``: the lazy group
# retries the trailing \s* at every step, quadratic on a long run of spaces.
_GSM8K = re.compile(r"####\s*(\S.*)")
_THE_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*(.+?)(?:\.\s|\.?$)", re.IGNORECASE | re.MULTILINE)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
# A unit written as text after a number: "5 \text{ cm}", "12 \mbox{dollars}".
_UNIT_SUFFIX = re.compile(r"^(.*?\d)\s*(?:\\[,;:! ]\s*)*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}\s*$")
_DEGREES = re.compile(r"\^\s*(?:\\circ|\{\s*\\circ\s*\})$")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_FRAC = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|\\(?:left|right|displaystyle)(?![A-Za-z])")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]")
_CHOICE = re.compile(r"\(([a-z])\)")
_EMPTY_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{\s*\}")
# A multiple-choice answer written with its value: "(C) 12", "\textbf{(C)}\ 12" (wrappers already removed).
# (No \s* before the group: it would split a run of spaces with the group's \s, quadratic when the match fails.)
_CHOICE_WITH_VALUE = re.compile(r"\(([A-Za-z])\)(?:\\[,;:! ]|\\q?quad(?![A-Za-z])|~|\s)*(\S.*)", re.DOTALL)
# Plain words/numbers: what a gold answer may be without math-verify having to parse it.
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9 .,:;'()\-+/%]*[A-Za-z0-9][A-Za-z0-9 .,:;'()\-+/%]*")

# A box command and its argument: an opening brace, or a bare token (``\\boxed 5``).
# (The bare token is only looked at, not consumed: "\\boxed \\boxed 5" holds two boxes.)
_BOX_ARGUMENT = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])[ \t]*(?:(\{)|(?=([^\s${}]+)))?")
_BRACE = re.compile(r"[{}]")
_BRACE_STEP = {"{": 1, "}": -1}

# Answers longer than this never go to math-verify, and are not normalised either: a verdict compares them as
# they are (so they are wrong unless equal to the gold text), and the verifier counts them (``long_answers``).
# The cap keeps every pattern that normalisation applies (nested wrappers unwrapped one level per pass) on a
# bounded text, whatever a looping model writes.
MAX_ANSWER_CHARS = 2000


def _closing_brace(text: str, start: int, limit: int) -> int | None:
    """Position of the ``}`` that balances the ``{`` at ``start``, if it comes before ``limit``.

    Plain string searches decide the common cases (no closing brace at all; no brace inside); otherwise the
    depth after each brace is computed by C loops (findall, map, accumulate, index), not per brace in Python.
    """
    first_close = text.find("}", start, limit)
    if first_close < 0:
        return None
    if text.find("{", start + 1, first_close) < 0:
        return first_close
    depths = list(accumulate(map(_BRACE_STEP.__getitem__, _BRACE.findall(text, start, limit))))
    try:
        closing = depths.index(0)
    except ValueError:
        return None
    return next(islice(_BRACE.finditer(text, start, limit), closing, None)).start()


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` that has any (braces balanced; ``\\boxed 5`` also counts), or None.

    An empty box is no answer: models write "#### 7 ... The answer is \\boxed{}." at times, and the
    earlier real answer must not lose to it.

    Linear in the text: boxes are tried from the last, and a box still open where a later unclosed box
    begins never closes (every brace of the later one stays open too), so each search for a closing brace
    stops at the previous unclosed box and no stretch of text is searched twice.
    """
    limit = len(text)
    for box in reversed(list(_BOX_ARGUMENT.finditer(text))):
        brace, bare = box.groups()
        if brace is not None:
            end = _closing_brace(text, box.start(1), limit)
            if end is None:
                limit = box.start(1)
                continue
            content = text[box.end(1) : end].strip()
        else:
            content = bare.rstrip(".") if bare is not None else None
        if content:
            return content
    return None


def _is_empty_box(answer: str) -> bool:
    return not _EMPTY_BOX.sub("", answer).strip(" \t$.")


def extract_answer(response: str) -> str | None:
    """The response's final answer: last non-empty boxed, else GSM8K ``####``, else "the answer is ..."."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    hashes = [found for found in map(str.strip, _GSM8K.findall(response)) if not _is_empty_box(found)]
    if hashes:
        return hashes[-1]
    stated = [found for found in _THE_ANSWER_IS.findall(response) if not _is_empty_box(found)]
    if stated:
        return stated[-1].strip().strip("*").strip().rstrip(".")
    return None


def _strip_dollars(answer: str) -> str:
    text = answer.strip()
    while len(text) >= 2 and text.startswith("$") and text.endswith("$") and not text.endswith("\\$"):
        text = text[1:-1].strip()
    return text


def normalize_answer(answer: str) -> str:
    """Canonical text for exact comparison: no $, spacing, thousands commas or \\text wrappers.

    An answer longer than ``MAX_ANSWER_CHARS`` stays as it is (stripped).
    """
    if len(answer) > MAX_ANSWER_CHARS:
        return answer.strip()
    text = _without_wrappers(_strip_dollars(answer))
    text = _SPACING.sub("", text).replace("\\$", "").replace("$", "").replace("{,}", ",")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\u2212", "-")
    text = _THOUSANDS.sub("", text)
    text = re.sub(r"\s+", "", text).rstrip(".")
    if not _LATEX_COMMAND.search(text):  # case matters in LaTeX (\Delta, \delta), not in words
        text = text.lower()
    choice = _CHOICE.fullmatch(text)
    return choice.group(1) if choice else text


def as_number(answer: str) -> Fraction | None:
    """The answer as an exact rational when it is a plain number (``1,000``, ``-3.5``, ``2/3``, ``5 \\text{cm}``)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return None
    text = _strip_dollars(answer)
    unit = _UNIT_SUFFIX.match(text)
    if unit:
        text = unit.group(1)
    text = _DEGREES.sub("", normalize_answer(text))
    frac = _FRAC.fullmatch(text)
    if frac:
        numerator = frac.group(2)
        if frac.group(1):
            numerator = numerator[1:] if numerator.startswith("-") else "-" + numerator
        text = f"{numerator}/{frac.group(3)}"
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _is_plain_text(answer: str) -> bool:
    return bool(_PLAIN_TEXT.fullmatch(_unwrapped(answer)))


def _unwrapped(answer: str) -> str:
    if len(answer) > MAX_ANSWER_CHARS:
        return answer.strip()
    return _without_wrappers(_strip_dollars(answer)).strip()


def _without_wrappers(text: str) -> str:
    """``text`` with ``\\text{}``-like wrappers removed, nested ones too (one level a pass: keep texts short)."""
    previous = None
    while previous != text:  # nested wrappers: \text{\textbf{B}}
        previous, text = text, _TEXT_WRAPPER.sub(r"\1", text)
    return text


def comparand(predicted: str, gold: str) -> str:
    """The part of ``predicted`` to compare with ``gold``.

    A multiple-choice answer written with its value ("(C) 12", ``\\textbf{(C)}\\ 12``) is compared by
    its letter against a letter gold and by its value against any other gold; anything else as it is.
    """
    choice = _CHOICE_WITH_VALUE.fullmatch(_unwrapped(predicted))
    if choice is None:
        return predicted
    letter, value = choice.group(1), choice.group(2).strip().rstrip(".")
    return letter if re.fullmatch(r"[a-z]", normalize_answer(gold)) else value


def _fast_verdict(predicted: str, gold: str) -> bool | None:
    """True/False when strings or exact numbers decide, None when math-verify has to."""
    if normalize_answer(predicted) == normalize_answer(gold):
        return True
    predicted_number, gold_number = as_number(predicted), as_number(gold)
    if predicted_number is not None and gold_number is not None:
        return predicted_number == gold_number
    if len(predicted) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    return None


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class Verdict:
    correct: bool
    # the extracted final answer of the response, None when there is none
    predicted: str | None
    # True when math-verify ran past the wall-clock limit (then correct is False)
    timed_out: bool = False


@dataclass
class VerifierCounters:
    """Running counts since the verifier was built, for manifests."""

    # verdicts returned
    verdicts: int = 0
    # decided in process: no answer, equal strings, exact numbers
    fast_path: int = 0
    # decided by math-verify (deduplicated pairs and cached pairs included)
    math_verify: int = 0
    # math-verify ran past the wall-clock limit (scored wrong)
    timeouts: int = 0
    # worker processes killed (hung past the limit) or found dead, and replaced
    restarts: int = 0
    # extracted answers longer than MAX_ANSWER_CHARS: compared as they are, not normalised (so scored wrong)
    long_answers: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# Outcomes a worker reports for one task.
_FALSE, _TRUE, _TIMEOUT, _GOLD_TIMEOUT, _ERROR = 0, 1, 2, 3, 4
# Task kinds: compare a prediction with a gold answer, or only check that the gold parses.
_COMPARE, _GOLD = 0, 1
_READY = -1
# Tasks per message, and bytes per message (with at most two messages in a pipe, a send never blocks).
_CHUNK_ITEMS = 16
_CHUNK_BYTES = 16_384
# Seconds a fresh worker may take to import math-verify and answer a warm-up check.
_STARTUP_TIMEOUT_S = 120.0
# Verdicts of (gold, prediction) pairs remembered across batches.
_CACHE_SIZE = 65_536


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Verifier:
    """Batched verification: fast path in process, math-verify in a pool of killable workers.

    ``workers`` is the number of math-verify processes (None: every available core); they are
    started on the first batch that needs one. ``timeout_s`` is the wall-clock limit of one
    math-verify check (gold parse + prediction parse + comparison). A worker first interrupts a
    slow check itself with SIGALRM (``soft_timeout``), so it survives; if it is still busy
    ``kill_grace_s`` later (stuck in C code, where signals wait), it is killed with SIGKILL and a
    fresh one takes its place. Either way the verdict is wrong with ``timed_out=True``.
    ``memory_limit_mb`` caps each worker's address space (RLIMIT_AS) so that a runaway sympy
    computation fails with MemoryError instead of eating the machine.

    Thread-safe (calls are serialised). POSIX only.
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float = 5.0,
        *,
        soft_timeout: bool = True,
        kill_grace_s: float | None = None,
        memory_limit_mb: int | None = 4096,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers={workers} must be >= 1 (or None for every core)")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0")
        self.workers = workers if workers is not None else _default_workers()
        self.timeout_s = float(timeout_s)
        self.soft_timeout = soft_timeout
        if kill_grace_s is None:
            kill_grace_s = min(2.0, max(0.25, 0.5 * self.timeout_s)) if soft_timeout else 0.0
        self.kill_grace_s = float(kill_grace_s)
        self.memory_limit_mb = memory_limit_mb
        self.counters = VerifierCounters()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._pool: _Pool | None = None
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        # Golds whose parsing alone ran past the limit: later items with them fail at once.
        self._slow_golds: set[str] = set()

    @classmethod
    def from_config(cls, config: VerifierConfig) -> Verifier:
        return cls(workers=config.workers, timeout_s=config.timeout_s)

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (the verifier can still be used: a later batch restarts them)."""
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None

    def verify(self, responses: Sequence[str], golds: Sequence[str]) -> list[Verdict]:
        """One verdict per (response, gold) pair, in order."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        with self._lock:
            self._after_fork()
            verdicts: list[Verdict | None] = [None] * len(responses)
            predictions: list[str | None] = []
            slow: dict[tuple[str, str], list[int]] = {}
            for index, (response, gold) in enumerate(zip(responses, golds, strict=True)):
                predicted = extract_answer(response or "")
                predicted = predicted if predicted and predicted.strip() else None
                predictions.append(predicted)
                self.counters.long_answers += predicted is not None and len(predicted) > MAX_ANSWER_CHARS
                gold = (gold or "").strip()
                if predicted is None or not gold:
                    verdicts[index] = Verdict(False, predicted)
                    continue
                compared = comparand(predicted, gold)
                fast = _fast_verdict(compared, gold)
                if fast is not None:
                    verdicts[index] = Verdict(fast, predicted)
                    continue
                slow.setdefault((_strip_dollars(gold), _strip_dollars(compared)), []).append(index)
            self.counters.fast_path += len(responses) - sum(len(indices) for indices in slow.values())

            # Grouped by gold: a message of tasks with one gold answer parses it once in its worker.
            pairs = sorted((pair for pair in slow if pair not in self._cache), key=lambda pair: pair[0])
            outcomes = dict(
                zip(pairs, self._run([(_COMPARE, gold, predicted) for gold, predicted in pairs]), strict=True)
            )
            for pair, indices in slow.items():
                if pair in self._cache:
                    self._cache.move_to_end(pair)
                    outcome = _TRUE if self._cache[pair] else _FALSE
                else:
                    outcome = outcomes[pair]
                    if outcome in (_TRUE, _FALSE):
                        self._remember(pair, outcome == _TRUE)
                    elif outcome == _GOLD_TIMEOUT:
                        self._slow_golds.add(pair[0])
                timed_out = outcome in (_TIMEOUT, _GOLD_TIMEOUT)
                for index in indices:
                    verdicts[index] = Verdict(outcome == _TRUE, predictions[index], timed_out)
                self.counters.math_verify += len(indices)
                self.counters.timeouts += len(indices) if timed_out else 0
            self.counters.verdicts += len(responses)
            return [verdict for verdict in verdicts if verdict is not None]

    def gold_problems(self, golds: Sequence[str]) -> list[str | None]:
        """:func:`gold_problem` for many gold answers (math-verify parses in the pool)."""
        with self._lock:
            self._after_fork()
            problems: list[str | None] = [None] * len(golds)
            to_parse: dict[str, list[int]] = {}
            for index, raw in enumerate(golds):
                gold = (raw or "").strip()
                if not _strip_dollars(gold):
                    problems[index] = "empty gold answer"
                elif len(gold) > MAX_ANSWER_CHARS:
                    problems[index] = f"gold answer longer than {MAX_ANSWER_CHARS} characters"
                elif as_number(gold) is None and not _is_plain_text(gold):
                    to_parse.setdefault(gold, []).append(index)
            outcomes = self._run([(_GOLD, gold, "") for gold in to_parse])
            for (gold, indices), outcome in zip(to_parse.items(), outcomes, strict=True):
                if outcome == _TRUE:
                    continue
                shown = gold if len(gold) <= 60 else gold[:57] + "..."
                if outcome in (_TIMEOUT, _GOLD_TIMEOUT):
                    problem = f"math-verify ran past {self.timeout_s:g}s parsing the gold answer {shown!r}"
                else:
                    problem = f"math-verify cannot parse the gold answer {shown!r} and it is not a plain number or text"
                for index in indices:
                    problems[index] = problem
            return problems

    # ----------------------------------------------------------------------- internals

    def _after_fork(self) -> None:
        """In a forked child, forget the parent's workers (they are the parent's to stop)."""
        if self._pid != os.getpid():
            if self._pool is not None:
                self._pool.abandon()
            self._pool = None
            self._pid = os.getpid()

    def _remember(self, pair: tuple[str, str], correct: bool) -> None:
        self._cache[pair] = correct
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def _run(self, tasks: list[tuple[int, str, str]]) -> list[int]:
        if not tasks:
            return []
        if self._pool is None:
            self._pool = _Pool(self.workers, self.soft_timeout, self.memory_limit_mb)
        try:
            outcomes, restarts = self._pool.run(tasks, self.timeout_s, self.kill_grace_s, self._slow_golds)
        except BaseException:
            # Interrupted (Ctrl-C) or a worker could not start: workers may still owe answers to this
            # batch, which a later batch must never read, so they all go.
            self._pool.close()
            self._pool = None
            raise
        self.counters.restarts += restarts
        return outcomes


def gold_problem(gold: str) -> str | None:
    """One-line reason why a gold answer cannot be used, None when it is fine.

    A gold answer is unusable when it is empty, or when math-verify cannot parse it (or runs past
    the time limit doing so) and it is not a plain number or plain text.
    """
    return _default_verifier().gold_problems([gold])[0]


def is_correct(response: str, gold: str) -> bool:
    """Whether the response's final answer equals the gold answer (see :class:`Verifier`)."""
    return _default_verifier().verify([response], [gold])[0].correct


_DEFAULT: Verifier | None = None
_DEFAULT_LOCK = threading.Lock()


def _default_verifier() -> Verifier:
    """The module-level verifier behind is_correct: one math-verify worker, started when first needed."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Verifier(workers=1)
        return _DEFAULT


# --------------------------------------------------------------------------- the pool
#
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


class _Pool:
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
            "from mindgap.verify import _worker_main; _worker_main()",
            str(task_read),
            str(result_write),
            str(os.getpid()),
            "1" if die_with_parent else "0",
            "1" if self.soft_timeout else "0",
            str(self.memory_limit_mb or 0),
        ]
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
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
                    self._replace(worker, _TIMEOUT)
        outcomes = [outcome if outcome is not None else _ERROR for outcome in self._outcomes]
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
                    self._resolve(queue.popleft(), _GOLD_TIMEOUT)
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
                if outcome == _GOLD_TIMEOUT:
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
        self._replace(worker, _ERROR)

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
        stage = _GOLD_TIMEOUT
        try:
            if soft_timeout:
                signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                gold_parsed = self._parse_gold(gold)
                if kind == _GOLD:
                    return _TRUE if any(isinstance(item, self._parsed_types) for item in gold_parsed) else _FALSE
                stage = _TIMEOUT
                predicted_parsed = self._parse_predicted(predicted)
                return _TRUE if self._verify(gold_parsed, predicted_parsed, timeout_seconds=None) else _FALSE
            finally:
                if soft_timeout:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _ItemTimeout:
            return stage
        except Exception:  # math-verify catches its own errors; anything else scores wrong
            return _ERROR


def _worker_main() -> None:
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
    checker.check(_COMPARE, "\\frac{1}{2}", "0.5", 60.0, bool(soft_timeout))
    checker.check(_COMPARE, "(x+1)^2", "x^2+2x+1", 60.0, bool(soft_timeout))
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
