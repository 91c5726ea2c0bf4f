"""Skills that read one scene: the colour, count, position and shape questions, each at three difficulties.

Generators of the contract in :mod:`data_builders.synthetic.item`.
"""

from __future__ import annotations

from random import Random

from data_builders.synthetic.item import Item
from data_builders.synthetic.scenes import (
    COLOURS,
    IMAGE_SIZES,
    MAX_SHAPES,
    POSITION_MIN_SEPARATION,
    SHAPES,
    SIZE_RANGE,
    Sizes,
    n_shapes,
    place,
    random_specs,
    shape_area,
)
from data_builders.synthetic.wording import article, describe, left_to_right, plural


def colour_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    if d == 1:
        scene = place(rng, random_specs(rng, 1, 1), sizes)
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
    others = random_specs(rng, n - 1, d)
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
    scene = place(rng, specs, sizes)
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
        f"I see {describe(left_to_right(scene.shapes))}. The largest one is the {big.colour} {big.kind}.",
    )


def count_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    pool = tuple(str(i) for i in range(1, MAX_SHAPES + 1))
    if d == 3 and rng.random() < 0.5:
        n = rng.randint(4, MAX_SHAPES)
        colour = rng.choice(list(COLOURS))
        k = rng.randint(1, min(4, n - 1))
        others = [c for c in COLOURS if c != colour]
        specs = random_specs(rng, k, d, colours=[colour]) + random_specs(rng, n - k, d, colours=others)
        rng.shuffle(specs)
        scene = place(rng, specs, sizes)
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
            f"I see {describe(left_to_right(scene.shapes))}. {k} of them {verb} {colour}.",
        )
    n = n_shapes(rng, d)
    scene = place(rng, random_specs(rng, n, d), sizes)
    if scene is None:
        return None
    return Item(
        "count",
        d,
        (scene,),
        "How many shapes are there in the image?",
        str(n),
        pool,
        f"I see {describe(left_to_right(scene.shapes))}. That is {plural(n, 'shape')}.",
    )


_DIRECTIONS = {  # name: (axis, take the largest coordinate?, order words)
    "leftmost": ("x", False, "From left to right"),
    "rightmost": ("x", True, "From left to right"),
    "topmost": ("y", False, "From top to bottom"),
    "bottommost": ("y", True, "From top to bottom"),
}


def position_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    n = {1: 2, 2: rng.randint(3, 4), 3: rng.randint(5, MAX_SHAPES)}[d]
    scene = place(rng, random_specs(rng, n, d), sizes)
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
        f"{words} I see {describe(ordered)}. The {direction} shape is the {extreme.colour} {extreme.kind}."
    )
    if rng.random() < 0.5:
        return Item(
            "position", d, (scene,), f"What shape is the {direction} one?", extreme.kind, SHAPES, reasoning
        )
    question = f"What is the colour of the {direction} shape?"
    return Item("position", d, (scene,), question, extreme.colour, tuple(COLOURS), reasoning)


def shape_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    n = {1: 1, 2: rng.randint(2, 3), 3: rng.randint(4, MAX_SHAPES)}[d]
    colour = rng.choice(list(COLOURS))
    others = [c for c in COLOURS if c != colour]
    specs = random_specs(rng, 1, d, colours=[colour]) + random_specs(rng, n - 1, d, colours=others)
    scene = place(rng, specs, sizes)
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
        f"I see {describe(left_to_right(scene.shapes))}. The {colour} object is {article(target.kind)} {target.kind}.",
    )
