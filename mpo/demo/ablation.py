"""`mpo demo --ablation`: the MPO objective against its parts over seeds (same SFT checkpoint and pairs)."""

from __future__ import annotations

import json
from pathlib import Path

from mpo.demo.report import chance_level
from mpo.demo.scales import Scale
from mpo.demo.steps import evaluate, prepare, train_args

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
