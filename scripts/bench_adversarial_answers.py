"""Time answer extraction and the in-process verdict on the adversarial responses of tests/unit/test_verify.py.

Each response is 100k characters that a looping model can write; the table is the test's own. Timed after the
math-verify worker has started, so that a verdict sent to the pool measures the check, not the start.

    PYTHONPATH=src .venv/bin/python scripts/bench_adversarial_answers.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindgap.evaluation.metrics import answer_class
from mindgap.verification.answers import extract_answer
from mindgap.verification.verifier import Verifier
from tests.unit.test_verify import ADVERSARIAL


def main() -> None:
    with Verifier(workers=1, timeout_s=5.0) as verifier:
        verifier.verify(["\\boxed{x^2}"], ["x^2+0"])
        print(f"{'response':36s} {'chars':>7s} {'extract+vote key':>17s} {'verdict':>8s}")
        for name, response, _ in ADVERSARIAL:
            started = time.perf_counter()
            answer_class(extract_answer(response) or "")
            extraction = time.perf_counter() - started
            started = time.perf_counter()
            verifier.verify([response], ["5"])
            verdict = time.perf_counter() - started
            print(f"{name:36s} {len(response):7d} {extraction:16.4f}s {verdict:7.4f}s")


if __name__ == "__main__":
    main()
