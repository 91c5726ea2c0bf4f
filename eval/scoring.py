"""Scoring: each response against its ground truth, then accuracy overall / per benchmark / per category.

Direct mode takes the whole response as the prediction; ``--cot`` extracts it after the last
``Final answer:`` (or from the last ``\\boxed{}``), and a response without one counts as wrong and as
``unparsable``. The prediction is checked by the benchmark's rule (:mod:`eval.rules`: VLMEvalKit's
exact-matching rules for the benchmarks it knows; for other files, option letters and yes/no as
VLMEvalKit matches them, anything else by :func:`mpo.grading.answers.is_correct` of the item's ``kind`` or
the kind :func:`mpo.grading.answers.infer_kind` gives the ground truth).

MMBench is scored circularly: its rows are grouped by ``index % 1e6`` and a group (one item)
counts as right only if every row of it is; counts are of items, not rows. A benchmark whose
VLMEvalKit score needs a judge model (MathVista, MMVet) reports the exact-match score here and,
when ``--judge-model`` was given, the judged score separately (:mod:`eval.judge`).
"""

from __future__ import annotations

from eval.benchmarks import EvalItem
from eval.rules import CIRCULAR_OFFSET, GENERIC, RULES
from mpo.grading.answers import extract_answer, infer_kind, reasoning_steps, states_steps

UNPARSABLE = "unparsable"


def answer_kind(item: EvalItem) -> str:
    if item.kind:
        return item.kind
    return "choice" if item.choices else infer_kind(item.answer)


def score(item: EvalItem, response: str, cot: bool) -> dict:
    """``{"kind", "prediction", "correct", "reason", "rule"}`` for one response (``reason``: None or
    "unparsable"; ``rule``: the name of the benchmark rule that scored it), plus ``group`` (circular
    benchmarks), ``l2_category`` where the row has one, and ``sound`` for a chain of thought whose row
    has a reference one (a ``reasoning`` column): whether the response states every step of it."""
    prediction = extract_answer(response, "auto") if cot else response.strip()
    correct = prediction is not None and item.rule.hit(item, prediction)
    record = {
        "kind": answer_kind(item),
        "prediction": prediction,
        "correct": bool(correct),
        "reason": UNPARSABLE if prediction is None else None,
        "rule": item.rule.name,
    }
    if item.rule.circular:
        record["group"] = str(int(item.index) % CIRCULAR_OFFSET)
    if "l2-category" in item.fields:
        record["l2_category"] = item.fields["l2-category"]
    if cot and item.fields.get("reasoning", "").strip():
        record["sound"] = states_steps(response, reasoning_steps(item.fields["reasoning"]))
    return record


def circular_items(records: list[dict]) -> list[dict]:
    """One record per circular group: the group's main row (index == group), ``correct`` only if every
    row of the group is, ``unparsable`` if any is. Rows whose main row is absent are left out (as
    VLMEvalKit leaves them out)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    items = []
    for group, rows in groups.items():
        main = next((r for r in rows if str(r["index"]) == group), None)
        if main is not None:
            unparsable = any(r.get("reason") == UNPARSABLE for r in rows)
            items.append(
                {
                    **main,
                    "correct": all(r["correct"] for r in rows),
                    "reason": UNPARSABLE if unparsable else None,
                    "rows": len(rows),
                }
            )
    return items


def _counts(records: list[dict]) -> dict:
    """``{"accuracy", "correct", "total", "unparsable"}``, and ``correct_and_sound`` (right answers that
    state their reference reasoning) where the records were checked for it."""
    total = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    counts = {
        "accuracy": correct / total if total else 0.0,
        "correct": correct,
        "total": total,
        "unparsable": sum(r.get("reason") == UNPARSABLE for r in records),
    }
    if any("sound" in r for r in records):
        counts["correct_and_sound"] = sum(bool(r["correct"] and r.get("sound")) for r in records)
    return counts


def _grouped(records: list[dict], field: str) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r[field]), []).append(r)
    return {key: _counts(groups[key]) for key in sorted(groups)}


def _judged(records: list[dict]) -> dict | None:
    """The judged score of a benchmark: the mean of ``judged`` (1/0 for a judged answer, a grade in
    [0, 1] for MMVet) over its records, or None when no record was judged."""
    values = [r["judged"] for r in records if r.get("judged") is not None]
    if not values:
        return None
    return {"accuracy": sum(values) / len(values), "judged": len(values), "total": len(records)}


def summarize(records: list[dict]) -> dict:
    """``{"overall": counts, "benchmarks": {name: counts + {"categories", "kinds", ...}}}``.

    ``counts`` is ``{"accuracy", "correct", "total", "unparsable"}``; accuracy is a fraction in
    [0, 1], micro-averaged (every item counts once; a circular benchmark's items are its groups,
    and ``rows`` gives its row count). ``kinds`` splits a benchmark by answer kind (choice, yesno,
    number, text): a model can learn open answers long before it learns to map an answer to its
    option letter. A benchmark with its own summary numbers adds ``metrics`` (HallusionBench aAcc /
    fAcc / qAcc, OCRBench final score); one that VLMEvalKit scores with a judge adds ``judged``
    (None without ``--judge-model``). Benchmarks keep the order of ``records``; categories and kinds
    are sorted.
    """
    by_bench: dict[str, list[dict]] = {}
    for r in records:
        by_bench.setdefault(r["benchmark"], []).append(r)
    benchmarks, scored = {}, []
    for name, rows in by_bench.items():
        rule = RULES.get(rows[0].get("rule"), GENERIC)
        items = circular_items(rows) if rule.circular else rows
        entry = {
            **_counts(items),
            "categories": _grouped(items, "category"),
            "kinds": _grouped(items, "kind"),
        }
        if rule.circular:
            entry["rows"] = len(rows)
        if rule.metrics is not None:
            entry["metrics"] = rule.metrics(items)
        if rule.judge is not None:
            entry["judged"] = _judged(items)
        benchmarks[name] = entry
        scored += items
    return {"overall": _counts(scored), "benchmarks": benchmarks}
