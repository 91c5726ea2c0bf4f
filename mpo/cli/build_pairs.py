"""`mpo build-pairs`: preference pairs from the model itself, in the MMPR layout (:mod:`data_builders.build_pairs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_builders.build_pairs import merge, run, summary
from data_builders.builders import BUILDERS
from data_builders.output import IMAGE_ROOTS
from mpo.cli.options import add_vllm_arguments
from mpo.publishing.dashboards import log_report_artifact


def _add_io_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input and output")
    g.add_argument("--model", required=True, help="checkpoint (native InternVL folder) that generates")
    g.add_argument("--data", required=True, type=Path, help="meta.json (all subsets) or one .jsonl file")
    g.add_argument(
        "--out", required=True, type=Path, help="output folder (MMPR layout, report, shard journals)"
    )
    g.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder the meta.json's relative root/annotation paths are relative to (default: the "
        "meta.json's folder where they exist there, else the working directory)",
    )
    g.add_argument(
        "--path-map",
        nargs="+",
        default=[],
        metavar="OLD=NEW",
        help="rewrite meta.json path prefixes written on another machine, e.g. /mnt/petrelfs/x=/data/x",
    )
    # the recipes' spellings (data_root, path_map: `mpo train --data_root ...`), accepted, not listed
    g.add_argument("--data_root", dest="data_root", type=Path, default=None, help=argparse.SUPPRESS)
    g.add_argument("--path_map", dest="path_map", nargs="+", default=[], help=argparse.SUPPRESS)
    g.add_argument("--limit", type=int, default=None, help="use only the first LIMIT questions")
    g.add_argument(
        "--max-dynamic-patch", type=int, default=None, help="tiles per image (default: the subset's)"
    )
    g.add_argument(
        "--copy-images",
        action="store_true",
        help="copy the images under OUT/images (default: reference them)",
    )
    g.add_argument(
        "--image-root",
        choices=IMAGE_ROOTS,
        default="relative",
        help="write subset roots relative to OUT (default) or absolute",
    )


def _add_generation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument(
        "--backend",
        choices=["auto", "transformers", "vllm"],
        default="auto",
        help="auto: vLLM when it imports and a GPU is present, else transformers",
    )
    g.add_argument("--batch-size", type=int, default=8, help="questions per generation call (default 8)")
    add_vllm_arguments(g)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--seed", type=int, default=0, help="every question is seeded from (seed, question key)")
    g.add_argument(
        "--shard", default=None, metavar="I/N", help="do shard I of N (default: RANK/WORLD_SIZE, else 0/1)"
    )
    g.add_argument("--no-merge", action="store_true", help="do not merge the shards when this one finishes")


def _add_filter_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters")
    g.add_argument(
        "--max-words", type=int, default=1000, help="drop pairs with a longer response (0: no limit)"
    )
    g.add_argument("--repetition-n", type=int, default=4, help="word n-gram size of the repetition filter")
    g.add_argument(
        "--repetition-threshold",
        type=float,
        default=0.3,
        help="drop when more than this fraction of n-grams repeat (default 0.3)",
    )
    g.add_argument(
        "--repetition-in",
        choices=["chosen", "both"],
        default="chosen",
        help="which responses the repetition filter checks (default chosen)",
    )
    g.add_argument(
        "--quality-prompt",
        type=Path,
        default=None,
        help="judge prompt file with {question} and {response}: score chosen responses with the same model",
    )
    g.add_argument(
        "--quality-threshold", type=float, default=5.0, help="drop pairs whose chosen scores below this"
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    """The flags every pipeline shares: reports, input and output, generation, filters."""
    p.add_argument(
        "--report-to",
        choices=["none", "wandb"],
        default="none",
        help="also log report.json, report.md and the histogram as a wandb artifact",
    )
    _add_io_arguments(p)
    _add_generation_arguments(p)
    _add_filter_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per pipeline of :data:`data_builders.builders.BUILDERS`, and ``merge``."""
    parser = argparse.ArgumentParser(
        prog="mpo build-pairs",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="pipeline", required=True)
    for name, builder in BUILDERS.items():
        p = sub.add_parser(name, help=builder.help)
        _add_common(p)
        builder.add_arguments(p)
    p = sub.add_parser("merge", help="combine finished shards into the MMPR layout and the report")
    p.add_argument("out", type=Path, metavar="DIR")
    p.add_argument("--copy-images", action="store_true")
    p.add_argument("--image-root", choices=IMAGE_ROOTS, default="relative")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.pipeline == "merge":
        report = merge(args.out, copy_images=args.copy_images, image_root=args.image_root)
    else:
        report = run(args)
    if report is not None:
        print(summary(report, args.out))
        for line in report["bad_rows"].get("summary", []):
            print(line)
        if getattr(args, "report_to", "none") == "wandb":
            files = [args.out / name for name in ("report.json", "report.md", "accuracy_histogram.png")]
            log_report_artifact(f"pairs-{args.out.name}", "preference-data-report", files)
    return 0
