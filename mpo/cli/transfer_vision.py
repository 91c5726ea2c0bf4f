"""`mpo transfer-vision`: move a vision tower trained with a small LLM into a checkpoint with a larger LLM."""

from __future__ import annotations

import argparse
from pathlib import Path

from mpo.errors import UserError
from mpo.models.transfer import transfer_vision


def main(argv: list[str]) -> int:
    """``mpo transfer-vision --vision FROM --into TARGET --out OUT [--seed 0] [--max-shard-size 5GB]``."""
    parser = argparse.ArgumentParser(prog="mpo transfer-vision", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--vision",
        required=True,
        metavar="FROM",
        help="checkpoint whose vision tower to take (e.g. the stage-1.5 output of a small-LLM run)",
    )
    parser.add_argument(
        "--into",
        required=True,
        metavar="TARGET",
        help="checkpoint with the LLM (and config, processor, tokenizer) to keep",
    )
    parser.add_argument("--out", required=True, help="output directory (created; must be empty if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a fresh projector (default 0)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MB")
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: expected a number >= 0")
    result = transfer_vision(args.vision, args.into, args.out, args.seed, args.max_shard_size)
    print(result.summary(Path(args.vision), Path(args.into), Path(args.out)))
    return 0
