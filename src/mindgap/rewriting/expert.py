"""Expert solutions normalised to the answer format the model is trained to produce."""

from __future__ import annotations

import re

from mindgap.records import Problem
from mindgap.verification.answers import last_boxed

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_GSM8K_FINAL = re.compile(r"\n?\s*####\s*(.+?)\s*$")


def normalize_expert_solution(solution: str, answer: str) -> str:
    """Drop GSM8K calculator notes and the ``#### N`` line; end with ``\\boxed{answer}`` when unboxed."""
    text = _CALCULATOR_NOTE.sub("", solution)
    text = _GSM8K_FINAL.sub("", text).rstrip()
    if last_boxed(text) is None:
        text = f"{text}\nThe final answer is $\\boxed{{{answer}}}$."
    return text


def shown_expert_solution(problem: Problem) -> str:
    """The expert solution as every prompt shows it and the fallback record holds it: normalised."""
    assert problem.expert_solution is not None
    return normalize_expert_solution(problem.expert_solution, problem.answer)
