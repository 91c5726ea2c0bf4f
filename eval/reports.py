"""Reports: one run's results as a markdown table, and several runs side by side (table + bar chart).

Accuracies are shown in percent with one decimal; differences are in percentage points against
the first run compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mpo import markdown
from mpo.errors import UserError

OVERALL = "overall"
ALL = "all"
SCALING_PLOT = "scaling.png"
COMPARE_SCALING_PLOT = "compare_scaling.png"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def breakdown(bench: dict) -> dict[str, dict]:
    """A benchmark's rows below its total: each category, then each answer kind as ``answer: KIND``."""
    kinds = {f"answer: {kind}": counts for kind, counts in bench.get("kinds", {}).items()}
    return {**bench["categories"], **kinds}


def results_markdown(results: dict) -> str:
    """The table of one run: overall, each benchmark, each of its categories."""
    cot = results.get("cot")
    lines = [
        f"# Evaluation of `{results.get('model', '?')}`",
        "",
        f"Prompt: {'chain of thought (answer after `Final answer:`)' if cot else 'direct answer'}. "
        f"Accuracy in %.",
        "",
    ]

    def row(bench: str, cat: str, c: dict) -> list:
        return [bench, cat, c["correct"], c["total"], _pct(c["accuracy"])] + (
            [c["unparsable"]] if cot else []
        )

    rows = [row(f"**{OVERALL}**", "", results["overall"])]
    for bench, b in results["benchmarks"].items():
        rows.append(row(bench, ALL, b))
        rows += [row(bench, cat, c) for cat, c in breakdown(b).items()]
    header = ["benchmark", "category", "correct", "total", "accuracy"] + (["unparsable"] if cot else [])
    lines += markdown.table(header, rows, "llrrr" + ("r" if cot else ""))
    return "\n".join(lines + _scaling_lines(results) + _notes(results)) + "\n"


def _scaling_lines(results: dict) -> list[str]:
    """The accuracy-against-N table of a sampled run (none for a greedy one)."""
    scaling = results.get("test_time_scaling")
    if not scaling:
        return []
    rule = (
        "majority vote on the final answers"
        if scaling["aggregate"] == "majority"
        else f"best of N by the {scaling['scorer']} scorer"
    )
    benches = list(scaling["curve"][0]["benchmarks"])
    lines = [
        "",
        "## Accuracy against N (test-time scaling)",
        "",
        f"{rule}, over the first N of {scaling['num_samples']} samples per item (temperature "
        f"{scaling['temperature']}, seed {scaling['seed']}); the table above is N = {scaling['num_samples']}. "
        f"Accuracy in %; plot: `{SCALING_PLOT}`.",
        "",
    ]
    rows = [
        [p["n"], p["correct"], p["total"], _pct(p["accuracy"]), *(_pct(p["benchmarks"][b]) for b in benches)]
        for p in scaling["curve"]
    ]
    return lines + markdown.table(
        ["N", "correct", "total", "accuracy", *benches], rows, "r" * (4 + len(benches))
    )


def scaling_chart(curves: dict[str, dict], path: Path) -> Path:
    """Overall accuracy against N (log2 axis), one line per run (``curves``: name -> ``test_time_scaling``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for run, (name, scaling) in enumerate(curves.items()):
        ns = [p["n"] for p in scaling["curve"]]
        ys = [100 * p["accuracy"] for p in scaling["curve"]]
        ax.plot(ns, ys, marker="o", label=f"{name} ({scaling['aggregate']})")
        for n, y in zip(ns, ys, strict=True):
            ax.annotate(
                f"{y:.1f}",
                (n, y),
                textcoords="offset points",
                xytext=(0, 6 if run % 2 == 0 else -12),
                ha="center",
                fontsize=7,
                color=f"C{run}",
            )
    ax.set_xscale("log", base=2)
    all_ns = sorted({p["n"] for s in curves.values() for p in s["curve"]})
    ax.set_xticks(all_ns, [str(n) for n in all_ns])
    top = max(100 * p["accuracy"] for s in curves.values() for p in s["curve"])
    ax.set_ylim(0, min(105.0, max(10.0, top + 10)))
    ax.set_xlabel("samples per item (N)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy against N (test-time scaling)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _notes(results: dict) -> list[str]:
    """Lines under the table: circular counting, benchmark metrics, judged scores, skipped rows."""
    notes = []
    for bench, b in results["benchmarks"].items():
        if "rows" in b:
            notes.append(
                f"- {bench}: circular evaluation, {b['total']} items from {b['rows']} rows "
                "(an item is right only if all its rotations are)."
            )
        if b.get("metrics"):
            notes.append(
                f"- {bench}: "
                + ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in b["metrics"].items()
                )
            )
        if "judged" in b:
            judged = b["judged"]
            notes.append(
                f"- {bench}: exact match {_pct(b['accuracy'])}; "
                + (
                    f"judged by `{results.get('judge_model')}` {_pct(judged['accuracy'])} ({judged['judged']} items)"
                    if judged
                    else "exact match only (no --judge-model given; VLMEvalKit's score uses a judge)"
                )
            )
    dropped = {
        d["benchmark"]: d["dropped_no_image"] for d in results.get("data", []) if d.get("dropped_no_image")
    }
    for bench, n in dropped.items():
        notes.append(f"- {bench}: {n} rows without an image dropped (as VLMEvalKit drops them).")
    bad = results.get("bad_rows") or {}
    if bad.get("skipped"):
        reasons = ", ".join(f"{field} {n}" for field, n in bad["by_field"].items())
        notes.append(f"- {bad['skipped']} bad rows skipped ({reasons}); see bad_rows.json.")
    return ["", "Notes:", "", *notes] if notes else []


# ---------------------------------------------------------------------------------------- compare


def _load_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no results.json (run `mpo eval --model ... --out {run_dir}` first)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(results, dict) or "overall" not in results or "benchmarks" not in results:
        raise UserError(f"{path}: not an `mpo eval` results file (no 'overall' / 'benchmarks')")
    return results


def _default_names(dirs: list[Path]) -> list[str]:
    """Each run's folder name; when two are equal, more of the path until all differ."""
    parts = [Path(d).resolve().parts for d in dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(d) for d in dirs]


def comparison_rows(all_results: list[dict]) -> list[tuple[str, str, list[dict | None]]]:
    """(benchmark, category, counts per run or None) for overall, every benchmark and its breakdown rows.

    ``category`` is ``""`` on the overall row and ``"all"`` on a benchmark's total row."""
    keys: list[tuple[str, str]] = [(OVERALL, "")]
    for results in all_results:
        for bench, b in results["benchmarks"].items():
            for key in [(bench, ALL)] + [(bench, cat) for cat in breakdown(b)]:
                if key not in keys:
                    keys.append(key)

    def lookup(results: dict, bench: str, cat: str) -> dict | None:
        if bench == OVERALL:
            return results["overall"]
        b = results["benchmarks"].get(bench)
        if b is None:
            return None
        return b if cat == ALL else breakdown(b).get(cat)

    # benchmarks in first-seen order, each followed by its categories
    order = {bench: i for i, (bench, _) in enumerate(keys)}
    keys.sort(key=lambda k: (order[k[0]], k[1] != ALL and k[0] != OVERALL))
    return [(bench, cat, [lookup(r, bench, cat) for r in all_results]) for bench, cat in keys]


def compare(run_dirs: list[Path], out: Path, names: list[str] | None = None) -> dict:
    """Write ``out/compare.md``, ``out/compare.json`` and ``out/compare.png``; returns the JSON."""
    if len(run_dirs) < 1:
        raise UserError("--compare needs at least one run folder")
    if names is not None and len(names) != len(run_dirs):
        raise UserError(f"--names gives {len(names)} names for {len(run_dirs)} run folders")
    all_results = [_load_results(Path(d)) for d in run_dirs]
    names = list(names) if names else _default_names([Path(d) for d in run_dirs])
    rows = []
    for bench, cat, counts in comparison_rows(all_results):
        acc = [None if c is None else c["accuracy"] for c in counts]
        diff = [None if a is None or acc[0] is None else a - acc[0] for a in acc]
        rows.append(
            {
                "benchmark": bench,
                "category": cat,
                "accuracy": acc,
                "diff": diff,
                "total": [None if c is None else c["total"] for c in counts],
            }
        )
    report = {
        "runs": [
            {"name": n, "dir": str(d), "model": r.get("model"), "cot": r.get("cot")}
            for n, d, r in zip(names, run_dirs, all_results, strict=True)
        ],
        "rows": rows,
    }
    curves = {
        n: r["test_time_scaling"]
        for n, r in zip(names, all_results, strict=True)
        if r.get("test_time_scaling")
    }
    if curves:
        report["test_time_scaling"] = curves
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(
        json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "compare.md").write_text(compare_markdown(report), encoding="utf-8")
    bar_chart(report, out / "compare.png")
    if curves:
        scaling_chart(curves, out / COMPARE_SCALING_PLOT)
    return report


def _cell(row: dict, i: int) -> str:
    acc, total = row["accuracy"][i], row["total"][i]
    if acc is None:
        return "–"
    text = _pct(acc)
    if i > 0 and row["diff"][i] is not None:
        text += f" ({100 * row['diff'][i]:+.1f})"
    n0 = next((t for t in row["total"] if t is not None), None)
    if total != n0:
        text += f" [n={total}]"
    return text


def compare_markdown(report: dict) -> str:
    """One row per benchmark / category, one column per run; later runs show (difference vs the first)."""
    names = [r["name"] for r in report["runs"]]
    lines = [
        "# Comparison",
        "",
        "Accuracy in %; in parentheses the difference in points against the first run "
        f"(`{names[0]}`); n = items.",
        "",
    ]
    rows = []
    for row in report["rows"]:
        n = next((t for t in row["total"] if t is not None), "")
        bench = f"**{OVERALL}**" if row["benchmark"] == OVERALL else row["benchmark"]
        rows.append([bench, row["category"], n, *(_cell(row, i) for i in range(len(names)))])
    lines += markdown.table(
        ["benchmark", "category", "n", *(f"`{n}`" for n in names)], rows, "llr" + "r" * len(names)
    )
    return "\n".join(lines + _compare_scaling_lines(report)) + "\n"


def _compare_scaling_lines(report: dict) -> list[str]:
    """Accuracy against N of the runs that sampled, one column per run ("–": N not sampled)."""
    curves = report.get("test_time_scaling")
    if not curves:
        return []
    ns = sorted({p["n"] for s in curves.values() for p in s["curve"]})
    lines = [
        "",
        "## Accuracy against N (test-time scaling)",
        "",
        "Overall accuracy in %, each run's rule over the first N samples per item; plot: "
        f"`{COMPARE_SCALING_PLOT}`.",
        "",
    ]
    rows = []
    for n in ns:
        points = [next((p for p in s["curve"] if p["n"] == n), None) for s in curves.values()]
        rows.append([n, *("–" if p is None else _pct(p["accuracy"]) for p in points)])
    header = ["N", *(f"`{name}` ({s['aggregate']})" for name, s in curves.items())]
    return lines + markdown.table(header, rows, "r" * len(header))


def bar_chart(report: dict, path: Path) -> Path:
    """Grouped bars: one group per table row (overall, benchmark, benchmark/category), one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in report["runs"]]
    rows = report["rows"]
    labels = [
        OVERALL
        if r["benchmark"] == OVERALL
        else r["benchmark"]
        if r["category"] == ALL
        else f"{r['benchmark']}/{r['category']}"
        for r in rows
    ]
    width = 0.8 / len(names)
    fig_w = min(40.0, max(6.0, 0.35 * len(rows) * len(names) + 2))
    fig, ax = plt.subplots(figsize=(fig_w, 4.5))
    for i, name in enumerate(names):
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(rows))]
        ys = [math.nan if r["accuracy"][i] is None else 100 * r["accuracy"][i] for r in rows]  # nan: no bar
        bars = ax.bar(xs, ys, width=width, label=name)
        ax.bar_label(bars, labels=["" if math.isnan(y) else f"{y:.0f}" for y in ys], fontsize=7, padding=1)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=45 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", ncol=len(names), fontsize=8)
    ax.set_title("Accuracy per benchmark and category")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
