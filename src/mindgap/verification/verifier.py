"""Batched verification of responses against gold answers: the fast path in process, math-verify in a pool.

* the **fast path** (``answers``) decides most GSM8K-style verdicts, at tens of thousands per second;
* the **slow path**, only when the fast path is inconclusive: math-verify's ``parse`` + ``verify`` in
  worker processes (``pool``) with a per-item wall-clock limit. A pathological answer (a tower of
  exponents, anything that makes sympy spin) times out, is scored wrong and counted; a worker stuck
  in C code, where no signal can interrupt it, is killed and replaced.

Use :class:`Verifier` for batches (it owns the pool; use it as a context manager) and
:func:`is_correct` for a single check (it shares one lazily created module-level verifier).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from mindgap.verification.answers import (
    MAX_ANSWER_CHARS,
    as_number,
    comparand,
    extract_answer,
    fast_verdict,
    is_plain_text,
    strip_dollars,
)
from mindgap.verification.pool import COMPARE, FALSE, GOLD, GOLD_TIMEOUT, TIMEOUT, TRUE, Pool

if TYPE_CHECKING:
    from mindgap.verification.config import VerifierConfig


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
        self._pool: Pool | None = None
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
                fast = fast_verdict(compared, gold)
                if fast is not None:
                    verdicts[index] = Verdict(fast, predicted)
                    continue
                slow.setdefault((strip_dollars(gold), strip_dollars(compared)), []).append(index)
            self.counters.fast_path += len(responses) - sum(len(indices) for indices in slow.values())

            # Grouped by gold: a message of tasks with one gold answer parses it once in its worker.
            pairs = sorted((pair for pair in slow if pair not in self._cache), key=lambda pair: pair[0])
            outcomes = dict(
                zip(pairs, self._run([(COMPARE, gold, predicted) for gold, predicted in pairs]), strict=True)
            )
            for pair, indices in slow.items():
                if pair in self._cache:
                    self._cache.move_to_end(pair)
                    outcome = TRUE if self._cache[pair] else FALSE
                else:
                    outcome = outcomes[pair]
                    if outcome in (TRUE, FALSE):
                        self._remember(pair, outcome == TRUE)
                    elif outcome == GOLD_TIMEOUT:
                        self._slow_golds.add(pair[0])
                timed_out = outcome in (TIMEOUT, GOLD_TIMEOUT)
                for index in indices:
                    verdicts[index] = Verdict(outcome == TRUE, predictions[index], timed_out)
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
                if not strip_dollars(gold):
                    problems[index] = "empty gold answer"
                elif len(gold) > MAX_ANSWER_CHARS:
                    problems[index] = f"gold answer longer than {MAX_ANSWER_CHARS} characters"
                elif as_number(gold) is None and not is_plain_text(gold):
                    to_parse.setdefault(gold, []).append(index)
            outcomes = self._run([(GOLD, gold, "") for gold in to_parse])
            for (gold, indices), outcome in zip(to_parse.items(), outcomes, strict=True):
                if outcome == TRUE:
                    continue
                shown = gold if len(gold) <= 60 else gold[:57] + "..."
                if outcome in (TIMEOUT, GOLD_TIMEOUT):
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
            self._pool = Pool(self.workers, self.soft_timeout, self.memory_limit_mb)
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
