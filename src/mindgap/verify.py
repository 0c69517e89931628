"""Final-answer extraction and verification against a gold answer.

Nothing here evaluates or executes model output: answers are compared as normalised
strings, as plain numbers, and otherwise symbolically by math-verify's parser.
"""

from __future__ import annotations

import re
from fractions import Fraction

from math_verify import parse, verify

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_THE_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*(.+?)(?:\.\s|\.?$)", re.IGNORECASE | re.MULTILINE)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or None."""
    starts = [match.end() for match in _BOXED.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[start:position].strip()
    return None


def extract_answer(response: str) -> str | None:
    """The response's final answer: last boxed, else GSM8K ``####``, else "the answer is ..."."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    hashes = _GSM8K.findall(response)
    if hashes:
        return hashes[-1].strip()
    stated = _THE_ANSWER_IS.findall(response)
    if stated:
        return stated[-1].strip().rstrip(".")
    return None


def normalize_answer(answer: str) -> str:
    """Canonical text for exact comparison: no $, spaces, thousands commas or \\text wrappers."""
    text = _TEXT_WRAPPER.sub(r"\1", answer)
    text = text.replace("\\!", "").replace("\\,", "").replace("\\ ", "").replace("$", "")
    text = text.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac")
    text = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", text)
    text = re.sub(r"\s+", "", text)
    return text.rstrip(".").lower()


def as_number(answer: str) -> Fraction | None:
    """The answer as an exact rational when it is a plain number (``1,000``, ``-3.5``, ``2/3``)."""
    text = normalize_answer(answer)
    frac = re.fullmatch(r"\\frac\{(-?\d+)\}\{(\d+)\}", text)
    if frac:
        text = f"{frac.group(1)}/{frac.group(2)}"
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def is_correct(response: str, gold: str) -> bool:
    """Whether the response's final answer equals the gold answer."""
    predicted = extract_answer(response)
    if predicted is None or not predicted.strip():
        return False
    if normalize_answer(predicted) == normalize_answer(gold):
        return True
    predicted_number, gold_number = as_number(predicted), as_number(gold)
    if predicted_number is not None and gold_number is not None:
        return predicted_number == gold_number
    return bool(verify(parse(f"${gold}$"), parse(f"${predicted}$")))
