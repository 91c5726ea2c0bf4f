"""N-gram repetition: the degenerate loops ("the the the ...") that both SFT data and model-built
preference pairs must be filtered for."""

from __future__ import annotations


def ngram_repetition_ratio(text: str, n: int = 4) -> float:
    """Fraction of word n-grams that repeat an earlier n-gram of the same text: 1 − distinct / total.

    0 for text with no repeated n-gram (or fewer than n words); tends to 1 for a loop.
    """
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_repetitive(text: str, n: int = 4, threshold: float = 0.3) -> bool:
    """True when more than ``threshold`` of the word n-grams of ``text`` are repeats."""
    return ngram_repetition_ratio(text, n) > threshold
