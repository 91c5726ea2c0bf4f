"""`mpo push`: write the model card of a run and upload it to the Hugging Face Hub (--dry-run: list only)."""

from __future__ import annotations

import argparse

from mpo.publishing.card import DEFAULT_LICENSE
from mpo.publishing.hub import push


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mpo push",
        description="Write a model card for a training run and upload the folder to the Hugging Face Hub.",
    )
    parser.add_argument("--model", required=True, help="the run's output_dir (a saved checkpoint)")
    parser.add_argument(
        "--repo-id", required=True, help="ORG/NAME on the Hub (NAME alone: the token's namespace)"
    )
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument(
        "--dry-run", action="store_true", help="write the card and list the files; upload nothing"
    )
    parser.add_argument(
        "--base-model", help="Hub id of the base model (default: the run's model when it is a Hub id)"
    )
    parser.add_argument(
        "--dataset", nargs="+", action="extend", default=[], metavar="ID", help="Hub dataset ids"
    )
    parser.add_argument("--pairs-report", help="report.json of `mpo build-pairs` (or its folder)")
    parser.add_argument(
        "--eval",
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="`mpo eval` output folders (results.json), one table column each",
    )
    parser.add_argument(
        "--no-discover",
        action="store_true",
        help="do not look for the pairs report and eval results next to the run",
    )
    parser.add_argument("--license", default=DEFAULT_LICENSE, help=f"license id (default {DEFAULT_LICENSE})")
    parser.add_argument("--commit-message", default=None)
    args = parser.parse_args(argv)
    push(
        args.model,
        args.repo_id,
        private=True if args.private else None,
        dry_run=args.dry_run,
        base_model=args.base_model,
        datasets=args.dataset,
        license=args.license,
        pairs_report=args.pairs_report,
        eval_dirs=args.eval,
        discover=not args.no_discover,
        commit_message=args.commit_message,
    )
    return 0
