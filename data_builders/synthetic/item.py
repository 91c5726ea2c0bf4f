"""One generated question before it is given a format (:class:`Item`), what every skill returns.

A skill's generator is ``*_item(rng, difficulty, sizes) -> Item | None``: ``None`` when the draw does not fit
the difficulty (the caller draws again), so that a skill never loops on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_builders.synthetic.scenes import Scene

YES_NO = ("yes", "no")


@dataclass(frozen=True)
class Item:
    """One generated question before it is given a format: the core question and its exact answer."""

    skill: str
    difficulty: int
    scenes: tuple[Scene, ...]
    question: str  # without placeholders for one image, with "Image-k: <image>" lines for several
    answer: str
    pool: tuple[str, ...]  # the answer space (or plausible distractors) the options are drawn from
    reasoning: str  # a short true reasoning, without the final answer
    ordered: bool = False  # options keep the pool's order (Image-1, Image-2, ...)

    def keys(self) -> list[str]:
        """What must not repeat across splits: each of its scenes (each image), or its question if text-only."""
        return [scene.key() for scene in self.scenes] or [self.question]
