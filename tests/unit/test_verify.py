"""Answer extraction and verification, table-tested; the worker pool's timeouts and restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import mindgap.verification.verifier as verify_module
from mindgap.verification.answers import as_number, extract_answer, last_boxed, normalize_answer
from mindgap.verification.verifier import Verdict, Verifier, gold_problem, is_correct

TOWER = "\\boxed{9^{9^{9^{9^{9}}}}}"


@pytest.fixture(scope="module", autouse=True)
def verifier() -> Iterator[Verifier]:
    """One pool for the module; is_correct and gold_problem use it too (one worker start, not two)."""
    previous = verify_module._DEFAULT
    with Verifier(workers=2, timeout_s=5.0) as shared:
        verify_module._DEFAULT = shared
        yield shared
    verify_module._DEFAULT = previous


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("nested \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),
        ("bare \\boxed 5.", "5"),
        ("unclosed \\boxed{3", None),
        # an empty box is no answer: the last box with content counts
        ("\\boxed{4} and then \\boxed{ }", "4"),
        ("none", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("steps\n#### 72", "72"),
        ("So the answer is 18.", "18"),
        ("The answer is 3.5.", "3.5"),
        ("The final answer is: 3/4", "3/4"),
        ("The answer is **7**.", "7"),
        ("#### 5\nbut \\boxed{6}", "6"),
        # SmolLM2-135M-Instruct's habit: the real answer first, then an empty box
        ("#### 7\nThe answer is \\boxed{}.", "7"),
        ("So the answer is 7. The answer is \\boxed{}.", "7"),
        ("I give up", None),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("1,000", "1000"),
        ("$\\text{(B)}$", "b"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("\\Delta", "\\Delta"),
        ("\\$12.50.", "12.50"),
    ],
)
def test_normalize_answer(answer: str, expected: str) -> None:
    assert normalize_answer(answer) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("1,000", 1000),
        ("-\\frac{3}{4}", -0.75),
        ("\\dfrac{-1}{2}", -0.5),
        ("\\$12.50", 12.5),
        ("5 \\text{ cm}", 5),
        ("30^\\circ", 30),
        ("2x", None),
        ("1/0", None),
        ("\\sqrt{2}", None),
    ],
)
def test_as_number(answer: str, expected: float | None) -> None:
    number = as_number(answer)
    assert (number if number is None else float(number)) == expected


# (response, gold, correct, the extracted answer, decided by math-verify)
TABLE = [
    # fractions vs decimals
    ("\\boxed{\\frac{1}{2}}", "0.5", True, "\\frac{1}{2}", False),
    ("\\boxed{0.5}", "\\frac{1}{2}", True, "0.5", False),
    ("\\boxed{\\dfrac{1}{2}}", "1/2", True, "\\dfrac{1}{2}", False),
    ("\\boxed{0.25}", "\\frac{1}{2}", False, "0.25", False),
    # thousands separators
    ("\\boxed{1,000}", "1000", True, "1,000", False),
    ("\\boxed{1{,}000}", "1000", True, "1{,}000", False),
    ("\\boxed{1,001}", "1000", False, "1,001", False),
    # units, currency, \text
    ("\\boxed{5 \\text{ cm}}", "5", True, "5 \\text{ cm}", False),
    ("\\boxed{6 \\text{ cm}}", "5", False, "6 \\text{ cm}", False),
    ("\\boxed{18 \\text{ dollars}}", "18", True, "18 \\text{ dollars}", False),
    ("\\boxed{\\$12.50}", "12.5", True, "\\$12.50", False),
    ("\\boxed{\\text{(B)}}", "B", True, "\\text{(B)}", False),
    ("\\boxed{\\text{(C)}}", "B", False, "\\text{(C)}", True),
    # $-wrapped answers
    ("The total is $\\boxed{42}$.", "42", True, "42", False),
    ("so\n#### $42$", "42", True, "$42$", False),
    ("\\boxed{$\\frac{3}{4}$}", "0.75", True, "$\\frac{3}{4}$", False),
    # several boxed answers: the last counts
    ("first \\boxed{3}, then \\boxed{4}", "4", True, "4", False),
    ("first \\boxed{4}, then \\boxed{3}", "4", False, "3", False),
    # no answer at all
    ("I am not sure.", "4", False, None, False),
    ("\\boxed{}", "3", False, None, False),
    ("", "3", False, None, False),
    # intervals vs tuples
    ("\\boxed{(1,2)}", "[1,2]", False, "(1,2)", True),
    ("\\boxed{[1, 2]}", "[1,2]", True, "[1, 2]", False),
    ("\\boxed{(1, 2)}", "(1,2)", True, "(1, 2)", False),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True, None, False),
    # signs
    ("\\boxed{-3}", "3", False, "-3", False),
    ("\\boxed{-3}", "-3", True, "-3", False),
    # symbolic equivalents: math-verify decides
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", True, "\\sqrt{2}/2", True),
    ("\\boxed{\\sqrt{3}/2}", "\\frac{\\sqrt{2}}{2}", False, "\\sqrt{3}/2", True),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True, "x^2+2x+1", True),
    ("\\boxed{\\sqrt{16}}", "4", True, "\\sqrt{16}", True),
    ("\\boxed{50\\%}", "50", True, "50\\%", True),
    # GSM8K and "the answer is"
    ("She sold 48 clips in April.\n#### 42", "42", True, "42", False),
    ("#### 41", "42", False, "41", False),
    ("The answer is 7.", "7", True, "7", False),
    ("So the final answer is: 3/4", "0.75", True, "3/4", False),
    # an empty box never wins over a real final answer written before it
    ("#### 7\nThe answer is \\boxed{}.", "7", True, "7", False),
    ("#### 7\nThe answer is \\boxed{}.", "8", False, "7", False),
    # choice-letter wrappers: by value against a numeric gold, by letter against a letter gold
    ("\\boxed{\\textbf{(C)}\\ 12}", "12", True, "\\textbf{(C)}\\ 12", False),
    ("\\boxed{\\textbf{(C)}\\ 12}", "13", False, "\\textbf{(C)}\\ 12", False),
    ("\\boxed{\\textbf{(C)}\\ 12}", "C", True, "\\textbf{(C)}\\ 12", False),
    ("\\boxed{\\textbf{(C)}\\ 12}", "\\text{(B)}", False, "\\textbf{(C)}\\ 12", True),
    ("The answer is (C) 12.", "12", True, "(C) 12", False),
    ("The answer is (C) 12.", "C", True, "(C) 12", False),
    ("\\boxed{\\mathrm{(D)}\\ \\frac{1}{2}}", "0.5", True, "\\mathrm{(D)}\\ \\frac{1}{2}", False),
]


def test_table_batched(verifier: Verifier) -> None:
    before = verifier.counters.as_dict()
    verdicts = verifier.verify([row[0] for row in TABLE], [row[1] for row in TABLE])
    for (response, gold, correct, predicted, _), verdict in zip(TABLE, verdicts, strict=True):
        assert verdict.correct is correct, (response, gold)
        assert not verdict.timed_out
        if predicted is not None or correct is False:
            assert verdict.predicted == predicted, (response, gold)
    after = verifier.counters.as_dict()
    slow = sum(row[4] for row in TABLE)
    assert after["verdicts"] - before["verdicts"] == len(TABLE)
    assert after["math_verify"] - before["math_verify"] == slow
    assert after["fast_path"] - before["fast_path"] == len(TABLE) - slow
    assert after["timeouts"] == before["timeouts"]


@pytest.mark.parametrize(("response", "gold", "correct", "predicted", "slow"), TABLE)
def test_table_item_by_item(response: str, gold: str, correct: bool, predicted: str | None, slow: bool) -> None:
    assert is_correct(response, gold) is correct


def test_batched_equals_item_by_item(verifier: Verifier) -> None:
    batched = [v.correct for v in verifier.verify([row[0] for row in TABLE], [row[1] for row in TABLE])]
    assert batched == [is_correct(row[0], row[1]) for row in TABLE]


def test_fast_path_starts_no_workers() -> None:
    with Verifier(workers=1) as fresh:
        verdicts = fresh.verify(["#### 1,000", "\\boxed{7}", "nothing"], ["1000", "8", "3"])
        assert verdicts == [Verdict(True, "1,000"), Verdict(False, "7"), Verdict(False, None)]
        assert fresh._pool is None
        assert fresh.counters.as_dict() == {
            "verdicts": 3,
            "fast_path": 3,
            "math_verify": 0,
            "timeouts": 0,
            "restarts": 0,
            "long_answers": 0,
        }


def test_duplicates_and_repeats_reuse_one_check(verifier: Verifier) -> None:
    responses = ["\\boxed{\\sqrt{9}}"] * 4
    first = verifier.verify(responses, ["3"] * 4)
    again = verifier.verify(responses[:1], ["3"])
    assert [v.correct for v in first + again] == [True] * 5
    assert verifier._cache[("3", "\\sqrt{9}")] is True


def test_lengths_must_match(verifier: Verifier) -> None:
    with pytest.raises(ValueError, match="2 responses but 1 gold"):
        verifier.verify(["a", "b"], ["a"])


@pytest.mark.parametrize("soft_timeout", [True, False], ids=["interrupted", "killed"])
def test_pathological_answer_times_out_and_pool_recovers(soft_timeout: bool) -> None:
    with Verifier(workers=1, timeout_s=0.5, soft_timeout=soft_timeout) as slow:
        assert slow.verify(["\\boxed{\\sqrt{4}}"], ["2"]) == [Verdict(True, "\\sqrt{4}")]  # start the worker
        started = time.monotonic()
        verdicts = slow.verify([TOWER, "\\boxed{\\sqrt{2}/2}"], ["5", "\\frac{\\sqrt{2}}{2}"])
        # 0.5 s limit (+0.25 s grace before a kill), and a fresh worker for the second item when killed
        assert time.monotonic() - started < 5.0
        assert verdicts == [Verdict(False, "9^{9^{9^{9^{9}}}}", timed_out=True), Verdict(True, "\\sqrt{2}/2")]
        assert slow.counters.timeouts == 1
        # killed only when the worker could not interrupt itself
        assert slow.counters.restarts == (0 if soft_timeout else 1)
        assert slow.verify(["\\boxed{2\\sqrt{2}}"], ["\\sqrt{8}"]) == [Verdict(True, "2\\sqrt{2}")]
        assert slow.counters.as_dict()["verdicts"] == 4
        processes = [worker.process for worker in slow._pool.workers]
    # leaving the context stops the workers
    assert processes and all(process.poll() is not None for process in processes)


def test_dead_worker_is_replaced(verifier: Verifier) -> None:
    assert verifier.verify(["\\boxed{\\sqrt{4}}"], ["2"])[0].correct
    pool = verifier._pool
    assert pool is not None and pool.workers
    victim = pool.workers[0].process
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    restarts = verifier.counters.restarts
    responses = [f"\\boxed{{\\sqrt{{{n * n}}}}}" for n in range(2, 12)]
    verdicts = verifier.verify(responses, [str(n) for n in range(2, 12)])
    assert verdicts == [Verdict(True, f"\\sqrt{{{n * n}}}") for n in range(2, 12)]
    assert verifier.counters.restarts == restarts + 1
    assert victim not in [worker.process for worker in pool.workers]


@pytest.mark.parametrize("gold", ["42", "-3.5", "1,000", "\\frac{1}{2}", "\\text{(B)}", "Monday", "x^2+1", "(1, 2]"])
def test_gold_problem_good(gold: str) -> None:
    assert gold_problem(gold) is None


@pytest.mark.parametrize(
    ("gold", "reason"),
    [
        ("", "empty"),
        ("  $ $ ", "empty"),
        ("\\frac{", "cannot parse"),
        ("@#!", "cannot parse"),
        ("x" * 3000, "longer than"),
    ],
)
def test_gold_problem_bad(gold: str, reason: str) -> None:
    problem = gold_problem(gold)
    assert problem is not None and reason in problem
    assert "\n" not in problem


# Responses a looping model can write, 100k characters each, built from the pattern each one targets. Every
# pattern over model output must stay linear on them (the old ones took tens of seconds on the first two).
N = 100_000
ADVERSARIAL = [
    # (name, response, extracted answer, or None when there is none)
    ("gsm8k marker then spaces", "#### 1" + " " * N + "x", "1" + " " * N + "x"),
    ("nested text wrappers in a box", "\\boxed{" + "\\text{" * (N // 6) + "5" + "}" * (N // 6) + "}", ...),
    ("nested text wrappers, unclosed", "\\text{" * (N // 6), None),
    ("unclosed boxes", "\\boxed{" * (N // 7), None),
    ("boxes opened inside a box", "\\boxed{" + "{" * N, None),
    ("braces that never balance", "\\boxed{{" + "}{" * (N // 2), None),
    ("bare boxes", "\\boxed " * (N // 7), "\\boxed"),
    ("answer phrase then spaces", "the answer is" + " " * N + "x", "x"),
    ("answer phrase then dots", "The answer is " + "." * N, ...),
    ("repeated answer phrase", "the answer is " * (N // 14), ...),
    ("gsm8k marker then newlines", "####" + "\n" * N, None),
    ("dollars in a box", "\\boxed{" + "$" * N + "}", "$" * N),
    ("choice letter then spaces", "\\boxed{(A)" + " " * N + "}", "(A)"),
    ("numbers with unfinished units", "\\boxed{" + "1 \\text{ a" * (N // 10) + "}", None),
]

# Extraction and every fast-path step a verdict or a majority vote applies to the extracted answer.
_FAST_PATH = """
import sys
from mindgap.verification.answers import fast_verdict, as_number, comparand, extract_answer, normalize_answer
response = sys.stdin.read()
answer = extract_answer(response)
if answer is not None:
    fast_verdict(comparand(answer, "5"), "5")
    normalize_answer(answer)
    as_number(answer)
sys.stdout.write(repr(answer))
"""


@pytest.mark.parametrize(("name", "response", "expected"), ADVERSARIAL, ids=[row[0] for row in ADVERSARIAL])
def test_adversarial_responses_are_linear(name: str, response: str, expected: str | None) -> None:
    # A hang guard, not a speed assertion: each case takes well under 0.1 s (see README), the old code minutes.
    done = subprocess.run(
        [sys.executable, "-c", _FAST_PATH], input=response, capture_output=True, text=True, timeout=5, check=True
    )
    if expected is not ...:
        assert done.stdout == repr(expected)


def test_long_answers_are_counted_and_not_normalised() -> None:
    wrapped = "\\boxed{" + "\\text{" * 400 + "5" + "}" * 400 + "}"
    with Verifier(workers=1) as fresh:
        assert fresh.verify([wrapped, "\\boxed{\\text{5}}"], ["5", "5"])[0].correct is False
        assert fresh.counters.long_answers == 1
        assert fresh._pool is None
