"""How a chain of thought words what it sees: articles, lists, plurals, the shapes by colour."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data_builders.synthetic.scenes import Shape


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def join_words(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(shapes, kinds: bool = False) -> str:
    """The shapes as a chain of thought lists them: by colour, and by kind only where the question turns on
    every shape's kind (``kinds``). The tiny model tells colours apart far better than kinds: when every
    listing named the kinds, 5 % of its right answers stated the listing right, and MPO gained 6 points;
    by colour, 23 % and 14 points (README, benchmarks/results/demo_sweep_notes.md)."""
    return join_words([s.phrase(kinds) for s in shapes])


def left_to_right(shapes) -> list[Shape]:
    return sorted(shapes, key=lambda s: (s.cx, s.cy))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def is_are(n: int) -> str:
    return "is" if n == 1 else "are"
