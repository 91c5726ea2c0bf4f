"""`mpo eval`: evaluate a checkpoint on benchmarks, or compare finished evaluations.

    mpo eval --model M --data FILE [--data FILE ...] [--cot] [--judge-model J] [--on-bad-row skip] --out DIR
    mpo eval --model M --data FILE --cot --num-samples 8 [--aggregate majority|best-of-n] --out DIR
    mpo eval --compare DIR_A DIR_B ... --out DIR

An evaluation writes ``DIR/predictions.jsonl`` (one line per item, appended as soon as its batch is
generated), ``DIR/results.json`` (accuracy overall, per benchmark, per category, with counts),
``DIR/results.md`` and ``DIR/run.json`` (the settings). Rerunning the same command resumes: items
already in predictions.jsonl are skipped, never written twice. A comparison writes
``DIR/compare.md``, ``DIR/compare.json`` and ``DIR/compare.png`` (and, when runs sampled with
``--num-samples``, their accuracy against N in compare.md and ``DIR/compare_scaling.png``).

Bad rows (an unreadable image, a missing field, ...) stop the run with ``file:line: field: reason``
(``--on-bad-row fail``, the default; ``error`` is accepted too) or are left out (``skip``): then ``DIR/bad_rows.json`` lists
each with its file, line, field and reason, counted per reason, and one console line sums them up.
``--judge-model`` adds the judged scores of MathVista and MMVet (:mod:`eval.judge`) next to their
exact-match scores; without it, results say they are exact match only.

Test-time scaling (:mod:`eval.scaling`): ``--num-samples N`` samples N responses per item (at
``--temperature``, each item seeded by ``--seed`` and its benchmark and index, so a resumed or
differently batched run samples the same responses) and keeps one by ``--aggregate majority`` (vote
on the extracted final answers) or ``best-of-n`` (highest ``--scorer`` score: ``reward``, the DPO
implicit reward against ``--reference`` (:mod:`eval.reward`), or ``judge``, a ``--judge-model``'s
grade). The journal line of an item holds all N responses, so a killed run resumes without
sampling finished items again. results.json / results.md add the accuracy at N = 1, 2, 4, ..., N
(the rule applied to the first k samples) and ``DIR/scaling.png`` draws it.

The parts: :mod:`mpo.cli.eval` (the flags) -> :class:`eval.config.EvalConfig` (checked) ->
:func:`evaluate` here (items, resume, results) with :mod:`eval.predict` (generation and the journal).
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.benchmarks import EvalItem, load_benchmarks
from eval.config import BAD_ROWS, DEFAULT_BATCH_SIZE, EvalConfig
from eval.judge import judge_records
from eval.predict import build_requests, item_key, predict, prediction_key
from eval.reports import SCALING_PLOT, results_markdown, scaling_chart
from eval.scaling import records_at, sample_counts
from eval.scoring import summarize
from mpo.data.meta import BadRows
from mpo.errors import UserError
from mpo.journal import Journal

PREDICTIONS = "predictions.jsonl"
# Settings a resumed run must share with the run that wrote DIR, with the values of runs made before a
# key existed.
_RUN_KEYS = {
    "model": None,
    "cot": None,
    "max_new_tokens": None,
    "max_dynamic_patch": None,
    "num_samples": 1,
    "temperature": 0.0,
    "seed": None,
    "aggregate": None,
    "scorer": None,
    "reference": None,
    "beta": None,
}


def _check_run(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to mix predictions of different models or prompts in one DIR (unless --overwrite)."""
    run_file = out / "run.json"
    if overwrite:
        for name in (
            PREDICTIONS,
            "results.json",
            "results.md",
            "run.json",
            BAD_ROWS,
            "judgements.jsonl",
            SCALING_PLOT,
        ):
            (out / name).unlink(missing_ok=True)
    elif run_file.is_file():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        changed = [k for k, old in _RUN_KEYS.items() if previous.get(k, old) != settings[k]]
        if changed:
            what = ", ".join(f"{k}: {previous.get(k)!r} -> {settings[k]!r}" for k in changed)
            raise UserError(
                f"{out} holds an evaluation with other settings ({what}); "
                "use another --out, or --overwrite to start over"
            )
    elif (out / PREDICTIONS).is_file():
        raise UserError(f"{out / PREDICTIONS} exists without run.json; use another --out, or --overwrite")
    run_file.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")


def _check_journal(items: list[EvalItem], done: dict, journal: Journal, path: Path) -> None:
    """Refuse predictions made for another question or answer under the same key (a changed benchmark)."""
    for it in items:
        old = done.get(item_key(it.benchmark, it.index))
        if old is not None and (old.get("question"), old.get("answer")) != (it.question, it.answer):
            journal.close()
            raise UserError(
                f"{path}: the prediction for {it.benchmark} index {it.index} was made for another "
                f"question or answer than {it.path}:{it.line}; use another --out, or --overwrite"
            )


def _prepare_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_bad_rows(out: Path, bad: BadRows) -> None:
    if bad.skipped:
        bad.write(out / BAD_ROWS)
    else:
        (out / BAD_ROWS).unlink(missing_ok=True)


def evaluate(config: EvalConfig) -> dict:
    """Evaluate ``config.model`` on ``config.data`` into ``config.out``; returns the results (also in
    results.json). Items already in ``predictions.jsonl`` are not generated again."""
    out = _prepare_out(config.out)
    settings = config.settings()
    bad, dropped = BadRows(config.bad_row_policy), {}
    benchmarks = load_benchmarks(list(config.data), out / "images", bad, dropped)
    items, requests = build_requests(
        [it for bench in benchmarks.values() for it in bench[: config.limit]],
        config.cot,
        config.max_dynamic_patch,
        bad,
    )
    _check_run(out, {**settings, "data": list(config.data)}, config.overwrite)
    _write_bad_rows(out, bad)
    journal = Journal(out / PREDICTIONS, prediction_key, "prediction")
    done = journal.done
    _check_journal(items, done, journal, out / PREDICTIONS)
    pending = [it for it in items if item_key(it.benchmark, it.index) not in done]
    batch_size = predict(config, pending, requests, journal) if pending else config.batch_size
    journal.close()
    judged_by = _judge(config, items, done, batch_size)
    records = [done[item_key(it.benchmark, it.index)] for it in items]
    results = {
        **settings,
        "data": [
            {
                "benchmark": name,
                "items": sum(it.benchmark == name for it in items),
                "dropped_no_image": dropped.get(name, 0),
            }
            for name in benchmarks
        ],
        "resumed": len(items) - len(pending),
        "bad_rows": {"skipped": len(bad.skipped), "by_field": _by_field(bad)},
        "judge_model": judged_by,
        **summarize(records),
    }
    if config.sampled:
        results["test_time_scaling"] = scaling_curve(records, config.sampling)
        scaling_chart({Path(config.model_id).name: results["test_time_scaling"]}, out / SCALING_PLOT)
    (out / "results.json").write_text(
        json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "results.md").write_text(results_markdown(results), encoding="utf-8")
    return results


def scaling_curve(records: list[dict], sampling: dict) -> dict:
    """Accuracy against N: ``{"aggregate", "num_samples", "temperature", "seed", "curve": [{"n", "accuracy",
    "correct", "total", "benchmarks": {name: accuracy}}]}``, each point the rule over the first n samples."""
    curve = []
    for k in sample_counts(sampling["num_samples"]):
        summary = summarize(records_at(records, k))
        o = summary["overall"]
        curve.append(
            {
                "n": k,
                "accuracy": o["accuracy"],
                "correct": o["correct"],
                "total": o["total"],
                "benchmarks": {name: b["accuracy"] for name, b in summary["benchmarks"].items()},
            }
        )
    keys = ("aggregate", "num_samples", "temperature", "seed", "scorer")
    return {**{k: sampling[k] for k in keys}, "curve": curve}


def _by_field(bad: BadRows) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in bad.skipped:
        counts[row["field"] or "row"] = counts.get(row["field"] or "row", 0) + 1
    return dict(sorted(counts.items()))


def _judge(config: EvalConfig, items: list[EvalItem], done: dict, batch_size: int | None) -> str | None:
    """Judge what needs it when a judge is given; returns the judge's name (None: no judge)."""
    judge_model, judge_backend = config.judge_model, config.judge_backend
    if judge_model is None and judge_backend is None:
        return None
    name = judge_model or getattr(judge_backend, "name", type(judge_backend).__name__)
    if not any(it.rule.judge for it in items):
        return name
    if judge_backend is None:
        from mpo.generation import make_backend, resolve_backend_name

        kind = resolve_backend_name(config.backend_kind)
        judge_backend = make_backend(
            kind, judge_model, batch_size=batch_size or DEFAULT_BATCH_SIZE.get(kind, 16)
        )
    batch_size = batch_size or DEFAULT_BATCH_SIZE["transformers"]
    judge_records(items, done, judge_backend, config.out, batch_size, name)
    return name


def summary_line(results: dict, out: Path) -> str:
    """The console line of a finished evaluation (and of its skipped rows, when there were any)."""
    o = results["overall"]
    per_bench = ", ".join(f"{name} {100 * b['accuracy']:.1f}%" for name, b in results["benchmarks"].items())
    line = (
        f"mpo eval: {o['total']} items ({results['resumed']} resumed), accuracy {100 * o['accuracy']:.1f}% "
        f"({per_bench}) -> {out}/results.json"
    )
    scaling = results.get("test_time_scaling")
    if scaling:
        points = ", ".join(f"N={p['n']} {100 * p['accuracy']:.1f}%" for p in scaling["curve"])
        line += f"\nmpo eval: {scaling['aggregate']} over samples: {points} -> {out}/{SCALING_PLOT}"
    bad = results["bad_rows"]
    if bad["skipped"]:
        reasons = ", ".join(f"{field} {n}" for field, n in bad["by_field"].items())
        line += f"\nmpo eval: skipped {bad['skipped']} bad rows ({reasons}) -> {out}/{BAD_ROWS}"
    return line
