"""`mpo synthetic OUT`: generate the synthetic visual QA task's three splits (:mod:`data_builders.synthetic`)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from data_builders.synthetic.samples import COT_FRACTION, FORMATS, SKILLS, SPLITS
from data_builders.synthetic.splits import generate
from mpo.errors import UserError


def _names(text: str) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [s.strip() for s in text.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The flags of `mpo synthetic`."""
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
        type=_names,
        default=list(SKILLS),
        help=f"comma-separated subset of {','.join(SKILLS)} (default all)",
    )
    parser.add_argument(
        "--formats",
        type=_names,
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
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
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
    per_skill: Counter = Counter()
    for skills in counts["skills"].values():
        per_skill.update(skills)
    splits = ", ".join(f"{split} {counts[split]}" for split in SPLITS)
    skills = ", ".join(f"{skill} {per_skill[skill]}" for skill in SKILLS if per_skill[skill])
    print(f"mpo synthetic: wrote {args.out}: {splits} | per skill: {skills}")
    return 0
