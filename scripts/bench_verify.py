"""Benchmark the verifier: plain one-by-one math-verify against the batched ``Verifier``.

Responses are built from real GSM8K train solutions the way a model writes them: calculator notes
dropped, the final ``#### N`` line rewritten as ``The answer is \\boxed{N}.``, with a share of wrong
answers and of answers in other forms (``1,000``, ``\\$12.50``, ``\\frac{}{}``, units, ``\\sqrt{}``,
GSM8K ``####``, no answer at all). Both methods run in this process on the same items.

    .venv/bin/python scripts/bench_verify.py --items 4000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from pathlib import Path

from mindgap.config import PROJECT_ROOT
from mindgap.data.sources import data_config, load_problems
from mindgap.verify import Verifier

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=4000, help="responses to verify (default 4000)")
    parser.add_argument("--workers", type=int, default=None, help="math-verify processes (default: every core)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per math-verify check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
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
    print(f"{n} GSM8K-style responses ({sum(labels)} meant correct), {os.cpu_count()} CPU cores")
    print("cold: the clock includes starting the worker pool; warm: the pool is already running")
    print(f"{'method':<30} {'items':>6} {'seconds':>8} {'verdicts/s':>11} {'ratio':>7} {'= label':>8}")
    for name, seconds, verdicts in rows:
        matches = sum(v == label for v, label in zip(verdicts, labels, strict=True))
        print(f"{name:<30} {n:>6} {seconds:>8.2f} {n / seconds:>11.0f} {plain_s / seconds:>6.1f}x {matches / n:>8.2%}")
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
