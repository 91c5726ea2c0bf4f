"""The sweep behind `make demo`'s configuration: one named variant of the `full` scale per call.

    python -m benchmarks.demo_sweep NAME [--out DIR] [--reuse DIR]

Each run appends one line to benchmarks/results/demo_sweep.jsonl (held-out accuracy of SFT and MPO,
greedy and sampled, the pair split, the McNemar p-value, wall time); ``--table`` writes
benchmarks/results/demo_sweep.md from those lines. ``--reuse DIR`` copies the finished steps of an
earlier run whose data and SFT settings are the same (tiny model, data, SFT stages and their evaluation,
and pairs when ``--reuse-pairs``), so that a variant of the pairs or of MPO only pays for what it changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from mpo import demo
from mpo.grading.statistics import mcnemar

RESULTS = Path(__file__).resolve().parent / "results"
LOG = RESULTS / "demo_sweep.jsonl"
FULL = demo.SCALES["full"]
OLD = dict(formats=("short", "mc"), max_tiles=5)  # the task before issue 18
# `full` before the chain-of-thought share became a knob: 30 % CoT answers in SFT, pairs from 300 questions
C30 = dataclasses.replace(FULL, cot_fraction=0.3, pair_questions=300, pair_args=(), mpo_args=())
Q1000 = dict(pair_questions=1000, pair_args=("--max-pairs-per-question", "3"))  # more scenes, fewer per scene


def _lr(lr: str, *more: str) -> dict:
    return dict(mpo_args=("--learning_rate", lr, *more))


VARIANTS: dict[str, demo.Scale] = {
    "old-full": dataclasses.replace(C30, **OLD, sft_steps=None),
    "full": FULL,
    "c30": C30,
    # MPO on the c30 SFT checkpoint (run with --reuse /tmp/demo_sweep/full [--reuse-pairs])
    "lr2e-4": dataclasses.replace(C30, **_lr("2e-4")),
    "lr5e-4": dataclasses.replace(C30, **_lr("5e-4")),
    "q1000-cap3-lr2e-4": dataclasses.replace(C30, **Q1000, **_lr("2e-4")),
    "q1000-cap3-lr5e-5": dataclasses.replace(C30, **Q1000),
    # the MPO paper's premise: SFT data mostly direct answers, so CoT after SFT trails the direct answer
    "cot0.05": dataclasses.replace(C30, cot_fraction=0.05),
    "cot0.1": dataclasses.replace(C30, cot_fraction=0.1),
    # MPO on the cot0.05 SFT checkpoint (--reuse /tmp/demo_sweep/cot0.05)
    "c05-q1000-cap3-lr2e-4": dataclasses.replace(C30, cot_fraction=0.05, **Q1000, **_lr("2e-4")),
    # fewer still: 160 chain-of-thought answers of 8000 (the `full` default since this sweep)
    "c02-q1000-cap3-lr2e-4": dataclasses.replace(C30, cot_fraction=0.02, **Q1000, **_lr("2e-4")),
    # MPO on the c02 SFT checkpoint and pairs (--reuse /tmp/demo_sweep/c02-q1000-cap3-lr2e-4 --reuse-pairs)
    "c02-q1000-cap3-lr5e-4": dataclasses.replace(C30, cot_fraction=0.02, **Q1000, **_lr("5e-4")),
    "c02-q1000-cap3-lr5e-5": dataclasses.replace(C30, cot_fraction=0.02, **Q1000),
    "c02-q1000-cap3-lr2e-4-beta0.5": dataclasses.replace(
        C30, cot_fraction=0.02, **Q1000, **_lr("2e-4", "--beta", "0.5")
    ),
    "c02-q1000-cap3-lr2e-4-2ep": dataclasses.replace(
        C30, cot_fraction=0.02, **Q1000, **_lr("2e-4", "--num_train_epochs", "2")
    ),
}


def summarise(out: Path) -> dict:
    """The numbers of one finished demo run."""
    ev = out / "eval"
    acc = {
        n: json.loads((ev / n / "results.json").read_text())["overall"]["accuracy"] for n in ("sft", "mpo")
    }
    sampled = {}
    for n in ("sft", "mpo"):
        curve = json.loads((ev / f"{n}_majority" / "results.json").read_text())["test_time_scaling"]["curve"]
        sampled[n] = {"n1": curve[0]["accuracy"], f"maj{curve[-1]['n']}": curve[-1]["accuracy"]}
    direct = {
        n: json.loads((ev / f"{n}_direct" / "results.json").read_text())["overall"]["accuracy"]
        for n in ("sft", "mpo")
        if (ev / f"{n}_direct" / "results.json").is_file()
    }
    test = mcnemar(demo.correctness(ev / "sft"), demo.correctness(ev / "mpo"))
    status = json.loads((out / "pairs" / "report.json").read_text())["questions"]["by_status"]
    return {
        "sft": acc["sft"],
        "mpo": acc["mpo"],
        "sampled": sampled,
        "direct": direct,
        "p_value": test.p_value,
        "discordant": [test.only_first, test.only_second],
        "pairs": {
            "mixed": status.get("paired", 0) + status.get("no_pair_kept", 0),
            "all_correct": status.get("all_correct", 0),
            "none_correct": status.get("none_correct", 0),
        },
    }


NOTES = Path(__file__).resolve().parent / "results" / "demo_sweep_notes.md"  # the analysis, written by hand


def table() -> str:
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]
    lines = [
        "# `make demo` sweep",
        "",
        "Produced by `python -m benchmarks.demo_sweep NAME` (one line each in demo_sweep.jsonl; the variants "
        "are in benchmarks/demo_sweep.py); 2 shared CPU cores. Held-out accuracy in %, chain-of-thought: "
        "greedy (SFT, MPO, McNemar p on the same items) and one sampled response at temperature 0.7 "
        "(N = 1) and the majority vote. Pairs: questions with both correct and incorrect samples / all "
        "correct / none correct. Direct: the same checkpoints without the chain-of-thought prompt. Wall: the "
        "whole run, or for a run that reused an earlier run's steps (`reused` in the jsonl) only its own.",
        "",
        "| variant | settings | SFT | MPO | gain | p | SFT direct | MPO direct | SFT N=1 | MPO N=1 | SFT maj "
        "| MPO maj | pairs | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        s, pc = r["sampled"], r["pairs"]
        maj = [k for k in s["sft"] if k.startswith("maj")][0]
        direct = [f"{100 * r['direct'][n]:.1f}" if n in r.get("direct", {}) else "-" for n in ("sft", "mpo")]
        lines.append(
            f"| {r['name']} | {r['settings']} | {100 * r['sft']:.1f} | {100 * r['mpo']:.1f} | "
            f"{100 * (r['mpo'] - r['sft']):+.1f} | {r['p_value']:.2g} | {direct[0]} | {direct[1]} | "
            f"{100 * s['sft']['n1']:.1f} | "
            f"{100 * s['mpo']['n1']:.1f} | {100 * s['sft'][maj]:.1f} | {100 * s['mpo'][maj]:.1f} | "
            f"{pc['mixed']}/{pc['all_correct']}/{pc['none_correct']} | {r['wall_s']:.0f} |"
        )
    notes = ["", NOTES.read_text()] if NOTES.is_file() else []
    return "\n".join(lines + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="run folder (default /tmp/demo_sweep/NAME)")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="copy tiny, synthetic and SFT steps from here"
    )
    parser.add_argument("--reuse-pairs", action="store_true", help="... and the pairs")
    parser.add_argument("--table", action="store_true", help="write demo_sweep.md from the log")
    parser.add_argument(
        "--wall-s", type=float, default=None, help="record this wall time (a run made before)"
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="then the ablation (3 seeds) in the same folder; ABLATION.md -> results/demo_ablation_NAME.md",
    )
    args = parser.parse_args()
    if args.name:
        scale = VARIANTS[args.name]
        out = args.out or Path("/tmp/demo_sweep") / args.name
        if args.reuse:
            subs = (
                "tiny",
                "synthetic",
                "sft_stage1",
                "sft_stage1_5",
                "sft_stage2",
                "eval/sft",
                "eval/sft_majority",
                "eval/sft_direct",
            )
            for sub in subs + (("pairs",) if args.reuse_pairs else ()):
                if not (out / sub).exists() and (args.reuse / sub).exists():
                    shutil.copytree(args.reuse / sub, out / sub)
        start = time.perf_counter()
        demo.run(out, scale)
        wall = args.wall_s if args.wall_s is not None else time.perf_counter() - start
        direct_answers(out, scale)
        row = {
            "name": args.name,
            "out": str(out),
            "settings": settings(scale),
            "wall_s": wall,
            "reused": str(args.reuse) if args.reuse else None,
            **summarise(out),
        }
        with LOG.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if args.ablation:
            start = time.perf_counter()
            text = demo.ablation(out, scale).read_text()
            wall = time.perf_counter() - start
            (RESULTS / f"demo_ablation_{args.name}.md").write_text(
                f"{text}\nAblation wall time: {wall:.0f} s.\n"
            )
    if args.table or args.name:
        (RESULTS / "demo_sweep.md").write_text(table())


def direct_answers(out: Path, scale: demo.Scale) -> None:
    """Held-out accuracy of the SFT and MPO checkpoints with the direct-answer prompt (no chain of thought):
    the gap to the chain-of-thought figure is what MPO on CoT pairs can close (the MPO paper's premise)."""
    p = demo.Pipeline(out, fresh=False)
    for name, model in (("sft", out / "sft_stage2"), ("mpo", out / "mpo")):
        target = out / "eval" / f"{name}_direct"
        args = demo.eval_args(str(model), target, out, scale.eval_items, cot=False)
        p.step(f"direct answers ({name.upper()})", target / "results.json", *args)


def settings(scale: demo.Scale) -> str:
    """The settings that the variants change, in short."""
    steps = scale.sft_steps[2] if scale.sft_steps else "recipe"
    return (
        f"{'+'.join(scale.formats)}, <={scale.max_tiles} tiles, n_sft {scale.n_sft} (CoT {scale.cot_fraction}), "
        f"stage-2 steps {steps}, "
        f"pairs {scale.pair_questions}x{scale.samples} {' '.join(scale.pair_args)}, MPO {' '.join(scale.mpo_args)}"
    )


if __name__ == "__main__":
    main()
