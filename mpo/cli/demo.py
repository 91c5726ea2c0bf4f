"""`mpo demo`: the whole recipe, end to end, on the embedded default (tiny model + synthetic task; :mod:`mpo.demo`)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from mpo.demo import run
from mpo.demo.ablation import ablation
from mpo.demo.cascade import cascade
from mpo.demo.scales import SCALES
from mpo.demo.steps import step_env


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mpo demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="full",
        help="full: 3 skills, < 10 min (default); long: all 7 skills, 20 min of SFT; smoke: seconds",
    )
    parser.add_argument("--fresh", action="store_true", help="delete --out first and redo every step")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="instead of one MPO run: MPO, DPO-only and SFT-on-chosen over 3 seeds each",
    )
    parser.add_argument(
        "--cascade",
        action="store_true",
        help="after the demo: MPO then GSPO against MPO, GSPO from SFT and a second MPO round "
        "(Cascade RL, mpo.demo.cascade; out/cascade/REPORT.md)",
    )
    args = parser.parse_args(argv)
    if args.ablation and args.cascade:
        parser.error("--ablation and --cascade are separate runs: pass one")
    # before the steps' server imports torch: OpenMP reads these once
    os.environ.update(step_env(dict(os.environ)))
    start = time.perf_counter()
    command = ablation if args.ablation else cascade if args.cascade else run
    command(args.out, SCALES[args.scale], fresh=args.fresh)
    print(f"[demo] done in {time.perf_counter() - start:.0f} s")
    return 0
