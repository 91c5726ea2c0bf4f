"""`mpo demo`: the whole recipe, end to end, on the embedded default (tiny model + synthetic task).

    tiny model -> synthetic data -> SFT stages 1, 1.5, 2 -> correctness pairs from the SFT model
    -> MPO training -> evaluation of the SFT and MPO checkpoints (held-out split, CoT)
    -> test-time scaling: N sampled CoT responses per item, majority vote (both checkpoints) -> REPORT.md

Every step is a plain `mpo` command, printed before it runs, so the demo doubles as a transcript of
how to run the recipe by hand. A step whose output already exists is skipped (``--fresh`` redoes all).

Each step runs in a process of its own, forked from a server that has imported the commands' modules once.
As in any program that starts processes this way, a script that calls :func:`run` or :func:`ablation` does
so under ``if __name__ == "__main__":`` (each step's process imports the script).

Parts: :mod:`mpo.demo.scales` (sizes), :mod:`mpo.demo.steps` (each step a process), :mod:`mpo.demo.report`
(REPORT.md), :mod:`mpo.demo.ablation` (``--ablation``).
"""

from __future__ import annotations

from pathlib import Path

from mpo.demo.ablation import VARIANTS, ablation, separation
from mpo.demo.report import (
    chance_level,
    correctness,
    pair_split,
    paired_section,
    scaling_section,
    soundness,
    write_report,
)
from mpo.demo.scales import DEMO_SKILLS, FULL, SCALES, Scale
from mpo.demo.steps import Pipeline, eval_args, evaluate, prepare, sample, step_env, train_args

__all__ = [
    "DEMO_SKILLS",
    "FULL",
    "SCALES",
    "VARIANTS",
    "Pipeline",
    "Scale",
    "ablation",
    "chance_level",
    "correctness",
    "eval_args",
    "evaluate",
    "pair_split",
    "paired_section",
    "run",
    "scaling_section",
    "separation",
    "soundness",
    "step_env",
]


def run(out: Path, scale: Scale, fresh: bool = False) -> Path:
    p = prepare(out, scale, fresh)
    o, sft = str(out), f"{out}/sft_stage2"
    p.step("7/10 MPO training", out / "mpo" / "trainer_state.json", *train_args(out, scale, out / "mpo"))
    for name, model in (("sft", sft), ("mpo", f"{o}/mpo")):
        evaluate(
            p,
            f"8/10 evaluate the {name.upper()} checkpoint (held-out split, CoT)",
            model,
            out / "eval" / name,
            out,
            scale,
        )
    p.step(
        "9/10 compare",
        out / "eval" / "compare" / "compare.md",
        "eval",
        "--compare",
        f"{o}/eval/sft",
        f"{o}/eval/mpo",
        "--names",
        "SFT",
        "MPO",
        "--out",
        f"{o}/eval/compare",
    )
    for name, model in (("sft", sft), ("mpo", f"{o}/mpo")):
        sample(
            p,
            f"10/10 test-time scaling: {scale.tts_samples} samples per item, majority vote ({name.upper()})",
            model,
            out / "eval" / f"{name}_majority",
            out,
            scale,
        )
    p.step(
        "10/10 compare the majority votes",
        out / "eval" / "compare_majority" / "compare.md",
        "eval",
        "--compare",
        f"{o}/eval/sft_majority",
        f"{o}/eval/mpo_majority",
        "--names",
        "SFT",
        "MPO",
        "--out",
        f"{o}/eval/compare_majority",
    )
    return write_report(out, p.timings)
