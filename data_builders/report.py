"""The report of a pair build: ``report.json``, ``report.md`` and (correctness) the per-question
accuracy histogram ``accuracy_histogram.png``.

Counts add up by construction:

* questions: ``in`` = sum of ``by_status`` (correctness: ``paired``, ``no_pair_kept``,
  ``all_correct``, ``none_correct``, ``bad_row``; DropoutNTP: ``paired``, ``dropped``, ``bad_row``);
* pairs, per output subset and in total: ``candidates`` = ``kept`` + sum of ``dropped`` by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from data_builders.correctness import VERDICTS
from mpo.atomic import atomic_write
from mpo.data.meta import skip_summary

HISTOGRAM = "accuracy_histogram.png"


def _status(record: dict) -> str:
    status = record["status"]
    if status in ("mixed", "candidate"):
        kept = any(c["drop"] is None for c in record["pairs"])
        return "paired" if kept else "no_pair_kept" if status == "mixed" else "dropped"
    return status


def _skipped_row(record: dict) -> dict:
    """A bad-row journal record as ``{"file", "line", "field", "reason"}`` (its reason: ``field: why``)."""
    field, sep, why = record["reason"].partition(": ")
    return {
        "file": record.get("file", record["subset"]),
        "line": record["line"],
        "field": field if sep else "",
        "reason": why if sep else record["reason"],
    }


def build_report(records: list[dict], build: dict) -> dict:
    """Counts over the merged records (after the cross-question duplicate pass)."""
    pipeline = build["pipeline"]
    statuses = Counter(_status(r) for r in records)
    order = (
        ("paired", "no_pair_kept", "all_correct", "none_correct", "bad_row")
        if pipeline == "correctness"
        else ("paired", "dropped", "bad_row")
    )
    subsets: dict[str, dict] = {}
    for record in records:
        for cand in record["pairs"]:
            name = f"{record['subset']}_{cand['subset']}"
            entry = subsets.setdefault(name, {"candidates": 0, "kept": 0, "dropped": Counter()})
            entry["candidates"] += 1
            if cand["drop"] is None:
                entry["kept"] += 1
            else:
                entry["dropped"][cand["drop"]] += 1
    dropped_total: Counter = Counter()
    for entry in subsets.values():
        dropped_total.update(entry["dropped"])
        entry["dropped"] = dict(sorted(entry["dropped"].items()))
    bad = [r for r in records if r["status"] == "bad_row"]
    report = {
        "pipeline": pipeline,
        "questions": {"in": len(records), "by_status": {s: statuses.get(s, 0) for s in order}},
        "pairs": {
            "candidates": sum(e["candidates"] for e in subsets.values()),
            "kept": sum(e["kept"] for e in subsets.values()),
            "dropped": dict(sorted(dropped_total.items())),
        },
        "subsets": dict(sorted(subsets.items())),
        "bad_rows": {
            "by_field": dict(Counter(r["reason"].split(":")[0] for r in bad)),
            "examples": [
                {
                    "key": r["key"],
                    "file": r.get("file", r["subset"]),
                    "line": r["line"],
                    "reason": r["reason"],
                }
                for r in bad[:10]
            ],
            "summary": skip_summary("mpo build-pairs", [_skipped_row(r) for r in bad]),
        },
    }
    if pipeline == "correctness":
        answered = [r for r in records if r["status"] != "bad_row"]
        verdicts = Counter(resp["verdict"] for r in answered for resp in r["responses"])
        checked = build["settings"].get("check_reasoning", False)
        report["responses"] = {v: verdicts.get(v, 0) for v in VERDICTS if checked or v != "unsound"}
        right = [
            resp["sound"]
            for r in answered
            for resp in r["responses"]
            if "sound" in resp and resp["verdict"] in ("correct", "unsound")
        ]
        if right:
            report["right_answers"] = {"total": len(right), "stating_the_reference_reasoning": sum(right)}
        n = build["settings"]["n"]
        hist = Counter(r["n_correct"] for r in answered)
        report["accuracy_histogram"] = {f"{k}/{n}": hist.get(k, 0) for k in range(n + 1)}
    report["settings"] = build["settings"]
    return report


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]


def render_markdown(report: dict) -> str:
    q, p = report["questions"], report["pairs"]
    lines = [
        f"# Preference pairs: {report['pipeline']}",
        "",
        f"{q['in']} questions in, {p['kept']} pairs kept of {p['candidates']} candidates.",
        "",
        "## Questions",
        "",
    ]
    lines += _table(
        ["status", "questions"], [[s, n] for s, n in q["by_status"].items()] + [["**in**", q["in"]]]
    )
    if "responses" in report:
        lines += ["", "## Responses", ""]
        lines += _table(["verdict", "responses"], [[v, n] for v, n in report["responses"].items()])
    if "right_answers" in report:
        right = report["right_answers"]
        lines += [
            "",
            f"Right final answers that state every step of the question's reference reasoning: "
            f"{right['stating_the_reference_reasoning']} of {right['total']}.",
        ]
    reasons = sorted({r for e in report["subsets"].values() for r in e["dropped"]})
    lines += ["", "## Pairs", ""]
    rows = [
        [name, e["candidates"], e["kept"], *[e["dropped"].get(r, 0) for r in reasons]]
        for name, e in report["subsets"].items()
    ]
    rows.append(["**total**", p["candidates"], p["kept"], *[p["dropped"].get(r, 0) for r in reasons]])
    lines += _table(["subset", "candidates", "kept", *[f"dropped: {r}" for r in reasons]], rows)
    if report["bad_rows"]["examples"]:
        lines += ["", "## Bad rows", ""]
        lines += _table(
            ["key", "file:line", "reason"],
            [[e["key"], f"{e['file']}:{e['line']}", e["reason"]] for e in report["bad_rows"]["examples"]],
        )
    if "accuracy_histogram" in report:
        lines += ["", "## Per-question accuracy", "", f"![accuracy histogram]({HISTOGRAM})", ""]
        lines += _table(
            ["correct responses", "questions"], [[k, n] for k, n in report["accuracy_histogram"].items()]
        )
    lines += ["", "## Settings", "", "```json", json.dumps(report["settings"], indent=1), "```", ""]
    return "\n".join(lines)


def plot_histogram(hist: dict[str, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(hist)), list(hist.values()), color="#4c72b0")
    ax.set_xticks(range(len(hist)), list(hist.keys()), rotation=45 if len(hist) > 12 else 0)
    ax.set_xlabel("correct responses per question")
    ax.set_ylabel("questions")
    ax.set_title("Per-question accuracy")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def write_report(out: Path, report: dict) -> None:
    atomic_write(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    atomic_write(out / "report.md", render_markdown(report))
    if "accuracy_histogram" in report:
        plot_histogram(report["accuracy_histogram"], out / HISTOGRAM)
