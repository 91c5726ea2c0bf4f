"""`mpo eval`: evaluate a checkpoint on benchmarks, or compare finished evaluations (:mod:`eval.run`).

The flags -> :class:`~eval.config.EvalConfig` (checked) -> :func:`eval.run.evaluate`, or ``--compare``.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from eval.config import (
    BAD_ROWS,
    DEFAULT_MAX_DYNAMIC_PATCH,
    DEFAULT_SAMPLE_TEMPERATURE,
    ON_BAD_ROW,
    SCORERS,
    EvalConfig,
    bad_row_policy,
)
from eval.reports import COMPARE_SCALING_PLOT, SCALING_PLOT, compare
from eval.run import evaluate, summary_line
from eval.scaling import AGGREGATES
from mpo.cli.options import add_vllm_arguments
from mpo.errors import UserError
from mpo.generation import vllm_options
from mpo.publishing.dashboards import log_report_artifact


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint folder (native InternVL)")
    parser.add_argument(
        "--data",
        action="append",
        metavar="[NAME=]FILE",
        help="benchmark: .tsv (VLMEvalKit), .jsonl (MMPR-style with answer) or meta.json; repeatable",
    )
    parser.add_argument(
        "--cot",
        action="store_true",
        help='chain-of-thought prompt, answer read after "Final answer:" (default: direct answer)',
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")


def _add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=["auto", "transformers", "vllm"],
        default="auto",
        help="generation backend (auto: vLLM when it imports and a GPU is present)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="prompts per generate call; predictions are saved after each (default 16, vLLM 512)",
    )
    add_vllm_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 64, or 1024 with --cot")
    parser.add_argument(
        "--max-dynamic-patch",
        type=int,
        default=DEFAULT_MAX_DYNAMIC_PATCH,
        help=f"tiles per sample, split across its images (default {DEFAULT_MAX_DYNAMIC_PATCH})",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N items of each benchmark")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier predictions in --out")
    parser.add_argument(
        "--on-bad-row",
        type=bad_row_policy,  # `error`, the older spelling, is `fail`
        choices=list(ON_BAD_ROW),
        default="fail",
        help="fail: stop at the first bad row (file:line: field); skip: leave bad rows out, "
        f"listed in --out/{BAD_ROWS}",
    )
    parser.add_argument(
        "--judge-model",
        default=None,
        metavar="M",
        help="checkpoint that judges MathVista answer extraction and MMVet grading (opt-in; "
        "without it those benchmarks report exact match only)",
    )


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        metavar="N",
        help="sample N responses per item and keep one by --aggregate; results add the accuracy "
        "at N = 1, 2, 4, ..., N (default 1)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"sampling temperature (default 0: greedy with one sample, {DEFAULT_SAMPLE_TEMPERATURE} "
        "with --num-samples > 1)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="sampling seed (each item's samples: this and its index)"
    )
    parser.add_argument(
        "--aggregate",
        choices=list(AGGREGATES),
        default="majority",
        help="majority: vote on the extracted final answers (ties: the answer voted first); "
        "best-of-n: the response with the highest --scorer score",
    )
    parser.add_argument(
        "--scorer",
        choices=list(SCORERS),
        default=None,
        help="best-of-n scorer: reward (default), the DPO implicit reward "
        "beta*(log pi - log pi_ref) against --reference; judge: --judge-model's grade",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="M",
        help="reference checkpoint of --scorer reward (the SFT model the evaluated one was trained from)",
    )
    parser.add_argument("--beta", type=float, default=None, help="beta of --scorer reward (default 0.1)")


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report-to",
        choices=["none", "wandb"],
        default="none",
        help="also log the results (or the comparison) as a wandb artifact",
    )
    parser.add_argument(
        "--compare", nargs="+", type=Path, metavar="DIR", help="finished evaluation folders to compare"
    )
    parser.add_argument(
        "--names", nargs="+", help="with --compare: a name per folder (default: folder names)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The flags of `mpo eval`: inputs, generation, sampling, reports and --compare."""
    parser = argparse.ArgumentParser(
        prog="mpo eval",
        description="Evaluate a checkpoint on VLMEvalKit TSV / MMPR-style jsonl benchmarks, "
        "or compare finished evaluations (--compare).",
    )
    _add_input_arguments(parser)
    _add_generation_arguments(parser)
    _add_sampling_arguments(parser)
    _add_report_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The evaluation the parsed flags ask for (checked: a bad value stops with a one-line error): each
    flag goes to the field of its name, the vLLM flags to ``vllm_options``."""
    given = {f.name: getattr(args, f.name) for f in fields(EvalConfig) if f.init and hasattr(args, f.name)}
    return EvalConfig(**given, vllm_options=vllm_options(args))


def _log_files(out: Path, names: tuple[str, ...], artifact: str) -> None:
    """Log the files of ``names`` that exist under ``out`` as a wandb artifact."""
    files = [out / name for name in names if (out / name).is_file()]
    log_report_artifact(f"{artifact}-{out.name}", "evaluation-report", files)


def _compare(args) -> int:
    """`mpo eval --compare DIR ...`: the comparison report of finished evaluations."""
    if args.model or args.data:
        raise UserError("--compare takes finished evaluation folders; it does not run --model / --data")
    report = compare(args.compare, args.out, args.names)
    print((args.out / "compare.md").read_text(encoding="utf-8"))
    plots = "compare.png" + (f", {COMPARE_SCALING_PLOT}" if "test_time_scaling" in report else "")
    print(f"mpo eval: compared {len(report['runs'])} runs -> {args.out}/compare.md, {plots}")
    if args.report_to == "wandb":
        names = ("compare.md", "compare.json", "compare.png", COMPARE_SCALING_PLOT)
        _log_files(args.out, names, "eval-compare")
    return 0


def main(argv: list[str]) -> int:
    """`mpo eval`: flags -> :class:`EvalConfig` -> :func:`evaluate` (or ``--compare``)."""
    args = build_parser().parse_args(argv)
    if args.compare:
        return _compare(args)
    if not args.model or not args.data:
        raise UserError("give --model and at least one --data (or --compare DIR ...)")
    results = evaluate(config_from_args(args))
    print(summary_line(results, args.out))
    if args.report_to == "wandb":
        _log_files(args.out, ("results.json", "results.md", SCALING_PLOT), "eval")
    return 0
