"""Scoring one response, and accuracy overall, per benchmark and per category.

Direct answers: the whole response is the prediction. Chain-of-thought answers: the prediction is
:func:`mpo.answers.extract_answer` (``auto``: the last ``Final answer:``, else the last
``\\boxed{}``); a response without one is wrong, with reason ``unparsable``. Checking is
:func:`mpo.answers.is_correct`, kind ``choice`` for multiple choice, else the item's ``kind`` or
:func:`mpo.answers.infer_kind` of the ground truth (yes/no, number, text).
"""

from __future__ import annotations

from eval.benchmarks import EvalItem
from mpo.answers import extract_answer, infer_kind, is_correct

UNPARSABLE = "unparsable"


def answer_kind(item: EvalItem) -> str:
    if item.kind:
        return item.kind
    return "choice" if item.choices else infer_kind(item.answer)


def score(item: EvalItem, response: str, cot: bool) -> dict:
    """``{"kind", "prediction", "correct", "reason"}`` for one response (``reason``: None or "unparsable")."""
    kind = answer_kind(item)
    prediction = extract_answer(response, "auto") if cot else response.strip()
    correct = is_correct(prediction, item.answer, kind, choices=item.choices)
    return {"kind": kind, "prediction": prediction, "correct": bool(correct),
            "reason": UNPARSABLE if prediction is None else None}  # fmt: skip


def _counts(records: list[dict]) -> dict:
    total = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    return {
        "accuracy": correct / total if total else 0.0,
        "correct": correct,
        "total": total,
        "unparsable": sum(r.get("reason") == UNPARSABLE for r in records),
    }


def _grouped(records: list[dict], field: str) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r[field]), []).append(r)
    return {key: _counts(groups[key]) for key in sorted(groups)}


def summarize(records: list[dict]) -> dict:
    """``{"overall": counts, "benchmarks": {name: counts + {"categories": {cat: counts}, "kinds": {kind: counts}}}}``.

    ``counts`` is ``{"accuracy", "correct", "total", "unparsable"}``; accuracy is a fraction in
    [0, 1], micro-averaged (every item counts once). ``kinds`` splits a benchmark by answer kind
    (choice, yesno, number, text): a model can learn open answers long before it learns to map an
    answer to its option letter. Benchmarks keep the order of ``records``; categories and kinds are sorted.
    """
    by_bench: dict[str, list[dict]] = {}
    for r in records:
        by_bench.setdefault(r["benchmark"], []).append(r)
    benchmarks = {}
    for name, rows in by_bench.items():
        benchmarks[name] = {**_counts(rows), "categories": _grouped(rows, "category"), "kinds": _grouped(rows, "kind")}
    return {"overall": _counts(records), "benchmarks": benchmarks}
