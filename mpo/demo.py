"""`mpo demo`: the whole recipe, end to end, on the embedded default (tiny model + synthetic task).

    tiny model -> synthetic data -> SFT stages 1, 1.5, 2 -> correctness pairs from the SFT model
    -> MPO training -> evaluation of the SFT and MPO checkpoints (held-out split, CoT)
    -> test-time scaling: N sampled CoT responses per item, majority vote (both checkpoints) -> REPORT.md

Every step is a plain `mpo` command, printed before it runs, so the demo doubles as a transcript of
how to run the recipe by hand. A step whose output already exists is skipped (``--fresh`` redoes all).

Each step runs in a process of its own, forked from a server that has imported the commands' modules once.
As in any program that starts processes this way, a script that calls :func:`run` or :func:`ablation` does
so under ``if __name__ == "__main__":`` (each step's process imports the script).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mpo.errors import UserError


@dataclass(frozen=True)
class Scale:
    """Sizes of one demo run."""

    n_sft: int  # SFT examples (the QA and eval splits are a quarter each)
    skills: tuple[str, ...] | None  # skills of the synthetic task (None: all seven)
    sft_steps: tuple[int, int, int] | None  # steps of stages 1, 1.5, 2 (None: the recipes' own)
    pair_questions: int  # questions sampled for pairs
    samples: int  # responses per question (correctness pairs)
    mpo_steps: int | None  # None: one epoch over the pairs
    eval_items: int | None  # None: the whole eval split
    pairs: str = (
        "correctness"  # pair builder; dropout-ntp needs no correct answer (an untrained model has none)
    )
    tts_samples: int = 4  # test-time scaling: sampled responses per item (majority vote over the first N)
    tts_items: int | None = None  # ... on the first items of the eval split (None: eval_items)
    formats: tuple[str, ...] = ("short",)  # question formats of the synthetic task (short answer, "mc")
    max_tiles: int = 1  # largest synthetic image, in tiles (1: every image is one 64 px tile, 16 tokens)
    cot_fraction: float = 0.3  # share of SFT records answered with a chain of thought (as the generator)
    pair_args: tuple[str, ...] = ()  # extra `mpo build-pairs` options (sampling temperature, ...)
    mpo_args: tuple[
        str, ...
    ] = ()  # extra `mpo train` options of the MPO step and the ablation (beta, lr, ...)


# `full` (make demo): three of the seven skills, which the tiny model learns in its SFT budget
# (recipes/tiny/sft_stage2.yaml has the measurements); 544-678 s end to end on 2 CPU cores, of which stage
# 2 of SFT is 330-409 s (README). `long` is the whole task with a 7000-step stage 2: 1840 s end to end, 1555 s
# of it stage 2, with other work beside it (benchmarks/results/demo_long.md). `smoke` checks the plumbing in
# seconds.
DEMO_SKILLS = ("colour", "count", "position")
# Test-time scaling in `full`: 8 samples on the first 200 eval items add 23 s (2 x 10-11 s of sampling, 1 s of
# compare; measured on 2 cores); all 500 items would take 2.5 times as long.
TTS_SAMPLES, TTS_ITEMS = 8, 200
TTS_TEMPERATURE = 0.7
# The MPO paper's premise in `full`: SFT data are mostly direct answers (2 % chain of thought: 160 of 8000), so
# after SFT the chain of thought trails the direct answer (47.2 % against 63.2 % held-out), and MPO on CoT pairs
# from 1000 questions (at most 3 pairs each; lr 2e-4) closes most of that gap: benchmarks/results/demo_sweep.md.
FULL_COT_FRACTION = 0.02
FULL = Scale(
    n_sft=8000,
    skills=DEMO_SKILLS,
    sft_steps=None,
    pair_questions=1000,
    samples=8,
    mpo_steps=None,
    eval_items=500,
    tts_samples=TTS_SAMPLES,
    tts_items=TTS_ITEMS,
    cot_fraction=FULL_COT_FRACTION,
    # 32 questions per generation call: the same pairs, byte for byte, as 8, in 56 s instead of 76
    pair_args=("--max-pairs-per-question", "3", "--batch-size", "32"),
    mpo_args=("--learning_rate", "2e-4"),
)
SCALES = {
    "full": FULL,
    # full's recipe on all seven skills, with the longer stage 2 they need and twice the eval items
    "long": dataclasses.replace(FULL, skills=None, sft_steps=(60, 60, 7000), eval_items=1000, tts_items=500),
    "smoke": Scale(
        n_sft=80,
        skills=DEMO_SKILLS,
        sft_steps=(2, 2, 4),
        pair_questions=6,
        samples=4,
        mpo_steps=3,
        eval_items=8,
        pairs="dropout-ntp",
        tts_samples=4,
        tts_items=8,
        cot_fraction=FULL_COT_FRACTION,
    ),
}


def step_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment of every step: ``environ`` with OMP_WAIT_POLICY=PASSIVE and OMP_NUM_THREADS=2 unless
    it sets them.

    OpenMP's default lets idle threads spin; on 2 shared cores they then spin against each other and against
    anything else running, which made one step of SFT stage 2 take 1.8-2.2 s instead of 0.28 s on a machine
    with a load of 2-4 (`make` exports PASSIVE; `python -m mpo demo` did not). The wait policy changes how
    threads wait, not what they compute. The thread count does change what they compute (a reduction split
    over more threads rounds differently: 1 and 2 threads give other weights after 60 steps), so the demo
    runs with the 2 threads its README numbers were measured with, on any machine.
    """
    env = {
        **environ,
        "OMP_WAIT_POLICY": environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS", "2"),
    }
    omp_threads(env["OMP_NUM_THREADS"])  # a value the steps cannot use stops the demo before it starts
    return env


# The `mpo` commands the demo runs: their modules are imported once, by the server its steps fork from.
STEP_COMMANDS = ("tiny-model", "synthetic", "sft", "build-pairs", "train", "eval")


def step_process(args: list[str], env: dict[str, str]) -> None:
    """The body of one step's process: ``mpo ARGS`` under ``env``; its exit status is the command's.

    The process is forked from a server that imported every step's modules and ran nothing, so it starts
    clean (no torch thread pool, no random state, no model) and without 5-7 s of imports. The server read
    its OpenMP settings when it imported torch; the thread count is set again here from ``env`` so a step
    computes with the threads it names whatever environment the server started in.
    """
    import torch

    from mpo import cli

    os.environ.update(env)
    torch.set_num_threads(omp_threads(env["OMP_NUM_THREADS"]))
    sys.exit(cli.main(args))


def omp_threads(value: str) -> int:
    """The thread count an ``OMP_NUM_THREADS`` value gives the outermost parallel level (OpenMP takes a
    list, one count per nesting level: "4,2" is 4)."""
    first = value.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise UserError(
            f"OMP_NUM_THREADS={value!r}: expected a positive thread count (or a list, e.g. '4,2')"
        )
    return int(first)


def step_context() -> multiprocessing.context.BaseContext:
    """Where the steps' processes come from: a fork server that preloads the step commands' modules."""
    from mpo.cli import COMMANDS

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(sorted({COMMANDS[name][0] for name in STEP_COMMANDS}))
    return context


class Pipeline:
    def __init__(self, out: Path, fresh: bool) -> None:
        self.out, self.fresh, self.timings = out, fresh, {}

    def step(self, name: str, done: Path, *args: str) -> None:
        """Run ``mpo ARGS`` in a process of its own unless ``done`` exists; time it."""
        if done.exists() and not self.fresh:
            print(f"[demo] {name}: already done ({done})", flush=True)
            return
        print(f"\n[demo] {name}\n[demo] $ mpo {shlex.join(args)}", flush=True)
        start = time.perf_counter()
        process = step_context().Process(target=step_process, args=(list(args), step_env(dict(os.environ))))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise UserError(f"step '{name}' failed (exit status {process.exitcode}): mpo {shlex.join(args)}")
        self.timings[name] = time.perf_counter() - start


def train_args(out: Path, scale: Scale, target: Path, *extra: str) -> list[str]:
    """`mpo train` of MPO on the demo's pairs from its SFT checkpoint into ``target`` (``extra``: seed, loss)."""
    args = [
        "train",
        "--config",
        "recipes/tiny/mpo.yaml",
        "--model_name_or_path",
        f"{out}/sft_stage2",
        "--meta_path",
        f"{out}/pairs/meta.json",
        "--output_dir",
        str(target),
        "--ref_cache_dir",
        f"{out}/ref_cache",
        *scale.mpo_args,
        *extra,
    ]
    return args + (["--max_steps", str(scale.mpo_steps)] if scale.mpo_steps else [])


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


def eval_args(model: str, target: Path, out: Path, items: int | None, cot: bool = True) -> list[str]:
    """`mpo eval` of ``model`` on the first ``items`` held-out synthetic items, into ``target``: chain of
    thought (64 new tokens), or with ``cot=False`` the direct-answer prompt (8 new tokens)."""
    limit = ["--limit", str(items)] if items else []
    data = f"synthetic={out}/synthetic/eval/eval.tsv"
    return [
        "eval",
        "--model",
        model,
        "--data",
        data,
        *(["--cot"] if cot else []),
        "--max-new-tokens",
        "64" if cot else "8",
        "--out",
        str(target),
        "--backend",
        "transformers",
        *limit,
    ]


def sample(p: Pipeline, name: str, model: str, target: Path, out: Path, scale: Scale) -> None:
    """N sampled CoT responses per item of the first ``tts_items`` eval items, majority vote over the first k."""
    sampling = [
        "--num-samples",
        str(scale.tts_samples),
        "--temperature",
        str(TTS_TEMPERATURE),
        "--aggregate",
        "majority",
    ]
    p.step(
        name,
        target / "results.json",
        *eval_args(model, target, out, scale.tts_items or scale.eval_items),
        *sampling,
    )


# Greedy evaluation, prompts per generate call: the same predictions as `mpo eval`'s 16, in 12 s instead of 20
# (500 items on 2 cores). Sampled evaluation keeps 16 prompts (128 rows with 8 samples): 48 is no faster.
EVAL_BATCH_SIZE = 64


def evaluate(p: Pipeline, name: str, model: str, target: Path, out: Path, scale: Scale) -> None:
    batch = ["--batch-size", str(EVAL_BATCH_SIZE)]
    p.step(name, target / "results.json", *eval_args(model, target, out, scale.eval_items), *batch)


def prepare(out: Path, scale: Scale, fresh: bool) -> Pipeline:
    """Steps 1-6: tiny model, synthetic data, the three SFT stages, pairs from the SFT model."""
    if fresh and out.exists():
        shutil.rmtree(out)
    p, o = Pipeline(out, fresh), str(out)
    p.step("1/10 build the tiny InternVL2.5 model", out / "tiny" / "config.json", "tiny-model", f"{o}/tiny")
    p.step(
        "2/10 generate the synthetic visual QA task",
        out / "synthetic" / "eval" / "eval.tsv",
        "synthetic",
        f"{o}/synthetic",
        "--n",
        str(scale.n_sft),
        "--formats",
        ",".join(scale.formats),
        "--max-tiles",
        str(scale.max_tiles),
        "--cot-fraction",
        str(scale.cot_fraction),
        *(["--skills", ",".join(scale.skills)] if scale.skills else []),
    )
    previous = f"{o}/tiny"
    for i, stage in enumerate(("1", "1_5", "2")):
        target = f"{o}/sft_stage{stage}"
        steps = ["--max_steps", str(scale.sft_steps[i])] if scale.sft_steps else []
        p.step(
            f"{3 + i}/10 SFT stage {stage.replace('_', '.')}",
            Path(target) / "config.json",
            "sft",
            "--config",
            f"recipes/tiny/sft_stage{stage}.yaml",
            "--model_name_or_path",
            previous,
            "--meta_path",
            f"{o}/synthetic/sft/meta.json",
            "--output_dir",
            target,
            *steps,
        )
        previous = target
    samples = ["--n", str(scale.samples)] if scale.pairs == "correctness" else []
    p.step(
        f"6/10 build {scale.pairs} pairs from the SFT model",
        out / "pairs" / "report.json",
        "build-pairs",
        scale.pairs,
        "--model",
        previous,
        "--data",
        f"{o}/synthetic/qa/meta.json",
        "--out",
        f"{o}/pairs",
        "--limit",
        str(scale.pair_questions),
        *samples,
        "--max-new-tokens",
        "64",
        "--backend",
        "transformers",
        *scale.pair_args,
    )
    return p


# Ablation variants: the MPO objective against its parts, from the same SFT checkpoint and pairs.
VARIANTS = {
    "MPO": ["--loss_type", "sigmoid", "bco_pair", "sft", "--loss_weights", "0.8", "0.2", "1.0"],
    "DPO only": ["--loss_type", "sigmoid", "--loss_weights", "1.0"],
    "SFT on chosen": ["--loss_type", "sft", "--loss_weights", "1.0"],
}


def ablation(out: Path, scale: Scale, seeds: tuple[int, ...] = (0, 1, 2), fresh: bool = False) -> Path:
    """MPO vs DPO-only vs SFT-on-chosen-only, each over ``seeds``: mean and spread of held-out accuracy."""
    import statistics

    p = prepare(out, scale, fresh)
    sft = f"{out}/sft_stage2"
    evaluate(p, "evaluate the SFT checkpoint", sft, out / "eval" / "sft", out, scale)
    accuracy: dict[str, list[float]] = {}
    for variant, loss_args in VARIANTS.items():
        for seed in seeds:
            tag = f"{variant.lower().replace(' ', '_')}_s{seed}"
            target = out / "ablation" / tag
            train = train_args(out, scale, target, "--seed", str(seed), *loss_args)
            p.step(f"ablation: train {variant}, seed {seed}", target / "trainer_state.json", *train)
            evaluate(
                p, f"ablation: evaluate {variant}, seed {seed}", str(target), target / "eval", out, scale
            )
            result = json.loads((target / "eval" / "results.json").read_text())
            accuracy.setdefault(variant, []).append(result["overall"]["accuracy"])
    base = json.loads((out / "eval" / "sft" / "results.json").read_text())["overall"]
    lines = [
        "# Ablation: MPO against its parts",
        "",
        f"Same SFT checkpoint (held-out accuracy {100 * base['accuracy']:.1f} %; a uniform random guess scores "
        f"{100 * chance_level(out, base['total']):.1f} %) and pairs; seeds {list(seeds)}; "
        "chain-of-thought evaluation on the synthetic eval split.",
        "",
        "| objective | mean accuracy | spread (std) | min | max | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for variant, accs in accuracy.items():
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(
            f"| {variant} | {100 * statistics.mean(accs):.1f} % | {100 * std:.1f} | {100 * min(accs):.1f} | "
            f"{100 * max(accs):.1f} | {', '.join(f'{100 * a:.1f}' for a in accs)} |"
        )
    chart = plot_ablation(out, accuracy, base["accuracy"], chance_level(out, base["total"]))
    lines += ["", *separation(accuracy), "", f"![ablation]({chart.name})"]
    report = out / "ABLATION.md"
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


def separation(accuracy: dict[str, list[float]]) -> list[str]:
    """One line per other objective: does every MPO seed beat every seed of it (seed ranges that do not
    overlap: MPO's worst seed above its best)?"""
    mpo = accuracy.get("MPO")
    if not mpo:
        return []
    lines = []
    for variant, accs in accuracy.items():
        if variant != "MPO":
            apart = min(mpo) > max(accs)
            lines.append(
                f"- MPO against {variant}: worst MPO seed {100 * min(mpo):.1f} %, best {variant} seed "
                f"{100 * max(accs):.1f} %: the seed ranges {'do not overlap' if apart else 'overlap'}."
            )
    return lines


def plot_ablation(out: Path, accuracy: dict[str, list[float]], sft: float, chance: float) -> Path:
    """One bar per objective (mean over seeds, each seed a dot), with the SFT checkpoint and chance as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, accs in enumerate(accuracy.values()):
        ax.bar(i, 100 * sum(accs) / len(accs), width=0.6, alpha=0.8)
        ax.scatter([i] * len(accs), [100 * a for a in accs], color="black", s=12, zorder=3)
    ax.axhline(100 * sft, color="tab:gray", linestyle="--", label=f"SFT checkpoint {100 * sft:.1f} %")
    ax.axhline(100 * chance, color="tab:red", linestyle=":", label=f"random guess {100 * chance:.1f} %")
    ax.set_xticks(range(len(accuracy)), list(accuracy))
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("MPO against its parts (bars: mean, dots: seeds)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "ablation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chance_level(out: Path, n_items: int) -> float:
    """Held-out accuracy of a uniform random guess on the ``n_items`` evaluated items (the eval TSV's first)."""
    from data_builders.synthetic import chance_accuracy

    with open(out / "synthetic" / "eval" / "eval.tsv", newline="", encoding="utf-8") as f:
        rows = list(itertools.islice(csv.DictReader(f, delimiter="\t"), n_items))
    return sum(chance_accuracy(row) for row in rows) / len(rows)


def plot_curves(out: Path) -> Path:
    """MPO training curves (loss terms, rewards and δ, reward accuracy, chosen and rejected log-probs) and the
    SFT stages' losses, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mpo = [
        h
        for h in json.loads((out / "mpo" / "trainer_state.json").read_text())["log_history"]
        if "loss/dpo" in h
    ]
    fig, axes = plt.subplots(1, 5, figsize=(22, 3.6))
    steps = [h["step"] for h in mpo]
    for key in ("loss/dpo", "loss/bco", "loss/sft"):
        axes[0].plot(steps, [h[key] for h in mpo], label=key)
    axes[0].set_title("MPO loss terms (unweighted)")
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "bco/delta"):
        axes[1].plot(steps, [h[key] for h in mpo], label=key)
    axes[1].set_title("rewards and δ")
    axes[2].plot(steps, [h["rewards/accuracies"] for h in mpo], label="rewards/accuracies")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("reward accuracy")
    for key in ("logps/chosen", "logps/rejected"):
        axes[3].plot(steps, [h[key] for h in mpo], label=key)
    axes[3].set_title("policy log-prob of the responses")
    for stage in ("1", "1_5", "2"):
        state = out / f"sft_stage{stage}" / "trainer_state.json"
        if state.exists():
            hist = [h for h in json.loads(state.read_text())["log_history"] if "loss" in h]
            axes[4].plot(
                [h["step"] for h in hist], [h["loss"] for h in hist], label=f"stage {stage.replace('_', '.')}"
            )
    axes[4].set_title("SFT loss")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, timings: dict[str, float]) -> Path:
    results = {
        name: json.loads((out / "eval" / name / "results.json").read_text()) for name in ("sft", "mpo")
    }
    sft_acc, mpo_acc = (results[n]["overall"]["accuracy"] for n in ("sft", "mpo"))
    n_items = results["mpo"]["overall"]["total"]
    mpo_hist = [
        h
        for h in json.loads((out / "mpo" / "trainer_state.json").read_text())["log_history"]
        if "rewards/accuracies" in h
    ]
    curves = plot_curves(out)
    verdict = (
        f"MPO {'improves' if mpo_acc > sft_acc else 'does not improve'} held-out accuracy: "
        f"{100 * sft_acc:.1f} % (SFT) -> {100 * mpo_acc:.1f} % (MPO), {100 * (mpo_acc - sft_acc):+.1f} points "
        f"on {n_items} items (a uniform random guess scores {100 * chance_level(out, n_items):.1f} %)."
    )
    lines = [
        "# internvl-mpo demo report",
        "",
        verdict,
        "",
        "## Held-out accuracy (synthetic eval split, chain-of-thought prompt)",
        "",
        (out / "eval" / "compare" / "compare.md").read_text(),
        "",
        "![comparison](eval/compare/compare.png)",
        "",
        *paired_section(out),
        "",
        *soundness(results),
        *scaling_section(out),
        "",
        "## Training curves",
        "",
        f"![curves]({curves.name})",
        "",
        f"MPO: {len(mpo_hist)} logged steps; reward accuracy {mpo_hist[0]['rewards/accuracies']:.2f} (first) -> "
        f"{mpo_hist[-1]['rewards/accuracies']:.2f} (last); chosen log-prob {mpo_hist[0]['logps/chosen']:.2f} -> "
        f"{mpo_hist[-1]['logps/chosen']:.2f}; final δ {mpo_hist[-1]['bco/delta']:.4f}.",
        "",
        "## Preference pairs built from the SFT model",
        "",
        *pair_split(out),
        "",
        (out / "pairs" / "report.md").read_text().replace("](", "](pairs/"),
        "",
        "## Step timings",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in timings.items()],
        "",
    ]
    report = out / "REPORT.md"
    report.write_text("\n".join(lines))
    print(f"\n[demo] {verdict}\n[demo] report: {report}")
    return report


def correctness(run: Path) -> dict[str, bool]:
    """Per-item correctness of one evaluation run, by ``benchmark/index`` (its predictions.jsonl)."""
    with open(run / "predictions.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {f"{r['benchmark']}/{r['index']}": bool(r["correct"]) for r in records}


def paired_section(out: Path) -> list[str]:
    """REPORT.md lines of the exact McNemar test of SFT against MPO on the same held-out items."""
    from mpo.paired import mcnemar

    t = mcnemar(correctness(out / "eval" / "sft"), correctness(out / "eval" / "mpo"))
    n = t.both + t.only_first + t.only_second + t.neither
    return [
        "## Paired test: SFT against MPO on the same items",
        "",
        "| | MPO right | MPO wrong |",
        "|---|---:|---:|",
        f"| **SFT right** | {t.both} | {t.only_first} |",
        f"| **SFT wrong** | {t.only_second} | {t.neither} |",
        "",
        f"Of {n} items, {t.only_second} are right only after MPO and {t.only_first} only before it. Exact McNemar "
        f"test (two-sided; under 'equally accurate' each of the {t.only_first + t.only_second} discordant items "
        f"falls either way with probability 1/2): p = {t.p_value:.2g}.",
    ]


def soundness(results: dict[str, dict]) -> list[str]:
    """REPORT.md lines: of each model's right answers, how many state the true chain of thought (the
    synthetic eval split carries it; `mpo eval --cot` counts them), or none where it was not counted."""
    overall = {name: r["overall"] for name, r in results.items()}
    if any("correct_and_sound" not in o for o in overall.values()):
        return []
    parts = [
        f"{name.upper()} {o['correct_and_sound']} of its {o['correct']} right answers "
        f"({100 * o['correct_and_sound'] / o['total']:.1f} % of the items)"
        for name, o in overall.items()
    ]
    return [
        "Right answers that also state every step of the item's true chain of thought: "
        + ", ".join(parts)
        + ".",
        "",
    ]


def pair_split(out: Path) -> list[str]:
    """REPORT.md lines: how the sampled questions split into mixed (both correct and incorrect responses:
    the only ones that give correctness pairs), all-correct and all-wrong."""
    report = json.loads((out / "pairs" / "report.json").read_text())
    status, n = report["questions"]["by_status"], report["questions"]["in"]
    if report["pipeline"] != "correctness":
        return [f"{report['pipeline']} pairs: {status.get('paired', 0)} of {n} questions paired."]
    mixed = status.get("paired", 0) + status.get("no_pair_kept", 0)
    rows = (
        ("both correct and incorrect responses (pairs)", mixed),
        ("all responses correct", status["all_correct"]),
        ("no response correct", status["none_correct"]),
    )
    return [
        "| sampled questions with | questions | share |",
        "|---|---:|---:|",
        *[f"| {name} | {k} | {100 * k / max(n, 1):.1f} % |" for name, k in rows],
    ]


def scaling_section(out: Path) -> list[str]:
    """REPORT.md lines of the test-time scaling step: SFT and MPO at N = 1 and at the largest N sampled,
    and whether MPO narrows the gap between one sample and the majority vote."""
    runs = {
        name: json.loads((out / "eval" / f"{name}_majority" / "results.json").read_text())[
            "test_time_scaling"
        ]
        for name in ("sft", "mpo")
    }
    first = {name: s["curve"][0] for name, s in runs.items()}
    last = {name: s["curve"][-1] for name, s in runs.items()}
    gap = {name: last[name]["accuracy"] - first[name]["accuracy"] for name in runs}
    n, total, temp = last["mpo"]["n"], last["mpo"]["total"], runs["mpo"]["temperature"]
    lines = [
        "## Test-time scaling: majority vote over sampled chain-of-thought",
        "",
        f"{n} responses per item sampled at temperature {temp} on the first {total} held-out items; the answer "
        "with the most votes counts (ties: the answer voted first, so N = 2 always equals N = 1). N = 1 is one "
        f"sampled response. One item is {100 / total:.1f} points.",
        "",
        f"| model | N = 1 | N = {n} | gain of the vote |",
        "|---|---:|---:|---:|",
        *[
            f"| {name.upper()} | {100 * first[name]['accuracy']:.1f} % | {100 * last[name]['accuracy']:.1f} % | "
            f"{100 * gap[name]:+.1f} |"
            for name in ("sft", "mpo")
        ],
        "",
        f"The vote gains {100 * gap['sft']:+.1f} points for SFT and {100 * gap['mpo']:+.1f} for MPO: MPO "
        f"{'narrows' if gap['mpo'] < gap['sft'] else 'does not narrow'} the gap between one sample and the "
        "majority vote here.",
        "",
        (out / "eval" / "compare_majority" / "compare.md")
        .read_text()
        .split("## Accuracy against N", 1)[-1]
        .split("\n", 1)[-1],
        "",
        "![accuracy against N](eval/compare_majority/compare_scaling.png)",
    ]
    return lines


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
    args = parser.parse_args(argv)
    # before the steps' server imports torch: OpenMP reads these once
    os.environ.update(step_env(dict(os.environ)))
    start = time.perf_counter()
    (ablation if args.ablation else run)(args.out, SCALES[args.scale], fresh=args.fresh)
    print(f"[demo] done in {time.perf_counter() - start:.0f} s")
    return 0
