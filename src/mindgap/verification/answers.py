"""The answer maths: a response's final answer, its normal form, and the fast exact verdict.

Extraction takes the last non-empty ``\\boxed{}``, else GSM8K's ``####``, else "the answer is ...";
a multiple-choice answer with its value, "(C) 12", compares by its letter against a letter gold and
by its value otherwise. The fast verdict compares normalised strings, then exact rationals when both
sides are plain numbers (``1,000``, ``\\$12.50``, ``\\frac{1}{2}``, ``5 \\text{ cm}``); it says None when
only math-verify can decide (``mindgap.verification.verifier``). Pure functions, no model output is
evaluated or executed: answers are compared as strings and as rationals parsed by ``fractions.Fraction``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from itertools import accumulate, islice

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


def strip_dollars(answer: str) -> str:
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
    text = _without_wrappers(strip_dollars(answer))
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
    text = strip_dollars(answer)
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


def is_plain_text(answer: str) -> bool:
    return bool(_PLAIN_TEXT.fullmatch(_unwrapped(answer)))


def _unwrapped(answer: str) -> str:
    if len(answer) > MAX_ANSWER_CHARS:
        return answer.strip()
    return _without_wrappers(strip_dollars(answer)).strip()


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


def fast_verdict(predicted: str, gold: str) -> bool | None:
    """True/False when strings or exact numbers decide, None when math-verify has to."""
    if normalize_answer(predicted) == normalize_answer(gold):
        return True
    predicted_number, gold_number = as_number(predicted), as_number(gold)
    if predicted_number is not None and gold_number is not None:
        return predicted_number == gold_number
    if len(predicted) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    return None
