"""Whether a guided re-solve copies or mentions the expert solution it was shown.

Two tests, either of which rejects a correct response:

- a *meta phrase*: one of ``rewrite.copy_filter.meta_phrases`` occurs as a whole expression
  (case-insensitive, any whitespace between its words), so "the reference solution" is caught and
  "the reference angle" is not;
- a *shared n-gram*: a run of ``max_shared_ngram`` consecutive words of the response also occurs in
  the expert solution and not in the problem statement (solutions restate the problem, and so may
  the model).

Words are compared after stripping LaTeX markup: math delimiters, commands and braces go,
``\\frac{a}{b}`` reads ``a/b``, and a formula without spaces (``x^{2}+3x``) stays one word instead of
falling apart into one-character words. Case and the punctuation around words are ignored; lone
symbols (``=``, ``+``) are not words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from mindgap.rewriting.config import CopyFilterConfig

META_PHRASE = "meta_phrase"
SHARED_NGRAM = "shared_ngram"

_FRACTION = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_COMMAND = re.compile(r"\\(?:[A-Za-z]+\*?|[^A-Za-z])")
_MARKUP = re.compile(r"[${}]")
_EDGE_PUNCTUATION = ".,;:!?\"'()[]"
_HAS_WORD_CHARACTER = re.compile(r"\w")


def words(text: str) -> list[str]:
    """The words of ``text`` as the filter compares them (see the module docstring)."""
    text = _FRACTION.sub(r" \1/\2 ", text.replace("\\$", " "))
    text = _MARKUP.sub("", _COMMAND.sub(" ", text))
    stripped = (word.strip(_EDGE_PUNCTUATION) for word in text.lower().split())
    return [word for word in stripped if _HAS_WORD_CHARACTER.search(word)]


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    sequence = words(text)
    return {tuple(sequence[start : start + n]) for start in range(len(sequence) - n + 1)}


@lru_cache(maxsize=16)
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    alternatives = [r"\s+".join(map(re.escape, phrase.split())) for phrase in phrases if phrase.strip()]
    if not alternatives:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def mentions_reference(response: str, meta_phrases: Sequence[str]) -> bool:
    """Whether one of ``meta_phrases`` occurs in the response as a whole expression."""
    pattern = _phrase_pattern(tuple(meta_phrases))
    return pattern is not None and pattern.search(response) is not None


def copy_reason(response: str, expert_solution: str, problem: str, config: CopyFilterConfig) -> str | None:
    """``meta_phrase`` or ``shared_ngram`` when the response is a copy of ``expert_solution``, else None.

    ``expert_solution`` is the text the model was shown; n-grams that also occur in ``problem`` do not count.
    """
    if mentions_reference(response, config.meta_phrases):
        return META_PHRASE
    n = config.max_shared_ngram
    if n is not None and (_ngrams(response, n) & _ngrams(expert_solution, n)) - _ngrams(problem, n):
        return SHARED_NGRAM
    return None
