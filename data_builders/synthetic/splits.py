"""Generate the three splits: draw each split's samples (its own seed and hash buckets), draw their images
into ``OUT/images/<split>``, check that no two splits share a scene or an image, write the files."""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

from PIL import Image
from tqdm import tqdm

from data_builders.synthetic.samples import (
    COT_FRACTION,
    FORMATS,
    SKILLS,
    SPLITS,
    Sample,
    allocate,
    make_item,
    make_sample,
)
from data_builders.synthetic.scenes import IMAGE_SIZES, Sizes, render, sizes_up_to
from data_builders.synthetic.writers import write_eval, write_qa, write_sft
from mpo.errors import UserError


@dataclass
class Split:
    """One split's samples, the image file names of each, and its scene keys and image digests."""

    samples: list[Sample] = field(default_factory=list)
    names: list[list[str]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    digests: set[str] = field(default_factory=set)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _image_dir(out: Path, split: str) -> Path:
    """``OUT/images/<split>``, without the image files an earlier run into the same OUT left there."""
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for old in image_dir.glob(f"{split}-*.png"):
        if re.fullmatch(rf"{split}-\d{{6}}(-\d)?\.png", old.name):
            old.unlink()
    return image_dir


def generate_split(
    out: Path,
    split: str,
    n: int,
    seed: int,
    skills: tuple[str, ...] = SKILLS,
    formats: tuple[str, ...] = FORMATS,
    sizes: Sizes = IMAGE_SIZES,
    cot_fraction: float = COT_FRACTION,
) -> Split:
    """The samples of one split, their images written under OUT/images/split; in the sft split,
    round(cot_fraction * n) records (drawn at random) answer with a chain of thought."""
    rng = Random(f"internvl-mpo-synthetic:{seed}:{split}")
    plan = allocate(n, rng, skills, formats)
    cot_ids = set(rng.sample(range(n), round(cot_fraction * n))) if split == "sft" else set()
    image_dir = _image_dir(out, split)
    made = Split()
    for i, (skill, difficulty, fmt) in enumerate(tqdm(plan, desc=f"synthetic {split}", disable=None)):
        item = make_item(rng, skill, difficulty, split, sizes)
        sample = make_sample(item, fmt, i in cot_ids, rng)
        files = []
        for k, scene in enumerate(item.scenes):
            name = f"{split}-{i:06d}.png" if len(item.scenes) == 1 else f"{split}-{i:06d}-{k + 1}.png"
            data = _png_bytes(render(scene))
            (image_dir / name).write_bytes(data)
            made.digests.add(hashlib.sha256(data).hexdigest())
            files.append(name)
        made.keys.update(item.keys())
        made.samples.append(sample)
        made.names.append(files)
    return made


def _chosen(flag: str, noun: str, given: Sequence[str], known: tuple[str, ...]) -> tuple[str, ...]:
    """The ``known`` values that are in ``given``, in ``known``'s order; an unknown or no value is an error."""
    unknown = sorted(set(given) - set(known))
    if unknown or not given:
        raise UserError(
            f"{flag}: unknown {noun}(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}"
        )
    return tuple(value for value in known if value in given)


def _check_disjoint(made: dict[str, Split]) -> None:
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not made[a].keys & made[b].keys, f"splits {a} and {b} share a scene"
            assert not made[a].digests & made[b].digests, f"splits {a} and {b} share an image"


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
    skills = _chosen("--skills", "skill", skills, SKILLS)
    formats = _chosen("--formats", "format", formats, FORMATS)
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
        split: generate_split(out, split, sizes[split], seed, skills, formats, shapes, cot_fraction)
        for split in SPLITS
    }
    _check_disjoint(made)
    write_sft(out, made["sft"].samples, made["sft"].names)
    write_qa(out, made["qa"].samples, made["qa"].names)
    write_eval(out, made["eval"].samples, made["eval"].names)
    counts: dict = {split: sizes[split] for split in SPLITS}
    counts["skills"] = {split: dict(Counter(s.item.skill for s in made[split].samples)) for split in SPLITS}
    return counts
