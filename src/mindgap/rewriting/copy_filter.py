"""Whether a guided re-solve copies or mentions the expert solution it was shown."""

from __future__ import annotations

import re

from mindgap.config import CopyFilterConfig

_WORD = re.compile(r"\w+")

META_PHRASE = "meta_phrase"
SHARED_NGRAM = "shared_ngram"


def _word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[start : start + n]) for start in range(len(words) - n + 1)}


def copy_reason(response: str, expert_solution: str, config: CopyFilterConfig) -> str | None:
    """``meta_phrase`` or ``shared_ngram`` when the response is a copy, else None.

    A shared n-gram is a run of ``max_shared_ngram`` consecutive words (case and punctuation
    ignored) that also occurs in the expert solution.
    """
    lowered = response.lower()
    if any(phrase.lower() in lowered for phrase in config.meta_phrases):
        return META_PHRASE
    n = config.max_shared_ngram
    if n is not None and _word_ngrams(response, n) & _word_ngrams(expert_solution, n):
        return SHARED_NGRAM
    return None
