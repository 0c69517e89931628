"""Benchmark the verifier: plain one-by-one math-verify against the batched ``Verifier``.

Responses are built from real GSM8K train solutions the way a model writes them: calculator notes
dropped, the final ``#### N`` line rewritten as ``The answer is \\boxed{N}.``, with a share of wrong
answers and of answers in other forms (``1,000``, ``\\$12.50``, ``\\frac{}{}``, units, ``\\sqrt{}``,
GSM8K ``####``, no answer at all). Both methods run in this process on the same items.

``--pools`` compares the worker pool itself (``mindgap.verification.pool.Pool``) with pebble's
``ProcessPool`` (per-task timeouts, a stuck worker killed and replaced) on the checks only math-verify
can decide: verdicts/s with the pool starting inside the clock (cold) and already running (warm),
the seconds to get past an answer that hangs sympy, and a memory cap per worker.

    .venv/bin/python scripts/bench_verify.py --items 4000 --workers 2
    .venv/bin/python scripts/bench_verify.py --pools --workers 2
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import random
import re
import resource
import sys
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from mindgap.data.sources import data_config, load_problems
from mindgap.measurement.report import Throughput, console, ratio, table, throughput_table
from mindgap.paths import PROJECT_ROOT
from mindgap.verification import pool as pool_module
from mindgap.verification.verifier import Verifier

_CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")


def data_root() -> str:
    return os.environ.get("MINDGAP_DATA_ROOT") or str(PROJECT_ROOT.parent / "shared" / "data")


def _money(value: str) -> str:
    return f"\\${float(value):.2f}"


def make_response(solution: str, gold: str, rng: random.Random) -> tuple[str, bool]:
    """A model-style response to one problem and whether it is meant to be correct."""
    body = _CALCULATOR_NOTE.sub("", solution).rsplit("####", 1)[0].strip()
    number = float(gold)
    integer = int(number) if number.is_integer() else None
    roll = rng.random()
    if roll < 0.02:  # ran out of tokens: no final answer
        return body[: max(1, len(body) // 2)], False
    if roll < 0.17:  # wrong answer
        wrong = integer + rng.choice([-10, -2, -1, 1, 2, 5, 100]) if integer is not None else number * 2
        text = f"{wrong:,}" if integer is not None and abs(wrong) >= 1000 and rng.random() < 0.5 else f"{wrong:g}"
        return f"{body}\nThe answer is $\\boxed{{{text}}}$.", False
    if roll < 0.20:  # GSM8K style
        return f"{body}\n#### {gold}", True
    if roll < 0.30 and integer is not None and abs(integer) >= 1000:
        answer = f"{integer:,}"
    elif roll < 0.36:
        answer = _money(gold)
    elif roll < 0.42 and integer is not None:
        answer = f"\\frac{{{2 * integer}}}{{2}}"
    elif roll < 0.46:
        answer = f"{gold} \\text{{ dollars}}"
    elif roll < 0.50 and integer is not None and integer >= 0:
        answer = f"\\sqrt{{{integer * integer}}}"  # math-verify decides this one
    elif roll < 0.52 and integer is not None:
        answer = f"{integer - 1} + 1"  # and this one
    else:
        answer = gold
    return f"{body}\nThe answer is $\\boxed{{{answer}}}$.", True


def build_items(count: int, seed: int) -> tuple[list[str], list[str], list[bool]]:
    problems = load_problems(data_config("gsm8k_train"), data_root()).problems
    rng = random.Random(seed)
    responses, golds, labels = [], [], []
    for index in range(count):
        problem = problems[index % len(problems)]
        response, label = make_response(problem.expert_solution or "", problem.answer, rng)
        responses.append(response)
        golds.append(problem.answer)
        labels.append(label)
    return responses, golds, labels


def run_math_verify(responses: list[str], golds: list[str]) -> tuple[list[bool], float]:
    from math_verify import parse, verify

    verify(parse("$1$"), parse("1"))  # import and warm-up outside the clock
    started = time.perf_counter()
    verdicts = [
        bool(verify(parse(f"${gold}$"), parse(response))) for response, gold in zip(responses, golds, strict=True)
    ]
    return verdicts, time.perf_counter() - started


def run_verifier(responses: list[str], golds: list[str], workers: int | None, timeout_s: float, warm: bool):
    """Verdicts, seconds, pool size and counters of the timed call; ``warm`` starts the pool first."""
    with Verifier(workers=workers, timeout_s=timeout_s) as verifier:
        if warm:  # one symbolic check per worker starts every worker
            squares = [f"\\boxed{{\\sqrt{{{n * n}}}}}" for n in range(verifier.workers)]
            verifier.verify(squares, ["0"] * verifier.workers)
        before = verifier.counters.as_dict()
        started = time.perf_counter()
        verdicts = [verdict.correct for verdict in verifier.verify(responses, golds)]
        elapsed = time.perf_counter() - started
        counters = {key: value - before[key] for key, value in verifier.counters.as_dict().items()}
        return verdicts, elapsed, verifier.workers, counters


# A check that makes sympy spin (tests/unit/test_verify.py): it must time out and not stall the rest.
HANG = (pool_module.COMPARE, "5", "9^{9^{9^{9^{9}}}}")
_CHECKER: pool_module._Checker | None = None


def symbolic_tasks(count: int) -> list[tuple[int, str, str]]:
    """Distinct (kind, gold, prediction) checks the fast path leaves to math-verify, true and false."""
    forms = ("\\sqrt{{{square}}}", "{less} + 1", "\\frac{{{double}}}{{2}} + 0", "{n}.0 \\cdot 1")
    tasks = []
    for index in range(count):
        n = 2 + index // len(forms)
        form = forms[index % len(forms)].format(square=n * n, less=n - 1, double=2 * n, n=n)
        gold = str(n if index % 5 else n + 1)  # every fifth is wrong
        tasks.append((pool_module.COMPARE, gold, form))
    return tasks


def _limit_memory(memory_limit_mb: int) -> None:
    limit = memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _pebble_check(kind: int, gold: str, predicted: str, timeout_s: float) -> int:
    """One check in a pebble worker: the same math-verify call as the pool's workers, timed out by pebble."""
    global _CHECKER
    if _CHECKER is None:
        for name in ("math_verify", "latex2sympy2_extended"):  # as the pool's workers do
            logging.getLogger(name).setLevel(logging.CRITICAL)
        _CHECKER = pool_module._Checker()
    return _CHECKER.check(kind, gold, predicted, timeout_s, False)


def run_own_pool(workers: int, tasks: list, timeout_s: float, memory_limit_mb: int) -> dict[str, float]:
    own = pool_module.Pool(workers, soft_timeout=True, memory_limit_mb=memory_limit_mb)
    grace = min(2.0, max(0.25, 0.5 * timeout_s))
    try:
        started = time.perf_counter()
        cold = own.run(tasks, timeout_s, grace, set())[0]
        cold_s = time.perf_counter() - started
        started = time.perf_counter()
        warm = own.run(tasks, timeout_s, grace, set())[0]
        warm_s = time.perf_counter() - started
        started = time.perf_counter()
        hung, restarts = own.run([HANG, *tasks[:20]], timeout_s, grace, set())
        hang_s = time.perf_counter() - started
    finally:
        own.close()
    assert cold == warm and hung[1:] == warm[:20]
    return {"cold": cold_s, "warm": warm_s, "hang": hang_s, "hang_outcome": hung[0], "restarts": restarts}


def run_pebble(workers: int, tasks: list, timeout_s: float, memory_limit_mb: int, expected: list[int]):
    from pebble import ProcessPool

    def outcomes(pool: ProcessPool, items: list) -> list[int]:
        futures = [pool.submit(_pebble_check, timeout_s, *item, timeout_s) for item in items]
        results = []
        for future in futures:
            try:
                results.append(future.result())
            except FutureTimeout:
                results.append(pool_module.TIMEOUT)
        return results

    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    with ProcessPool(workers, initializer=_limit_memory, initargs=(memory_limit_mb,), context=context) as pool:
        cold = outcomes(pool, tasks)
        cold_s = time.perf_counter() - started
        started = time.perf_counter()
        warm = outcomes(pool, tasks)
        warm_s = time.perf_counter() - started
        started = time.perf_counter()
        hung = outcomes(pool, [HANG, *tasks[:20]])
        hang_s = time.perf_counter() - started
    assert cold == warm == expected and hung[1:] == expected[:20]
    return {"cold": cold_s, "warm": warm_s, "hang": hang_s, "hang_outcome": hung[0], "restarts": float("nan")}


def compare_pools(workers: int, timeout_s: float, count: int, memory_limit_mb: int = 4096) -> None:
    tasks = symbolic_tasks(count)
    own = run_own_pool(workers, tasks, timeout_s, memory_limit_mb)
    expected = pool_module.Pool(workers, True, memory_limit_mb)
    try:
        reference = expected.run(tasks, timeout_s, 1.0, set())[0]
    finally:
        expected.close()
    pebble = run_pebble(workers, tasks, timeout_s, memory_limit_mb, reference)
    title = (
        f"{count} symbolic checks (math-verify decides each), {workers} workers, {timeout_s:g} s limit per check,"
        f" {memory_limit_mb} MiB address space per worker (RLIMIT_AS, both pools); {os.cpu_count()} CPU cores"
    )
    pools = table(title, ["pool", "cold/s", "warm/s", "warm x mindgap", "hang + 20 (s)", "hang verdict"])
    names = {pool_module.TIMEOUT: "timed out", pool_module.FALSE: "false", pool_module.TRUE: "true"}
    for name, row in (("mindgap Pool (subprocess, pipes)", own), ("pebble ProcessPool (spawn)", pebble)):
        pools.add_row(
            name,
            f"{count / row['cold']:.0f}",
            f"{count / row['warm']:.0f}",
            ratio(own["warm"] / row["warm"]),
            f"{row['hang']:.2f}",
            names.get(int(row["hang_outcome"]), str(row["hang_outcome"])),
        )
    console().print(pools)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=4000, help="responses to verify (default 4000)")
    parser.add_argument("--workers", type=int, default=None, help="math-verify processes (default: every core)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per math-verify check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pools", action="store_true", help="compare the worker pool with pebble's ProcessPool")
    args = parser.parse_args(argv)
    if args.pools:
        compare_pools(args.workers or 2, args.timeout, min(args.items, 400))
        return 0
    if args.items < 1:
        parser.error("--items must be >= 1")
    if not Path(data_root()).is_dir():
        print(f"error: data root {data_root()} not found (set MINDGAP_DATA_ROOT)", file=sys.stderr)
        return 1

    responses, golds, labels = build_items(args.items, args.seed)
    plain, plain_s = run_math_verify(responses, golds)
    cold, cold_s, workers, _ = run_verifier(responses, golds, args.workers, args.timeout, warm=False)
    batched, batched_s, workers, counters = run_verifier(responses, golds, args.workers, args.timeout, warm=True)
    assert cold == batched, "the Verifier gave different verdicts with a cold and a warm pool"

    n = len(responses)
    pool = f"{workers} worker{'s' if workers > 1 else ''}"
    rows = [
        ("math-verify, one by one", plain_s, plain),
        (f"Verifier, {pool}, cold", cold_s, cold),
        (f"Verifier, {pool}, warm", batched_s, batched),
    ]
    matches = [sum(v == label for v, label in zip(verdicts, labels, strict=True)) / n for _, _, verdicts in rows]
    title = (
        f"{n} GSM8K-style responses ({sum(labels)} meant correct), {os.cpu_count()} CPU cores;"
        " cold: the clock includes starting the worker pool, warm: the pool is already running"
    )
    console().print(
        throughput_table(
            title,
            [Throughput(name, n, seconds) for name, seconds, _ in rows],
            "verdicts",
            rows[0][0],
            {"= label": [f"{share:.2%}" for share in matches]},
        )
    )
    agree = sum(a == b for a, b in zip(plain, batched, strict=True))
    print(f"agreement between the two: {agree}/{n} ({agree / n:.2%})")
    print(f"Verifier counters: {counters}")
    differ = [i for i in range(n) if plain[i] != batched[i]]
    for i in differ[:3]:
        tail = responses[i][-80:].replace("\n", " | ")
        print(f"  differs: gold={golds[i]!r} math-verify={plain[i]} Verifier={batched[i]} ...{tail!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
