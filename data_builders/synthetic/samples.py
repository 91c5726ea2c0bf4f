"""From a plan to samples: which (skill, difficulty, format) each record gets, the items drawn for a split's
hash buckets, and the sample each item becomes in its format (prompt, ground truth, SFT response)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from random import Random

from data_builders.synthetic.item import Item
from data_builders.synthetic.scenes import IMAGE_SIZES, Sizes
from data_builders.synthetic.skills_reading import colour_item, count_item, position_item, shape_item
from data_builders.synthetic.skills_reasoning import arithmetic_item, compare_item, multi_image_item
from mpo.prompts import build_question

SKILL_WEIGHTS: dict[str, float] = {
    "colour": 0.16,
    "count": 0.17,
    "position": 0.15,
    "shape": 0.13,
    "compare": 0.15,
    "multi_image": 0.12,
    "arithmetic": 0.12,
}
SKILLS = tuple(SKILL_WEIGHTS)
FORMATS = ("short", "mc")
SPLITS = ("sft", "qa", "eval")
# Ten hash buckets of scene keys; each split only takes scenes from its own buckets.
BUCKETS = {"sft": range(0, 6), "qa": range(6, 8), "eval": range(8, 10)}

COT_FRACTION = 0.3  # default share of SFT records whose answer is a chain of thought
LETTERS = "ABCD"

# skill -> its item generator (rng, difficulty, image sizes) -> Item, or None to draw again
GENERATORS: dict[str, Callable[[Random, int, Sizes], Item | None]] = {
    "colour": colour_item,
    "count": count_item,
    "position": position_item,
    "shape": shape_item,
    "compare": compare_item,
    "multi_image": multi_image_item,
    "arithmetic": arithmetic_item,
}


def bucket(key: str) -> int:
    """The hash bucket (0-9) of a scene key or a text-only question."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 10


def make_item(
    rng: Random, skill: str, difficulty: int, split: str = "sft", sizes: Sizes = IMAGE_SIZES
) -> Item:
    """A random item of one skill and difficulty, its images of ``sizes``, whose scenes all belong to
    ``split``'s hash buckets."""
    for _ in range(100_000):  # most tries are cheap (a count or size draw that does not fit the difficulty)
        item = GENERATORS[skill](rng, difficulty, sizes)
        if item is not None and all(bucket(key) in BUCKETS[split] for key in item.keys()):
            return item
    raise RuntimeError(f"could not generate a {skill} item of difficulty {difficulty}")  # pragma: no cover


# --------------------------------------------------------------------------------------- samples


def _options(item: Item, rng: Random) -> dict[str, str]:
    others = [p for p in item.pool if p != item.answer]
    if item.ordered:
        options = list(item.pool)
    else:
        options = [item.answer, *rng.sample(others, min(len(others), len(LETTERS) - 1))]
        rng.shuffle(options)
    return dict(zip(LETTERS, options, strict=False))


@dataclass
class Sample:
    """An item in a format: the full prompt, the ground truth (letter for MC) and the SFT response."""

    item: Item
    fmt: str
    cot: bool
    prompt: str
    answer: str
    choices: dict[str, str] | None
    response: str


def make_sample(item: Item, fmt: str, cot: bool, rng: Random) -> Sample:
    choices = _options(item, rng) if fmt == "mc" else None
    answer = item.answer
    if choices:
        answer = next(letter for letter, option in choices.items() if option == item.answer)
    prompt = build_question(item.question, len(item.scenes), choices, cot=cot)
    if cot:
        option = f" Option {answer} is {item.answer}." if choices else ""
        response = f"{item.reasoning}{option} Final answer: {answer}"
    else:
        response = answer
    return Sample(item, fmt, cot, prompt, answer, choices, response)


def allocate(
    n: int, rng: Random, skills: tuple[str, ...] = SKILLS, formats: tuple[str, ...] = FORMATS
) -> list[tuple[str, int, str]]:
    """(skill, difficulty, format) for ``n`` records: ``skills`` by weight (each present when n allows),
    difficulties and ``formats`` balanced within each skill, then shuffled."""
    total = sum(SKILL_WEIGHTS[s] for s in skills)
    exact = {s: n * SKILL_WEIGHTS[s] / total for s in skills}
    counts = {s: int(v) for s, v in exact.items()}
    for s in sorted(skills, key=lambda s: counts[s] - exact[s])[: n - sum(counts.values())]:
        counts[s] += 1
    if n >= len(skills):
        for s in skills:
            if counts[s] == 0:
                counts[max(skills, key=lambda t: counts[t])] -= 1
                counts[s] = 1
    plan = []
    for s in skills:
        offset = rng.randrange(6)
        for j in range(offset, offset + counts[s]):
            plan.append((s, 1 + (j // len(formats)) % 3, formats[j % len(formats)]))
    rng.shuffle(plan)
    return plan
