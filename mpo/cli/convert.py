"""`mpo convert`: convert InternVL checkpoints between the original OpenGVLab layout and native transformers (:mod:`mpo.models.convert`)."""

from __future__ import annotations

import argparse
import sys

from mpo.errors import UserError
from mpo.models import families
from mpo.models.convert import convert


def main(argv: list[str]) -> int:
    """``mpo convert SRC DST [--to native|original] [--max-shard-size 5GB] [--code-from ORIGINAL] [--family F]``."""
    parser = argparse.ArgumentParser(prog="mpo convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="checkpoint directory to convert")
    parser.add_argument("dst", help="output directory (created; must be empty if it exists)")
    parser.add_argument("--to", choices=["native", "original"], default="native", help="target layout")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MB")
    parser.add_argument(
        "--family",
        choices=list(families.FAMILIES),
        default=None,
        help="SRC's model family when its config.json has no mpo_family (default: internvl2_5)",
    )
    parser.add_argument(
        "--code-from",
        help="--to original: an original checkpoint whose remote code (*.py) and tokenizer files to copy",
    )
    args = parser.parse_args(argv)
    if args.code_from and args.to != "original":
        raise UserError("--code-from applies to --to original only")
    result = convert(args.src, args.dst, args.to, args.max_shard_size, args.code_from, args.family)
    if result:
        print(f"{args.src} -> {args.dst} ({args.to} layout, {len(result)} weight file(s))")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
