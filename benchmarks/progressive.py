"""Progressive scaling on the CPU: does a vision tower trained with a small LLM save steps on a larger one?

Two ways to a tiny InternVL2.5 with a 2x wider LLM (width 256; the small one has 128), same data (the
`make demo` task: `mpo synthetic --skills colour,count,position`), same recipes (recipes/tiny/):

- progressive: the small model runs stages 1 and 1.5; `mpo transfer-vision` moves its vision tower into
  the wide model (fresh projector), which runs stage 1 and stage 2 only (recipes/tiny/progressive/);
- from scratch: the wide model runs stages 1, 1.5 and 2.

Stage 2 saves a checkpoint every ``--eval-every`` steps; each is evaluated as `mpo demo` evaluates (held-out
split, chain-of-thought). The table gives held-out accuracy against the steps (and the Trainer's FLOPs
estimate) spent on the wide model, and what the small model cost.

    python -m benchmarks.progressive [--out progressive_out] [--stage2-steps 1800] [--eval-every 600]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mpo.demo import DEMO_SKILLS, Pipeline, Scale, chance_level, evaluate

WIDE = 256
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Arm:
    """One way to the wide model: the stages it runs on the wide model and the checkpoint it starts from."""

    name: str
    start: str  # directory under --out
    stages: tuple[str, ...]  # recipe names under recipes/tiny/ (progressive/... for the progressive arm)


ARMS = (
    Arm("progressive", "progressive/init", ("progressive/sft_stage1", "progressive/sft_stage2")),
    Arm("from scratch", "wide", ("sft_stage1", "sft_stage1_5", "sft_stage2")),
)


def sft(
    p: Pipeline, label: str, recipe: str, model: str, target: str, meta: str, seed: int, *extra: str
) -> None:
    """One SFT stage: recipes/tiny/RECIPE.yaml from MODEL into TARGET with SEED (skipped when done)."""
    p.step(
        label,
        Path(target) / "trainer_state.json",
        "sft",
        "--config",
        f"recipes/tiny/{recipe}.yaml",
        "--model_name_or_path",
        model,
        "--meta_path",
        meta,
        "--output_dir",
        target,
        "--seed",
        str(seed),
        *extra,
    )


def state(path: Path) -> dict:
    return json.loads((path / "trainer_state.json").read_text())


def run(
    out: Path, stage2_steps: int, eval_every: int, eval_items: int, seed: int = 42, fresh: bool = False
) -> Path:
    """Train both arms, evaluate every stage-2 checkpoint, write PROGRESSIVE.md (+ .png) under ``out``."""
    if fresh and out.exists():
        shutil.rmtree(out)
    p, o = Pipeline(out, fresh), str(out)
    meta = f"{o}/synthetic/sft/meta.json"
    p.step(
        "build the small tiny model (LLM width 128)",
        out / "small" / "tiny" / "config.json",
        "tiny-model",
        f"{o}/small/tiny",
    )
    p.step(
        f"build the wide tiny model (LLM width {WIDE})",
        out / "wide" / "config.json",
        "tiny-model",
        f"{o}/wide",
        "--text-hidden-size",
        str(WIDE),
    )
    p.step(
        "generate the synthetic task",
        out / "synthetic" / "eval" / "eval.tsv",
        "synthetic",
        f"{o}/synthetic",
        "--n",
        "8000",
        "--skills",
        ",".join(DEMO_SKILLS),
    )
    sft(p, "small: stage 1", "sft_stage1", f"{o}/small/tiny", f"{o}/small/sft_stage1", meta, seed)
    sft(p, "small: stage 1.5", "sft_stage1_5", f"{o}/small/sft_stage1", f"{o}/small/sft_stage1_5", meta, seed)
    p.step(
        "transfer the small model's vision tower into the wide model",
        out / "progressive" / "init" / "config.json",
        "transfer-vision",
        "--vision",
        f"{o}/small/sft_stage1_5",
        "--into",
        f"{o}/wide",
        "--out",
        f"{o}/progressive/init",
    )
    stage2 = ["--max_steps", str(stage2_steps), "--save_strategy", "steps", "--save_steps", str(eval_every)]
    for arm in ARMS:
        previous = f"{o}/{arm.start}"
        for recipe in arm.stages:
            target = f"{o}/{arm_dir(arm)}/{Path(recipe).name}"
            sft(
                p,
                f"{arm.name}: {recipe}",
                recipe,
                previous,
                target,
                meta,
                seed,
                *(stage2 if recipe.endswith("stage2") else ()),
            )
            previous = target
    scale = Scale(
        n_sft=8000,
        skills=DEMO_SKILLS,
        sft_steps=None,
        pair_questions=0,
        samples=0,
        mpo_steps=None,
        eval_items=eval_items,
    )
    rows = []
    for arm in ARMS:
        before = [out / arm_dir(arm) / Path(r).name for r in arm.stages[:-1]]
        steps_before = sum(state(d)["global_step"] for d in before)
        flos_before = sum(state(d)["total_flos"] for d in before)
        for step in range(eval_every, stage2_steps + 1, eval_every):
            checkpoint = out / arm_dir(arm) / "sft_stage2" / f"checkpoint-{step}"
            target = out / "eval" / arm_dir(arm) / f"step{step}"
            evaluate(p, f"evaluate {arm.name}, stage-2 step {step}", str(checkpoint), target, out, scale)
            result = json.loads((target / "results.json").read_text())
            rows.append(
                Row(
                    arm.name,
                    step,
                    steps_before + step,
                    flos_before + state(checkpoint)["total_flos"],
                    result["overall"],
                    categories(result),
                )
            )
    small = [state(out / "small" / s) for s in ("sft_stage1", "sft_stage1_5")]
    return write_report(out, rows, small, chance_level(out, rows[0].overall["total"]), seed)


def arm_dir(arm: Arm) -> str:
    return arm.name.replace(" ", "_")


def categories(result: dict) -> dict[str, float]:
    """Accuracy per skill of the synthetic benchmark ({} when the results do not break it down)."""
    found = result.get("benchmarks", {}).get("synthetic", {}).get("categories", {})
    return {name: c["accuracy"] for name, c in found.items()}


@dataclass(frozen=True)
class Row:
    arm: str
    stage2_step: int
    wide_steps: int  # all steps on the wide model (stages 1, 1.5, 2)
    wide_flos: float  # the Trainer's estimate (6 x parameters x tokens) over the same steps
    overall: dict
    skills: dict[str, float]


def write_report(out: Path, rows: list[Row], small: list[dict], chance: float, seed: int) -> Path:
    """PROGRESSIVE.md and progressive.png under ``out``, copied to benchmarks/results/."""
    skills = sorted({s for r in rows for s in r.skills})
    n_items = rows[0].overall["total"]
    small_steps, small_flos = sum(s["global_step"] for s in small), sum(s["total_flos"] for s in small)
    lines = [
        "# Progressive scaling on the CPU (tiny InternVL2.5)",
        "",
        f"Wide model: LLM width {WIDE} (the small one: 128), same vision tower config; data: `mpo synthetic --n 8000 "
        f"--skills {','.join(DEMO_SKILLS)}`; held-out accuracy on the first {n_items} items of the eval split, "
        f"chain-of-thought prompt (a uniform random guess scores {100 * chance:.1f} %). *progressive*: the small "
        f"model's stages 1 + 1.5 ({small_steps} steps, {small_flos:.2e} FLOPs), its vision tower moved into the wide "
        "model (fresh projector), which runs stages 1 + 2. *from scratch*: the wide model runs stages 1, 1.5, 2. "
        "Recipes: recipes/tiny/ (stage 2 with checkpoints along one cosine schedule, so a mid-run checkpoint has "
        f"not annealed). One run per arm, SFT seed {seed}. Produced by `python -m benchmarks.progressive`.",
        "",
        "| arm | stage-2 step | steps on the wide model | wide-model FLOPs | accuracy | "
        + " | ".join(skills)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(skills),
    ]
    for r in rows:
        per_skill = " | ".join(f"{100 * r.skills[s]:.1f}" for s in skills)
        lines.append(
            f"| {r.arm} | {r.stage2_step} | {r.wide_steps} | {r.wide_flos:.2e} | "
            f"{100 * r.overall['accuracy']:.1f} % | {per_skill} |"
        )
    lines += [
        "",
        verdict(rows),
        "",
        "FLOPs are the Trainer's estimate, 6 x all parameters x tokens per step, frozen parts included; a "
        f"small-model step costs {small_flos / small_steps:.2e}, a wide-model step "
        f"{rows[0].wide_flos / rows[0].wide_steps:.2e}.",
        "",
        "Caution: when the tiny model starts to read the image in stage 2 varies from run to run "
        "(recipes/tiny/sft_stage2.yaml), so one run per arm does not separate the transferred tower from that "
        "variation; `--seed` with another `--out` repeats the comparison.",
    ]
    chart = plot(out, rows, chance)
    lines += ["", f"![accuracy against wide-model steps]({chart.name})", ""]
    report = out / "PROGRESSIVE.md"
    report.write_text("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    shutil.copy(report, RESULTS / "progressive.md")
    shutil.copy(chart, RESULTS / chart.name)
    print("\n".join(lines))
    return report


def verdict(rows: list[Row]) -> str:
    """Each arm's best accuracy, and the fewest wide-model steps at which the other arm matched it."""
    best = {
        arm.name: max((r for r in rows if r.arm == arm.name), key=lambda r: r.overall["accuracy"])
        for arm in ARMS
    }
    parts = []
    for arm, top in best.items():
        other = next(a.name for a in ARMS if a.name != arm)
        match = [r for r in rows if r.arm == other and r.overall["accuracy"] >= top.overall["accuracy"]]
        reached = (
            f"{other} reaches it after {min(r.wide_steps for r in match)} wide-model steps"
            if match
            else f"{other} does not reach it within {max(r.wide_steps for r in rows if r.arm == other)}"
        )
        parts.append(
            f"{arm} peaks at {100 * top.overall['accuracy']:.1f} % after {top.wide_steps} wide-model steps; "
            f"{reached}"
        )
    return "; ".join(parts) + "."


def plot(out: Path, rows: list[Row], chance: float) -> Path:
    """Held-out accuracy against the steps spent on the wide model, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for arm in ARMS:
        mine = [r for r in rows if r.arm == arm.name]
        ax.plot(
            [r.wide_steps for r in mine],
            [100 * r.overall["accuracy"] for r in mine],
            marker="o",
            label=arm.name,
        )
    ax.axhline(100 * chance, color="tab:red", linestyle=":", label=f"random guess {100 * chance:.1f} %")
    ax.set_xlabel("steps on the wide model (stages 1, 1.5, 2)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("progressive scaling: tiny InternVL2.5, LLM width 128 -> 256")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "progressive.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.progressive", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=Path("progressive_out"), help="work folder (default progressive_out)"
    )
    parser.add_argument(
        "--stage2-steps", type=int, default=1800, help="stage-2 steps of each arm (the recipe's 1800)"
    )
    parser.add_argument(
        "--eval-every", type=int, default=600, help="evaluate a stage-2 checkpoint every N steps"
    )
    parser.add_argument(
        "--eval-items", type=int, default=500, help="held-out items per evaluation (default 500)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed of every SFT stage (the recipes' 42); use another --out per seed",
    )
    parser.add_argument("--fresh", action="store_true", help="delete --out first and redo every step")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    run(args.out, args.stage2_steps, args.eval_every, args.eval_items, args.seed, args.fresh)
    print(f"[progressive] done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
