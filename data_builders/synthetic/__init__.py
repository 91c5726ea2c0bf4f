"""The synthetic visual question-answering task: the embedded default data.

Images of coloured shapes (circle, square, triangle, diamond in six colours) on a white background,
drawn with PIL without anti-aliasing, so that every question has an exact answer that can be read
back from the pixels. Seven skills, each at three difficulty levels (more and smaller shapes, closer
margins):

==============  ==========================================================================
colour          colour of the single shape (1) / of the clearly largest shape (2, 3)
count           number of shapes (1-2 / 3-4 / 5-6), or of the shapes of one colour (3)
position        shape or colour of the leftmost / rightmost / topmost / bottommost shape
shape           shape of the only object of a given colour
compare         "is there a red circle?" (1), "more red than blue?" (2), most frequent colour (3)
multi_image     "Image-1: <image>\\nImage-2: <image>\\nWhich image has more shapes?" (2-3 images)
arithmetic      text-only "What is 3 + 4?" (so every input shape exists)
==============  ==========================================================================

Each question is asked either as multiple choice (options in the question, the ground truth is the
letter) or as a short answer (a word or a number). ``mpo synthetic OUT`` writes three disjoint
splits: ``OUT/sft`` (InternVL meta.json + conversations, 30 % of them chain-of-thought answers
ending in ``Final answer: X``), ``OUT/qa`` (questions with ground truth and the true chain of thought,
``reasoning``, for the correctness-based preference pipeline) and ``OUT/eval/eval.tsv`` (VLMEvalKit
TSV, with the same ``reasoning``). A chain of thought lists the shapes it reads by colour ("I see a red
shape and a blue shape."), names a kind where the question asks for one, and ends in its conclusion.
Splits never share a scene: every scene (or text-only question) is hashed into one of ten buckets and
each split only takes its own buckets. Everything is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from random import Random

from PIL import Image, ImageDraw
from tqdm import tqdm

from mpo.errors import UserError
from mpo.prompts import COT_INSTRUCTION, MC_INSTRUCTION, SHORT_INSTRUCTION, build_question  # noqa: F401 (re-exported)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 190),
    "orange": (245, 130, 20),
}
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle", "diamond")
# (width, height): 1 tile; 2 tiles + thumbnail; 2 tiles + thumbnail; 4 tiles + thumbnail (64 px tiles).
IMAGE_SIZES = ((64, 64), (128, 64), (64, 128), (128, 128))
Sizes = Sequence[tuple[int, int]]
TILE = 64


def image_tiles(width: int, height: int) -> int:
    """Tiles the model sees for an image of this size: one per 64 px tile, plus a thumbnail when
    there are several."""
    n = (width // TILE) * (height // TILE)
    return n if n == 1 else n + 1


def sizes_up_to(max_tiles: int) -> tuple[tuple[int, int], ...]:
    """The image sizes of IMAGE_SIZES the model sees as at most ``max_tiles`` tiles."""
    sizes = tuple(size for size in IMAGE_SIZES if image_tiles(*size) <= max_tiles)
    if not sizes:
        raise UserError(f"--max-tiles must be at least 1, got {max_tiles}")
    return sizes


MAX_SHAPES = 6
MARGIN = 2  # free pixels between a shape and the image border
GAP = 3  # free pixels between two shapes' boxes: every shape is its own connected blob
# Shape side in pixels, and number of shapes in a generic scene, per difficulty. Shapes must cover
# several 8 px patches of a 64 px tile: at 8-15 px the tiny model never learned even the colour skill
# (held-out accuracy at chance after 800 steps); at these sizes it learns it (75 % in 600 steps).
SIZE_RANGE = {1: (24, 34), 2: (16, 24), 3: (11, 18)}
COUNT_RANGE = {1: (1, 2), 2: (3, 4), 3: (5, 6)}
POSITION_MIN_SEPARATION = 6  # pixels between the extreme shape's centre and the next one's

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
_BUCKETS = {"sft": range(0, 6), "qa": range(6, 8), "eval": range(8, 10)}

COT_FRACTION = 0.3  # default share of SFT records whose answer is a chain of thought
LETTERS = "ABCD"
YES_NO = ("yes", "no")


# ---------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    x: int  # top-left corner of the shape's size x size box
    y: int
    size: int

    @property
    def cx(self) -> float:
        return self.x + (self.size - 1) / 2

    @property
    def cy(self) -> float:
        return self.y + (self.size - 1) / 2

    @property
    def area(self) -> int:
        return shape_area(self.kind, self.size)

    def phrase(self, kind: bool = False) -> str:
        """How a chain of thought names the shape: "a red shape", or with ``kind`` "a red circle"."""
        return f"{_a(self.colour)} {self.colour} {self.kind if kind else 'shape'}"


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    shapes: tuple[Shape, ...]

    def key(self) -> str:
        shapes = sorted((s.x, s.y, s.size, s.kind, s.colour) for s in self.shapes)
        return f"{self.width}x{self.height}:{shapes}"


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: int, y: int, size: int, fill) -> None:
    x1, y1 = x + size - 1, y + size - 1
    mx, my = x + (size - 1) // 2, y + (size - 1) // 2
    if kind == "circle":
        draw.ellipse((x, y, x1, y1), fill=fill)
    elif kind == "square":
        draw.rectangle((x, y, x1, y1), fill=fill)
    elif kind == "triangle":
        draw.polygon([(mx, y), (x1, y1), (x, y1)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(mx, y), (x1, my), (mx, y1), (x, my)], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")


@cache
def shape_area(kind: str, size: int) -> int:
    """Pixels a shape covers once drawn (rasterisation is translation invariant for integer boxes)."""
    mask = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(mask), kind, 0, 0, size, 255)
    return mask.histogram()[255]


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image: flat colours, no anti-aliasing."""
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        _draw_shape(draw, s.kind, s.x, s.y, s.size, COLOURS[s.colour])
    return image


def _place(rng: Random, specs: list[tuple[str, str, int]], sizes: Sizes = IMAGE_SIZES) -> Scene | None:
    """Put shapes (kind, colour, size) at random non-touching places in an image of a random size."""
    width, height = rng.choice(sizes)
    order = sorted(range(len(specs)), key=lambda i: -specs[i][2])  # big ones first
    placed: dict[int, Shape] = {}
    for i in order:
        kind, colour, size = specs[i]
        if size + 2 * MARGIN > min(width, height):
            return None
        for _ in range(60):
            x = rng.randint(MARGIN, width - MARGIN - size)
            y = rng.randint(MARGIN, height - MARGIN - size)
            if all(
                x + size + GAP <= o.x
                or o.x + o.size + GAP <= x
                or y + size + GAP <= o.y
                or o.y + o.size + GAP <= y
                for o in placed.values()
            ):
                placed[i] = Shape(kind, colour, x, y, size)
                break
        else:
            return None
    return Scene(width, height, tuple(placed[i] for i in range(len(specs))))


def _random_specs(
    rng: Random, n: int, difficulty: int, colours=None, kinds=None
) -> list[tuple[str, str, int]]:
    lo, hi = SIZE_RANGE[difficulty]
    return [
        (rng.choice(kinds or SHAPES), rng.choice(colours or list(COLOURS)), rng.randint(lo, hi))
        for _ in range(n)
    ]


def _n_shapes(rng: Random, difficulty: int) -> int:
    return rng.randint(*COUNT_RANGE[difficulty])


# ----------------------------------------------------------------------------------------- text


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _describe(shapes, kinds: bool = False) -> str:
    """The shapes as a chain of thought lists them: by colour, and by kind only where the question turns on
    every shape's kind (``kinds``). The tiny model tells colours apart far better than kinds: when every
    listing named the kinds, 5 % of its right answers stated the listing right, and MPO gained 6 points;
    by colour, 23 % and 14 points (README, benchmarks/results/demo_sweep_notes.md)."""
    return _join([s.phrase(kinds) for s in shapes])


def _left_to_right(shapes) -> list[Shape]:
    return sorted(shapes, key=lambda s: (s.cx, s.cy))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _is_are(n: int) -> str:
    return "is" if n == 1 else "are"


# ---------------------------------------------------------------------------------------- skills


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


def _colour_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    if d == 1:
        scene = _place(rng, _random_specs(rng, 1, 1), sizes)
        if scene is None:
            return None
        s = scene.shapes[0]
        return Item(
            "colour",
            d,
            (scene,),
            "What is the colour of the shape?",
            s.colour,
            tuple(COLOURS),
            f"I see one shape, {s.phrase()}.",
        )
    n = rng.randint(2, 3) if d == 2 else rng.randint(4, MAX_SHAPES)
    ratio = 2.0 if d == 2 else 1.4
    others = _random_specs(rng, n - 1, d)
    biggest_other = max(shape_area(k, s) for k, _, s in others)
    kind = rng.choice(SHAPES)
    fits = [
        s
        for s in range(SIZE_RANGE[d][0], SIZE_RANGE[1][1] + 14)
        if shape_area(kind, s) >= ratio * biggest_other
    ]
    if not fits:
        return None
    specs = [(kind, rng.choice(list(COLOURS)), rng.choice(fits[:6])), *others]
    scene = _place(rng, specs, sizes)
    if scene is None:
        return None
    big = scene.shapes[0]
    return Item(
        "colour",
        d,
        (scene,),
        "What is the colour of the largest shape?",
        big.colour,
        tuple(COLOURS),
        f"I see {_describe(_left_to_right(scene.shapes))}. The largest one is the {big.colour} {big.kind}.",
    )


def _count_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    pool = tuple(str(i) for i in range(1, MAX_SHAPES + 1))
    if d == 3 and rng.random() < 0.5:
        n = rng.randint(4, MAX_SHAPES)
        colour = rng.choice(list(COLOURS))
        k = rng.randint(1, min(4, n - 1))
        others = [c for c in COLOURS if c != colour]
        specs = _random_specs(rng, k, d, colours=[colour]) + _random_specs(rng, n - k, d, colours=others)
        rng.shuffle(specs)
        scene = _place(rng, specs, sizes)
        if scene is None:
            return None
        verb = "is" if k == 1 else "are"
        return Item(
            "count",
            d,
            (scene,),
            f"How many {colour} shapes are there in the image?",
            str(k),
            pool,
            f"I see {_describe(_left_to_right(scene.shapes))}. {k} of them {verb} {colour}.",
        )
    n = _n_shapes(rng, d)
    scene = _place(rng, _random_specs(rng, n, d), sizes)
    if scene is None:
        return None
    return Item(
        "count",
        d,
        (scene,),
        "How many shapes are there in the image?",
        str(n),
        pool,
        f"I see {_describe(_left_to_right(scene.shapes))}. That is {_plural(n, 'shape')}.",
    )


_DIRECTIONS = {  # name: (axis, take the largest coordinate?, order words)
    "leftmost": ("x", False, "From left to right"),
    "rightmost": ("x", True, "From left to right"),
    "topmost": ("y", False, "From top to bottom"),
    "bottommost": ("y", True, "From top to bottom"),
}


def _position_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    n = {1: 2, 2: rng.randint(3, 4), 3: rng.randint(5, MAX_SHAPES)}[d]
    scene = _place(rng, _random_specs(rng, n, d), sizes)
    if scene is None:
        return None
    direction = rng.choice(list(_DIRECTIONS))
    axis, largest, words = _DIRECTIONS[direction]
    coord = (lambda s: (s.cx, s.cy)) if axis == "x" else (lambda s: (s.cy, s.cx))
    ordered = sorted(scene.shapes, key=coord)
    extreme, runner_up = (ordered[-1], ordered[-2]) if largest else (ordered[0], ordered[1])
    if abs(coord(extreme)[0] - coord(runner_up)[0]) < POSITION_MIN_SEPARATION:
        return None
    reasoning = (
        f"{words} I see {_describe(ordered)}. The {direction} shape is the {extreme.colour} {extreme.kind}."
    )
    if rng.random() < 0.5:
        return Item(
            "position", d, (scene,), f"What shape is the {direction} one?", extreme.kind, SHAPES, reasoning
        )
    question = f"What is the colour of the {direction} shape?"
    return Item("position", d, (scene,), question, extreme.colour, tuple(COLOURS), reasoning)


def _shape_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    n = {1: 1, 2: rng.randint(2, 3), 3: rng.randint(4, MAX_SHAPES)}[d]
    colour = rng.choice(list(COLOURS))
    others = [c for c in COLOURS if c != colour]
    specs = _random_specs(rng, 1, d, colours=[colour]) + _random_specs(rng, n - 1, d, colours=others)
    scene = _place(rng, specs, sizes)
    if scene is None:
        return None
    target = scene.shapes[0]
    return Item(
        "shape",
        d,
        (scene,),
        f"What shape is the {colour} object?",
        target.kind,
        SHAPES,
        f"I see {_describe(_left_to_right(scene.shapes))}. The {colour} object is {_a(target.kind)} {target.kind}.",
    )


def _compare_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    if d == 1:
        scene = _place(rng, _random_specs(rng, rng.randint(2, 3), 1), sizes)
        if scene is None:
            return None
        present = {(s.colour, s.kind) for s in scene.shapes}
        if rng.random() < 0.5:
            colour, kind = rng.choice(sorted(present))
            answer, fact = "yes", f"There is {_a(colour)} {colour} {kind}."
        else:  # a near miss: the colour or the shape of one of the shapes, not both together
            s = rng.choice(scene.shapes)
            misses = [(s.colour, k) for k in SHAPES] + [(c, s.kind) for c in COLOURS]
            misses = [m for m in misses if m not in present]
            colour, kind = rng.choice(misses)
            answer, fact = "no", f"There is no {colour} {kind}."
        return Item(
            "compare",
            d,
            (scene,),
            f"Is there {_a(colour)} {colour} {kind} in the image?",
            answer,
            YES_NO,
            f"I see {_describe(_left_to_right(scene.shapes), kinds=True)}. {fact}",
        )
    if d == 2:
        n = rng.randint(3, 5)
        c1, c2 = rng.sample(list(COLOURS), 2)
        n1, n2 = rng.sample(range(0, 4), 2)
        if n1 + n2 > n or n1 + n2 < 2:
            return None
        rest = [c for c in COLOURS if c not in (c1, c2)]
        specs = (
            _random_specs(rng, n1, d, colours=[c1])
            + _random_specs(rng, n2, d, colours=[c2])
            + _random_specs(rng, n - n1 - n2, d, colours=rest)
        )
        rng.shuffle(specs)
        scene = _place(rng, specs, sizes)
        if scene is None:
            return None
        answer = "yes" if n1 > n2 else "no"
        relation = "more" if n1 > n2 else "not more"
        return Item(
            "compare",
            d,
            (scene,),
            f"Are there more {c1} shapes than {c2} shapes?",
            answer,
            YES_NO,
            f"I see {_describe(_left_to_right(scene.shapes))}. There {_is_are(n1)} {_plural(n1, c1 + ' shape')} "
            f"and {_plural(n2, c2 + ' shape')}. {n1} is {relation} than {n2}, so the answer is {answer}.",
        )
    n = rng.randint(4, MAX_SHAPES)
    palette = rng.sample(list(COLOURS), 3)
    colours = [rng.choice(palette) for _ in range(n)]
    counts = Counter(colours).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    specs = [(rng.choice(SHAPES), c, rng.randint(*SIZE_RANGE[d])) for c in colours]
    scene = _place(rng, specs, sizes)
    if scene is None:
        return None
    tally = _join([f"{c} {_plural(k, 'time')}" for c, k in counts])
    return Item(
        "compare",
        d,
        (scene,),
        "Which colour appears most often in the image?",
        counts[0][0],
        tuple(COLOURS),
        f"I see {_describe(_left_to_right(scene.shapes))}. The colours appear {tally}, "
        f"so {counts[0][0]} appears most often.",
    )


def _multi_image_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    k = 3 if d == 3 else 2
    counts = [rng.randint(1, MAX_SHAPES) for _ in range(k)]
    top = sorted(counts, reverse=True)
    gap = top[0] - top[1]
    if (d == 1 and gap < 3) or (d == 2 and gap not in (1, 2)) or (d == 3 and gap < 1):
        return None
    scenes = []
    # up to 6 shapes of the easy sizes do not fit one 64 px tile: there they take the smallest sizes
    shape_d = d if any(image_tiles(*size) > 1 for size in sizes) else 3
    for c in counts:
        scene = _place(
            rng, _random_specs(rng, c, shape_d), [size for size in sizes if size in IMAGE_SIZES[:3]]
        )
        if scene is None:
            return None
        scenes.append(scene)
    best = counts.index(top[0]) + 1
    placeholders = "".join(f"Image-{i + 1}: <image>\n" for i in range(k))
    question = placeholders + (
        "Which image has more shapes?" if k == 2 else "Which image has the most shapes?"
    )
    facts = _join([f"Image-{i + 1} has {_plural(c, 'shape')}" for i, c in enumerate(counts)])
    most = "more" if k == 2 else "the most"
    pool = tuple(f"Image-{i + 1}" for i in range(k))
    return Item(
        "multi_image",
        d,
        tuple(scenes),
        question,
        f"Image-{best}",
        pool,
        f"{facts}. Image-{best} has {most} shapes.",
        ordered=True,
    )


def _arithmetic_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    if d == 1:
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        if rng.random() < 0.5:
            expr, value = f"{a} + {b}", a + b
        else:
            a, b = max(a, b), min(a, b)
            expr, value = f"{a} - {b}", a - b
        steps = f"{expr} = {value}."
    elif d == 2:
        if rng.random() < 0.5:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            expr, value = f"{a} + {b}", a + b
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            expr, value = f"{a} * {b}", a * b
        steps = f"{expr} = {value}."
    else:
        if rng.random() < 0.5:
            a, b = rng.randint(10, 60), rng.randint(10, 60)
            c = rng.randint(1, min(40, a + b))
            expr, value = f"{a} + {b} - {c}", a + b - c
            steps = f"{a} + {b} = {a + b}, and {a + b} - {c} = {value}."
        else:
            a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20)
            expr, value = f"{a} * {b} + {c}", a * b + c
            steps = f"{a} * {b} = {a * b}, and {a * b} + {c} = {value}."
    near = [value + delta for delta in (-10, -3, -2, -1, 1, 2, 3, 10) if value + delta >= 0]
    return Item(
        "arithmetic", d, (), f"What is {expr}?", str(value), tuple(str(v) for v in [value, *near]), steps
    )


_GENERATORS = {
    "colour": _colour_item,
    "count": _count_item,
    "position": _position_item,
    "shape": _shape_item,
    "compare": _compare_item,
    "multi_image": _multi_image_item,
    "arithmetic": _arithmetic_item,
}


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 10


def make_item(
    rng: Random, skill: str, difficulty: int, split: str = "sft", sizes: Sizes = IMAGE_SIZES
) -> Item:
    """A random item of one skill and difficulty, its images of ``sizes``, whose scenes all belong to
    ``split``'s hash buckets."""
    for _ in range(100_000):  # most tries are cheap (a count or size draw that does not fit the difficulty)
        item = _GENERATORS[skill](rng, difficulty, sizes)
        if item is not None and all(_bucket(key) in _BUCKETS[split] for key in item.keys()):
            return item
    raise RuntimeError(f"could not generate a {skill} item of difficulty {difficulty}")  # pragma: no cover


# --------------------------------------------------------------------------------------- records


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


def _allocate(
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


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _images_field(names: list[str]):
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def _generate_split(
    out: Path,
    split: str,
    n: int,
    seed: int,
    skills: tuple[str, ...] = SKILLS,
    formats: tuple[str, ...] = FORMATS,
    sizes: Sizes = IMAGE_SIZES,
    cot_fraction: float = COT_FRACTION,
) -> tuple[list[Sample], list[list[str]], set, set]:
    """Samples of one split, their image file names (written under OUT/images/split), keys and digests;
    in the sft split, round(cot_fraction * n) records (drawn at random) answer with a chain of thought."""
    rng = Random(f"internvl-mpo-synthetic:{seed}:{split}")
    plan = _allocate(n, rng, skills, formats)
    cot_ids = set(rng.sample(range(n), round(cot_fraction * n))) if split == "sft" else set()
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for old in image_dir.glob(f"{split}-*.png"):  # files of an earlier run into the same OUT
        if re.fullmatch(rf"{split}-\d{{6}}(-\d)?\.png", old.name):
            old.unlink()
    samples, names, keys, digests = [], [], set(), set()
    for i, (skill, difficulty, fmt) in enumerate(tqdm(plan, desc=f"synthetic {split}", disable=None)):
        item = make_item(rng, skill, difficulty, split, sizes)
        sample = make_sample(item, fmt, i in cot_ids, rng)
        files = []
        for k, scene in enumerate(item.scenes):
            name = f"{split}-{i:06d}.png" if len(item.scenes) == 1 else f"{split}-{i:06d}-{k + 1}.png"
            data = _png_bytes(render(scene))
            (image_dir / name).write_bytes(data)
            digests.add(hashlib.sha256(data).hexdigest())
            files.append(name)
        keys.update(item.keys())
        samples.append(sample)
        names.append(files)
    return samples, names, keys, digests


def _meta(name: str, root: str, annotation: str, length: int) -> dict:
    return {
        name: {
            "root": root,
            "annotation": annotation,
            "repeat_time": 1,
            "max_dynamic_patch": 6,
            "data_augment": False,
            "length": length,
        }
    }


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _record(split: str, i: int, s: Sample, files: list[str], **fields) -> dict:
    """One jsonl line of the SFT or QA split: id, images, the split's own ``fields``, then the labels."""
    row: dict = {"id": f"synthetic-{split}-{i:06d}"}
    if files:
        row["image"] = _images_field(files)
    row.update(fields, skill=s.item.skill, difficulty=s.item.difficulty, format=s.fmt, answer=s.answer)
    if s.choices:
        row["choices"] = s.choices
    return row


def _write_split(out: Path, split: str, annotation: str, rows: list[dict]) -> None:
    (out / split).mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / split / annotation, rows)
    _write_json(
        out / split / "meta.json", _meta(f"synthetic_{split}", f"../images/{split}", annotation, len(rows))
    )


EVAL_COLUMNS = [
    *("index", "image_path", "question", "A", "B", "C", "D", "answer", "category", "difficulty"),
    "reasoning",  # the true chain of thought: `mpo eval --cot` counts the right answers that state it
]


def generate(
    out: Path,
    n_sft: int = 2000,
    n_qa: int | None = None,
    n_eval: int | None = None,
    seed: int = 0,
    skills: Sequence[str] = SKILLS,
    formats: Sequence[str] = FORMATS,
    max_tiles: int = 5,
    cot_fraction: float = COT_FRACTION,
) -> dict:
    """Write the three splits under ``out``, with items of ``skills`` only (all seven by default) in
    ``formats`` only (short answer and multiple choice by default, balanced within each skill), with
    images the model sees as at most ``max_tiles`` tiles (all sizes by default; 1: 64 x 64 only), and
    round(``cot_fraction`` * n_sft) SFT records answering with a chain of thought (the rest: the bare answer);
    returns ``{"sft": n, "qa": n, "eval": n, "skills": {split: {skill: n}}}``."""
    out = Path(out)
    for flag, noun, given, known in (
        ("--skills", "skill", skills, SKILLS),
        ("--formats", "format", formats, FORMATS),
    ):
        unknown = sorted(set(given) - set(known))
        if unknown or not given:
            raise UserError(
                f"{flag}: unknown {noun}(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(known)}"
            )
    skills = tuple(s for s in SKILLS if s in skills)
    formats = tuple(f for f in FORMATS if f in formats)
    n_qa = n_sft // 4 if n_qa is None else n_qa
    n_eval = n_sft // 4 if n_eval is None else n_eval
    for name, value in (("--n", n_sft), ("--n-qa", n_qa), ("--n-eval", n_eval)):
        if value < 0:
            raise UserError(f"{name} must be >= 0, got {value}")
    if not 0.0 <= cot_fraction <= 1.0:
        raise UserError(f"--cot-fraction must be between 0 and 1, got {cot_fraction}")
    sizes = {"sft": n_sft, "qa": n_qa, "eval": n_eval}
    shapes = sizes_up_to(max_tiles)
    made = {
        split: _generate_split(out, split, sizes[split], seed, skills, formats, shapes, cot_fraction)
        for split in SPLITS
    }
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not made[a][2] & made[b][2], f"splits {a} and {b} share a scene"
            assert not made[a][3] & made[b][3], f"splits {a} and {b} share an image"

    samples, names = made["sft"][:2]
    rows = [
        _record(
            "sft",
            i,
            s,
            files,
            conversations=[{"from": "human", "value": s.prompt}, {"from": "gpt", "value": s.response}],
            cot=s.cot,
        )
        for i, (s, files) in enumerate(zip(samples, names, strict=True))
    ]
    _write_split(out, "sft", "train.jsonl", rows)
    samples, names = made["qa"][:2]
    rows = [
        _record("qa", i, s, files, question=s.prompt, reasoning=s.item.reasoning)
        for i, (s, files) in enumerate(zip(samples, names, strict=True))
    ]
    _write_split(out, "qa", "qa.jsonl", rows)

    samples, names = made["eval"][:2]
    (out / "eval").mkdir(parents=True, exist_ok=True)
    with (out / "eval" / "eval.tsv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(EVAL_COLUMNS)
        for i, (s, files) in enumerate(zip(samples, names, strict=True)):
            paths = [f"../images/eval/{name}" for name in files]
            image_path = "" if not paths else paths[0] if len(paths) == 1 else json.dumps(paths)
            choices = s.choices or {}
            options = [choices.get(letter, "") for letter in LETTERS]
            writer.writerow(
                [
                    i,
                    image_path,
                    s.item.question,
                    *options,
                    s.answer,
                    s.item.skill,
                    s.item.difficulty,
                    s.item.reasoning,
                ]
            )

    counts: dict = {split: sizes[split] for split in SPLITS}
    counts["skills"] = {split: dict(Counter(s.item.skill for s in made[split][0])) for split in SPLITS}
    return counts


# ------------------------------------------------------------------------------------------ chance


@cache
def _arithmetic_answer_space(difficulty: int) -> int:
    if difficulty == 1:
        values = set(range(0, 61))
    elif difficulty == 2:
        values = set(range(20, 199)) | {a * b for a in range(2, 13) for b in range(2, 13)}
    else:
        values = {s - c for s in range(20, 121) for c in range(1, min(40, s) + 1)}
        values |= {a * b + c for a in range(2, 10) for b in range(2, 10) for c in range(1, 21)}
    return len(values)


def chance_accuracy(record: dict) -> float:
    """Expected accuracy of a uniform random guess for one record (qa/sft line or eval TSV row).

    Multiple choice: 1 / number of options. Short answer: 1 / size of the answer space of its
    question type (yes/no, colours, shapes, images, counts 1..6, arithmetic results); 0 if unknown.
    """
    choices = record.get("choices") or {
        letter: record[letter]
        for letter in LETTERS
        if str(record.get(letter) or "").strip() not in ("", "nan")
    }
    if choices:
        return 1.0 / len(choices)
    answer = str(record.get("answer", "")).strip().lower()
    skill = record.get("skill") or record.get("category")
    if answer in YES_NO:
        return 1 / len(YES_NO)
    if answer in COLOURS:
        return 1 / len(COLOURS)
    if answer in SHAPES:
        return 1 / len(SHAPES)
    if re.fullmatch(r"image-\d+", answer):
        question = str(record.get("question", ""))
        return 1 / max(2, question.count("<image>"))
    if skill == "count":
        return 1 / MAX_SHAPES
    if skill == "arithmetic":
        try:
            difficulty = int(record.get("difficulty") or 2)
        except ValueError:
            difficulty = 2
        return 1 / _arithmetic_answer_space(min(3, max(1, difficulty)))
    return 0.0


# --------------------------------------------------------------------------------------------- cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mpo synthetic",
        description="Generate the synthetic visual QA task (coloured shapes): SFT, QA and eval splits under OUT.",
    )
    parser.add_argument("out", metavar="OUT", type=Path, help="output folder")
    parser.add_argument("--n", type=int, default=2000, help="SFT records (default 2000)")
    parser.add_argument(
        "--n-qa", type=int, default=None, help="QA records for the preference pipeline (default n/4)"
    )
    parser.add_argument("--n-eval", type=int, default=None, help="evaluation records (default n/4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skills",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=list(SKILLS),
        help=f"comma-separated subset of {','.join(SKILLS)} (default all)",
    )
    parser.add_argument(
        "--formats",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=list(FORMATS),
        help="comma-separated subset of short,mc (default both)",
    )
    parser.add_argument(
        "--max-tiles",
        type=int,
        default=5,
        help="largest image, in tiles the model sees (1: 64 x 64 only; default 5: all sizes)",
    )
    parser.add_argument(
        "--cot-fraction",
        type=float,
        default=COT_FRACTION,
        help=f"share of SFT records answered with a chain of thought (default {COT_FRACTION})",
    )
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"{args.out} exists and is not a folder")
    counts = generate(
        args.out,
        args.n,
        args.n_qa,
        args.n_eval,
        args.seed,
        args.skills,
        args.formats,
        args.max_tiles,
        args.cot_fraction,
    )
    per_skill = Counter()
    for skills in counts["skills"].values():
        per_skill.update(skills)
    splits = ", ".join(f"{split} {counts[split]}" for split in SPLITS)
    skills = ", ".join(f"{skill} {per_skill[skill]}" for skill in SKILLS if per_skill[skill])
    print(f"mpo synthetic: wrote {args.out}: {splits} | per skill: {skills}")
    return 0
