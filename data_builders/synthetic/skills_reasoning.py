"""Skills that relate things: compare (presence, more-than, most frequent), multi-image and arithmetic.

Generators of the contract in :mod:`data_builders.synthetic.item`.
"""

from __future__ import annotations

from collections import Counter
from random import Random

from data_builders.synthetic.item import YES_NO, Item
from data_builders.synthetic.scenes import (
    COLOURS,
    IMAGE_SIZES,
    MAX_SHAPES,
    SHAPES,
    SIZE_RANGE,
    Sizes,
    image_tiles,
    place,
    random_specs,
)
from data_builders.synthetic.wording import article, describe, is_are, join_words, left_to_right, plural


def compare_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
    if d == 1:
        scene = place(rng, random_specs(rng, rng.randint(2, 3), 1), sizes)
        if scene is None:
            return None
        present = {(s.colour, s.kind) for s in scene.shapes}
        if rng.random() < 0.5:
            colour, kind = rng.choice(sorted(present))
            answer, fact = "yes", f"There is {article(colour)} {colour} {kind}."
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
            f"Is there {article(colour)} {colour} {kind} in the image?",
            answer,
            YES_NO,
            f"I see {describe(left_to_right(scene.shapes), kinds=True)}. {fact}",
        )
    if d == 2:
        n = rng.randint(3, 5)
        c1, c2 = rng.sample(list(COLOURS), 2)
        n1, n2 = rng.sample(range(0, 4), 2)
        if n1 + n2 > n or n1 + n2 < 2:
            return None
        rest = [c for c in COLOURS if c not in (c1, c2)]
        specs = (
            random_specs(rng, n1, d, colours=[c1])
            + random_specs(rng, n2, d, colours=[c2])
            + random_specs(rng, n - n1 - n2, d, colours=rest)
        )
        rng.shuffle(specs)
        scene = place(rng, specs, sizes)
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
            f"I see {describe(left_to_right(scene.shapes))}. There {is_are(n1)} {plural(n1, c1 + ' shape')} "
            f"and {plural(n2, c2 + ' shape')}. {n1} is {relation} than {n2}, so the answer is {answer}.",
        )
    n = rng.randint(4, MAX_SHAPES)
    palette = rng.sample(list(COLOURS), 3)
    colours = [rng.choice(palette) for _ in range(n)]
    counts = Counter(colours).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    specs = [(rng.choice(SHAPES), c, rng.randint(*SIZE_RANGE[d])) for c in colours]
    scene = place(rng, specs, sizes)
    if scene is None:
        return None
    tally = join_words([f"{c} {plural(k, 'time')}" for c, k in counts])
    return Item(
        "compare",
        d,
        (scene,),
        "Which colour appears most often in the image?",
        counts[0][0],
        tuple(COLOURS),
        f"I see {describe(left_to_right(scene.shapes))}. The colours appear {tally}, "
        f"so {counts[0][0]} appears most often.",
    )


def multi_image_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
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
        scene = place(rng, random_specs(rng, c, shape_d), [size for size in sizes if size in IMAGE_SIZES[:3]])
        if scene is None:
            return None
        scenes.append(scene)
    best = counts.index(top[0]) + 1
    placeholders = "".join(f"Image-{i + 1}: <image>\n" for i in range(k))
    question = placeholders + (
        "Which image has more shapes?" if k == 2 else "Which image has the most shapes?"
    )
    facts = join_words([f"Image-{i + 1} has {plural(c, 'shape')}" for i, c in enumerate(counts)])
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


def arithmetic_item(rng: Random, d: int, sizes: Sizes = IMAGE_SIZES) -> Item | None:
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
