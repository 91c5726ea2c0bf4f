"""REPORT.md of a demo run: the comparison, the paired test, soundness, test-time scaling, curves, pairs."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path


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
    from mpo.grading.statistics import mcnemar

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
