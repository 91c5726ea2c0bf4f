"""`mpo demo --cascade`: InternVL3.5's Cascade RL (offline MPO, then online GSPO) against its alternatives, on
the demo's checkpoints and held-out items.

    the demo (SFT, pairs from SFT, MPO; reused when present)
    -> pairs from the MPO model (`mpo build-pairs`, the demo's settings)
    -> MPO then GSPO:   `mpo rl` from the MPO checkpoint, queries the MPO model solves sometimes
    -> GSPO from SFT:   `mpo rl` from the SFT checkpoint, the same steps and rollouts, queries the SFT model
                        solves sometimes
    -> MPO round 2:     `mpo train` from the MPO checkpoint on the pairs from the MPO model (iterative MPO)
    -> evaluation of every arm on the demo's held-out items, the exact McNemar test between arms
    -> 3 seeds of the two leading arms -> cascade/REPORT.md, cascade/results.json, cascade/compute.png

Query selection is InternVL3.5's (rollout accuracy in [0.2, 0.8]), read from the correctness pair build of
the arm's own starting model, so no arm samples twice: the demo's build (from SFT) for GSPO from SFT, the
round-2 build (from MPO) for MPO then GSPO, which iterative MPO trains on. Each arm's compute counts
every step from the SFT checkpoint on: wall seconds of each step's process and generated responses (pair
builds' samples, GSPO's rollouts). Steps whose output exists are skipped, as in the demo; their seconds
come from cascade/timings.json (the demo's own from its timings.json).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from mpo.demo.ablation import VARIANTS
from mpo.demo.report import chance_level, correctness
from mpo.demo.scales import Scale
from mpo.demo.steps import TIMINGS, Pipeline, evaluate, pair_build_args, train_args

QUERY_ACCURACY = "0.2,0.8"  # InternVL3.5's query selection
MAIN_SEED = 42  # the recipes' seed: the demo's MPO run and the cascade's main runs
SEEDS = (MAIN_SEED, 1, 2)  # the two leading arms' seeds: their main run and two more
PAIRS_FROM_SFT, MPO_TRAINING = "6/10 build", "7/10 MPO training"  # the demo's step names (prefixes)


@dataclass(frozen=True)
class Arm:
    """One compared model: where it is, where its evaluation is, and the steps it took from the SFT checkpoint
    (keys of :func:`compute`)."""

    name: str
    model: str
    eval_dir: Path
    stages: tuple[str, ...]


def arms(out: Path, scale: Scale) -> list[Arm]:
    c, selects = out / "cascade", scale.pairs == "correctness"
    mpo = ("pairs from SFT", "MPO")
    return [
        Arm("SFT", f"{out}/sft_stage2", out / "eval" / "sft", ()),
        Arm("MPO", f"{out}/mpo", out / "eval" / "mpo", mpo),
        Arm(
            "MPO -> GSPO",
            str(c / "mpo_gspo"),
            c / "mpo_gspo" / "eval",
            (*mpo, *(("pairs from MPO",) if selects else ()), "GSPO after MPO"),
        ),
        Arm(
            "GSPO from SFT",
            str(c / "sft_gspo"),
            c / "sft_gspo" / "eval",
            (*(("pairs from SFT",) if selects else ()), "GSPO from SFT"),
        ),
        Arm("MPO round 2", str(c / "mpo2"), c / "mpo2" / "eval", (*mpo, "pairs from MPO", "MPO round 2")),
    ]


def gspo_args(out: Path, scale: Scale, model: str, target: Path, seed: int, build: Path | None) -> list[str]:
    """`mpo rl` of GSPO from ``model`` into ``target``: ``scale.gspo_steps`` steps, queries in [0.2, 0.8] by
    the accuracy of ``build`` (every question when None)."""
    select = ["--query_build", str(build), "--query_accuracy", QUERY_ACCURACY] if build else []
    return [
        "rl",
        "--config",
        "tiny/gspo",
        "--model_name_or_path",
        model,
        "--meta_path",
        f"{out}/synthetic/qa/meta.json",
        "--output_dir",
        str(target),
        "--max_steps",
        str(scale.gspo_steps),
        "--save_strategy",
        "no",
        "--seed",
        str(seed),
        *(select or ["--query_accuracy", "0,1"]),
        *scale.gspo_args,
    ]


def mpo2_args(out: Path, scale: Scale, target: Path, seed: int) -> list[str]:
    """`mpo train` of a second MPO round: the demo's MPO step from the MPO checkpoint on the pairs from it."""
    args = train_args(out, scale, target, "--seed", str(seed))
    c = out / "cascade"
    swap = {f"{out}/sft_stage2": f"{out}/mpo", f"{out}/pairs/meta.json": f"{c}/pairs_mpo/meta.json"}
    swap[f"{out}/ref_cache"] = f"{c}/ref_cache_mpo2"
    return [swap.get(a, a) for a in args]


def train_arm(p: Pipeline, out: Path, scale: Scale, arm: str, seed: int, target: Path) -> None:
    """Train one cascade arm (seed ``seed``) into ``target``, then evaluate it into ``target/eval``."""
    selects = scale.pairs == "correctness"
    if arm == "MPO":  # the demo's ablation runs, reused when `mpo demo --ablation` made them
        args = train_args(out, scale, target, "--seed", str(seed), *VARIANTS["MPO"])
    elif arm == "MPO round 2":
        args = mpo2_args(out, scale, target, seed)
    else:
        start, build = ("mpo", "cascade/pairs_mpo") if arm == "MPO -> GSPO" else ("sft_stage2", "pairs")
        args = gspo_args(out, scale, f"{out}/{start}", target, seed, out / build if selects else None)
    p.step(f"cascade: {arm}, seed {seed}", target / "trainer_state.json", *args)
    evaluate(p, f"cascade: evaluate {arm}, seed {seed}", str(target), target / "eval", out, scale)


TAGS = {"MPO": "mpo", "MPO -> GSPO": "mpo_gspo", "GSPO from SFT": "sft_gspo", "MPO round 2": "mpo2"}


def seed_dir(out: Path, arm: str, seed: int) -> Path:
    """Where seed ``seed`` of ``arm`` is: the main run (:data:`MAIN_SEED`; the demo's own for MPO), else
    ``cascade/seeds/`` (for MPO the demo ablation's folder, reused when `mpo demo --ablation` made it)."""
    if seed == MAIN_SEED:
        return out / "mpo" if arm == "MPO" else out / "cascade" / TAGS[arm]
    if arm == "MPO":
        return out / "ablation" / f"mpo_s{seed}"
    return out / "cascade" / "seeds" / f"{TAGS[arm]}_s{seed}"


def seed_eval(out: Path, arm: str, seed: int) -> Path:
    """The evaluation of seed ``seed`` of ``arm`` (the demo's own for its MPO run)."""
    return out / "eval" / "mpo" if (arm, seed) == ("MPO", MAIN_SEED) else seed_dir(out, arm, seed) / "eval"


STEP_OF_STAGE = {
    "GSPO after MPO": "MPO -> GSPO",
    "GSPO from SFT": "GSPO from SFT",
    "MPO round 2": "MPO round 2",
}


def cascade(out: Path, scale: Scale, fresh: bool = False) -> Path:
    """Run the cascade's arms (module docstring) and write ``out/cascade/REPORT.md``."""
    from mpo.demo import run

    if fresh or not (out / "REPORT.md").exists():
        run(out, scale, fresh)  # the plain demo first: its steps are skipped where their output exists
    p = Pipeline(out, fresh=False, record=out / "cascade" / TIMINGS)
    p.step(
        "cascade: pairs from MPO",
        out / "cascade" / "pairs_mpo" / "report.json",
        *pair_build_args(out, scale, out / "mpo", out / "cascade" / "pairs_mpo"),
    )
    for arm in STEP_OF_STAGE.values():
        train_arm(p, out, scale, arm, MAIN_SEED, seed_dir(out, arm, MAIN_SEED))
    main = {a.name: accuracy(a.eval_dir) for a in arms(out, scale) if a.name != "SFT"}
    leading = sorted(main, key=lambda name: -main[name])[:2]
    for arm in leading:
        for seed in SEEDS:
            if seed != MAIN_SEED:
                train_arm(p, out, scale, arm, seed, seed_dir(out, arm, seed))
    seeds = {arm: [accuracy(seed_eval(out, arm, s)) for s in SEEDS] for arm in leading}
    return write_report(out, scale, compute(out, p.recorded), seeds, sum(p.recorded.values()))


def accuracy(eval_dir: Path) -> float:
    return json.loads((eval_dir / "results.json").read_text())["overall"]["accuracy"]


def demo_timings(out: Path) -> dict[str, float]:
    """The demo's step seconds, as its pipeline recorded them (empty for a demo run before they were kept)."""
    record = out / TIMINGS
    return json.loads(record.read_text()) if record.exists() else {}


def responses(build: Path) -> int:
    """Responses generated by a pair build (every response of every record of its shards)."""
    from mpo.journal import read_records

    return sum(
        len(r.get("responses") or [])
        for shard in build.glob("shards/*.jsonl")
        for r in read_records(shard)[0]
    )


def rollouts(run: Path) -> int:
    """Responses a GSPO run generated: optimizer steps x samples per step (per-device batch x accumulation x
    ranks)."""
    steps = json.loads((run / "trainer_state.json").read_text())["global_step"]
    record = json.loads((run / "mpo_config.json").read_text())
    args = record["args"]
    return (
        steps
        * args["per_device_train_batch_size"]
        * args["gradient_accumulation_steps"]
        * record["world_size"]
    )


def compute(out: Path, timings: dict[str, float]) -> dict[str, dict]:
    """Seconds (None: not recorded) and generated responses of every stage an arm can take from SFT."""
    demo = demo_timings(out)

    def seconds(prefix: str, source: dict[str, float]) -> float | None:
        return next((v for k, v in source.items() if k.startswith(prefix)), None)

    c = out / "cascade"
    stages = {
        "pairs from SFT": {"seconds": seconds(PAIRS_FROM_SFT, demo), "responses": responses(out / "pairs")},
        "MPO": {"seconds": seconds(MPO_TRAINING, demo), "responses": 0},
        "pairs from MPO": {
            "seconds": seconds("cascade: pairs from MPO", timings),
            "responses": responses(c / "pairs_mpo"),
        },
    }
    for stage, arm in STEP_OF_STAGE.items():
        run = seed_dir(out, arm, MAIN_SEED)
        gspo = arm != "MPO round 2"
        stages[stage] = {
            "seconds": seconds(f"cascade: {arm}, seed {MAIN_SEED}", timings),
            "responses": rollouts(run) if gspo else 0,
        }
    return stages


# ---- the report ----------------------------------------------------------------------------------------
COMPARED = (  # the paired tests of the report, (first, second): the targets' first
    ("MPO", "MPO -> GSPO"),
    ("GSPO from SFT", "MPO -> GSPO"),
    ("MPO", "MPO round 2"),
    ("MPO round 2", "MPO -> GSPO"),
)


def arm_results(out: Path, scale: Scale, stages: dict[str, dict]) -> dict[str, dict]:
    """Per arm: accuracy, right answers, items, the exact McNemar p against SFT and MPO, and its compute from
    the SFT checkpoint (seconds None when a step's time was not recorded)."""
    from mpo.grading.statistics import mcnemar

    all_arms = arms(out, scale)
    right = {a.name: correctness(a.eval_dir) for a in all_arms}
    results = {}
    for a in all_arms:
        r = right[a.name]
        seconds = [stages[s]["seconds"] for s in a.stages]
        results[a.name] = {
            "model": a.model,
            "right": sum(r.values()),
            "items": len(r),
            "accuracy": sum(r.values()) / len(r),
            "p_vs_sft": mcnemar(right["SFT"], r).p_value,
            "p_vs_mpo": mcnemar(right["MPO"], r).p_value,
            "stages": list(a.stages),
            "seconds": None if None in seconds else round(sum(seconds), 1),
            "responses": sum(stages[s]["responses"] for s in a.stages),
        }
    return results


def paired_rows(out: Path, scale: Scale) -> list[dict]:
    from mpo.grading.statistics import mcnemar

    runs = {a.name: a.eval_dir for a in arms(out, scale)}
    rows = []
    for first, second in COMPARED:
        t = mcnemar(correctness(runs[first]), correctness(runs[second]))
        rows.append(
            {"first": first, "second": second, "both": t.both, "only_first": t.only_first}
            | {"only_second": t.only_second, "neither": t.neither, "p": t.p_value}
        )
    return rows


def targets(results: dict[str, dict], paired: list[dict]) -> list[dict]:
    """The issue's targets on this run: MPO then GSPO >= MPO + 3 points with p < 0.05, and >= GSPO from SFT."""
    cascade, mpo, rl = (results[n]["accuracy"] for n in ("MPO -> GSPO", "MPO", "GSPO from SFT"))
    p_mpo, p_rl = (next(r["p"] for r in paired if r["first"] == n) for n in ("MPO", "GSPO from SFT"))
    return [
        {
            "target": "MPO -> GSPO beats MPO by >= 3 points with exact McNemar p < 0.05",
            "measured": f"{100 * (cascade - mpo):+.1f} points, p = {p_mpo:.2g}",
            "met": cascade - mpo >= 0.03 and p_mpo < 0.05,
        },
        {
            "target": "MPO -> GSPO at least as good as GSPO from SFT at the same RL budget",
            "measured": f"{100 * cascade:.1f} % against {100 * rl:.1f} % ({100 * (cascade - rl):+.1f}, p = {p_rl:.2g})",
            "met": cascade >= rl,
        },
    ]


def fmt_seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def accuracy_table(results: dict[str, dict]) -> list[str]:
    lines = [
        "| arm | accuracy | right / items | vs SFT | p vs SFT | vs MPO | p vs MPO | wall s from SFT | "
        "generated responses from SFT |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sft, mpo = results["SFT"]["accuracy"], results["MPO"]["accuracy"]
    for name, r in results.items():
        lines.append(
            f"| {name} | {100 * r['accuracy']:.1f} % | {r['right']} / {r['items']} | "
            f"{100 * (r['accuracy'] - sft):+.1f} | {r['p_vs_sft']:.2g} | {100 * (r['accuracy'] - mpo):+.1f} | "
            f"{r['p_vs_mpo']:.2g} | {fmt_seconds(r['seconds'])} | {r['responses']} |"
        )
    return lines


def paired_table(paired: list[dict]) -> list[str]:
    lines = [
        "| first | second | both right | first only | second only | neither | exact McNemar p |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in paired:
        lines.append(
            f"| {r['first']} | {r['second']} | {r['both']} | {r['only_first']} | {r['only_second']} | "
            f"{r['neither']} | {r['p']:.2g} |"
        )
    return lines


def compute_table(out: Path, stages: dict[str, dict]) -> list[str]:
    lines = ["| step | wall s | generated responses |", "|---|---:|---:|"]
    lines += [f"| {name} | {fmt_seconds(s['seconds'])} | {s['responses']} |" for name, s in stages.items()]
    for stage, arm in STEP_OF_STAGE.items():
        record = json.loads((seed_dir(out, arm, MAIN_SEED) / "mpo_config.json").read_text())
        queries = record.get("queries")
        if queries:
            lines.append(
                f"\n{stage}: {record['args']['max_steps']} steps, {queries['kept']} of {queries['questions']} "
                f"questions kept by rollout accuracy in [{queries['range'][0]:g}, {queries['range'][1]:g}] "
                f"({queries['source'] or 'no selection'})."
            )
    return lines


def seed_table(seeds: dict[str, list[float]]) -> list[str]:
    lines = [
        "| arm | mean accuracy | spread (std) | min | max | per seed |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for arm, accs in seeds.items():
        lines.append(
            f"| {arm} | {100 * statistics.mean(accs):.1f} % | {100 * statistics.stdev(accs):.1f} | "
            f"{100 * min(accs):.1f} | {100 * max(accs):.1f} | {', '.join(f'{100 * a:.1f}' for a in accs)} |"
        )
    (a, first), (b, second) = list(seeds.items())[:2]
    apart = min(first) > max(second)
    lines += [
        "",
        f"Worst {a} seed {100 * min(first):.1f} %, best {b} seed {100 * max(second):.1f} %: the seed ranges "
        f"{'do not overlap' if apart else 'overlap'}.",
    ]
    return lines


def write_report(
    out: Path,
    scale: Scale,
    stages: dict[str, dict],
    seeds: dict[str, list[float]],
    total: float | None = None,
) -> Path:
    """``out/cascade/REPORT.md``, ``results.json`` and ``compute.png`` (module docstring); ``total``: the
    seconds of every cascade step (timings.json), against the 20 minutes `make demo-cascade` may take."""
    results, paired = arm_results(out, scale, stages), paired_rows(out, scale)
    goals = targets(results, paired)
    if total is not None:
        goals.append(
            {
                "target": "`make demo-cascade` takes at most 20 minutes on 2 cores after the demo",
                "measured": f"its steps took {total:.0f} s ({total / 60:.1f} min; cascade/timings.json)",
                "met": total <= 1200,
            }
        )
    n = results["SFT"]["items"]
    plot = plot_compute(out / "cascade" / "compute.png", results)
    lines = [
        "# Cascade RL on the demo: MPO, then GSPO",
        "",
        f"Held-out synthetic items: {n} (chain of thought, greedy; one item is {100 / n:.1f} points; a uniform "
        f"random guess scores {100 * chance_level(out, n):.1f} %). GSPO arms: {scale.gspo_steps} steps each.",
        "",
        "## Targets",
        "",
        *[f"- {g['target']}: {g['measured']}: **{'met' if g['met'] else 'not met'}**." for g in goals],
        "",
        "## Held-out accuracy, one run per arm",
        "",
        *accuracy_table(results),
        "",
        "## Paired tests on the same items",
        "",
        *paired_table(paired),
        "",
        "## Compute from the SFT checkpoint",
        "",
        *compute_table(out, stages),
        "",
        f"![accuracy against compute]({plot.name})",
        "",
        f"## Seeds: the two leading arms over seeds {list(SEEDS)}",
        "",
        *seed_table(seeds),
        "",
    ]
    report = out / "cascade" / "REPORT.md"
    report.write_text("\n".join(lines))
    record = {"arms": results, "paired": paired, "stages": stages, "seeds": seeds, "targets": goals}
    (out / "cascade" / "results.json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines[: 7 + len(goals)]) + f"\n[demo] cascade report: {report}")
    return report


LINEAGE = (("SFT", "MPO"), ("MPO", "MPO -> GSPO"), ("MPO", "MPO round 2"), ("SFT", "GSPO from SFT"))


def plot_compute(path: Path, results: dict[str, dict]) -> Path:
    """Accuracy against generated responses and against wall seconds from the SFT checkpoint, one point per
    arm, each arm joined to the one it started from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in (
        (axes[0], "responses", "generated responses"),
        (axes[1], "seconds", "wall seconds"),
    ):
        for first, second in LINEAGE:
            a, b = results[first], results[second]
            if a[key] is not None and b[key] is not None:
                ax.plot([a[key], b[key]], [100 * a["accuracy"], 100 * b["accuracy"]], color="tab:gray", lw=1)
        for name, r in results.items():
            if r[key] is not None:
                ax.scatter([r[key]], [100 * r["accuracy"]], zorder=3, label=name)
        ax.set_xlabel(f"{label} from the SFT checkpoint")
        ax.set_ylabel("held-out accuracy (%)")
        ax.legend(fontsize=7)
    fig.suptitle("Cascade RL on the demo: accuracy against compute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
