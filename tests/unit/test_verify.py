"""Answer extraction and verification, table-tested."""

from __future__ import annotations

import pytest

from mindgap.verify import extract_answer, is_correct, last_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("nested \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),
        ("unclosed \\boxed{3", None),
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
        ("The final answer is: 3/4", "3/4"),
        ("I give up", None),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        ("\\boxed{72}", "72", True),
        ("\\boxed{1,000}", "1000", True),
        ("\\boxed{0.5}", "\\frac{1}{2}", True),
        ("\\boxed{\\dfrac{1}{2}}", "1/2", True),
        ("\\boxed{\\$18}", "18", True),
        ("\\boxed{18 \\text{ dollars}}", "18", True),
        ("\\boxed{-3}", "3", False),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
        ("no answer", "3", False),
        ("\\boxed{}", "3", False),
    ],
)
def test_is_correct(response: str, gold: str, expected: bool) -> None:
    assert is_correct(response, gold) is expected
