"""Expert solutions normalised to the answer format the model is trained to produce."""

from __future__ import annotations

import re

from mindgap.verify import last_boxed

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_GSM8K_FINAL = re.compile(r"\n?\s*####\s*(.+?)\s*$")


def normalize_expert_solution(solution: str, answer: str) -> str:
    """Drop GSM8K calculator notes and the ``#### N`` line; end with ``\\boxed{answer}`` when unboxed."""
    text = _CALCULATOR_NOTE.sub("", solution)
    text = _GSM8K_FINAL.sub("", text).rstrip()
    if last_boxed(text) is None:
        text = f"{text}\nThe final answer is $\\boxed{{{answer}}}$."
    return text
