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
(``--on-bad-row error``, the default) or are left out (``skip``): then ``DIR/bad_rows.json`` lists
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
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from eval.benchmarks import EvalItem, load_benchmarks
from eval.judge import judge_records
from eval.prompting import make_request
from eval.reports import COMPARE_SCALING_PLOT, SCALING_PLOT, compare, results_markdown, scaling_chart
from eval.scaling import AGGREGATES, aggregate_record, records_at, sample_counts
from eval.scoring import score, summarize
from mpo.dashboards import log_report_artifact
from mpo.data.meta import BadRows
from mpo.errors import DataError, UserError
from mpo.generation import GenerationBackend, SamplingParams, add_vllm_arguments, question_seed, vllm_options
from mpo.journal import Journal

PREDICTIONS = "predictions.jsonl"
# Generation length when --max-new-tokens is not given.
DEFAULT_MAX_NEW_TOKENS = {False: 64, True: 1024}
# Prompts per generate call (predictions are written after each) when --batch-size is not given.
DEFAULT_BATCH_SIZE = {"transformers": 16, "vllm": 512}
DEFAULT_MAX_DYNAMIC_PATCH = 6
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
# --temperature when --num-samples > 1 and none is given.
DEFAULT_SAMPLE_TEMPERATURE = 0.7
SCORERS = ("reward", "judge")
BAD_ROWS = "bad_rows.json"
# --on-bad-row values -> mpo.data.meta.BadRows policies.
ON_BAD_ROW = {"error": "fail", "skip": "skip"}


def _key(benchmark: str, index: str) -> tuple[str, str]:
    return benchmark, str(index)


def prediction_key(record: dict) -> tuple[str, str]:
    """A prediction's key in ``predictions.jsonl`` (a :class:`mpo.journal.Journal`)."""
    return _key(record["benchmark"], record["index"])


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


def evaluate(
    model: str,
    data: list[str],
    out: str | Path,
    *,
    cot: bool = False,
    backend: str | GenerationBackend = "auto",
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    max_dynamic_patch: int = DEFAULT_MAX_DYNAMIC_PATCH,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    on_bad_row: str = "error",
    judge_model: str | None = None,
    judge_backend: GenerationBackend | None = None,
    num_samples: int = 1,
    temperature: float | None = None,
    seed: int = 0,
    aggregate: str = "majority",
    scorer: str | object | None = None,
    reference: str | None = None,
    beta: float | None = None,
    vllm_options: dict | None = None,
) -> dict:
    """Evaluate ``model`` on ``data`` into ``out``; returns the results (also in results.json).

    ``backend`` is a name for :func:`mpo.generation.make_backend` (built only when something is
    left to generate) or a ready backend object. ``limit`` keeps the first N items of each benchmark.
    ``on_bad_row``: ``error`` raises on the first bad row, ``skip`` leaves bad rows out and lists them
    in ``out/bad_rows.json``. ``judge_model`` (with the same backend kind as ``backend``) or a ready
    ``judge_backend`` judges the benchmarks that need one. ``vllm_options`` are the vLLM engine's
    (:func:`mpo.generation.vllm_options`).

    Sampling (:mod:`eval.scaling`): ``num_samples`` responses per item at ``temperature`` (default 0,
    greedy, with one sample; 0.7 with more), seeded per item from ``seed``; ``aggregate`` picks one
    (``majority`` or ``best-of-n``). Best-of-n scores with ``scorer``: ``"reward"`` (default; needs
    ``reference``, ``beta`` defaults to :data:`eval.reward.DEFAULT_BETA`), ``"judge"`` (needs
    ``judge_model`` or ``judge_backend``), or a ready object with ``score(request, responses)``.
    """
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if max_dynamic_patch < 1:
        raise UserError(f"--max-dynamic-patch must be >= 1, got {max_dynamic_patch}")
    if not data:
        raise UserError("no benchmark given: --data FILE")
    sampling = _sampling_settings(
        num_samples, temperature, seed, aggregate, scorer, reference, beta, judge_model or judge_backend
    )
    if on_bad_row not in ON_BAD_ROW:
        raise UserError(f"--on-bad-row must be one of {', '.join(ON_BAD_ROW)}, got {on_bad_row!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[cot]
    model_id = str(Path(model).resolve()) if Path(model).exists() else str(model)
    settings = {
        "model": model_id,
        "cot": cot,
        "max_new_tokens": max_new_tokens,
        "max_dynamic_patch": max_dynamic_patch,
        **sampling,
    }
    sampled = sampling["temperature"] > 0

    backend_name = backend if isinstance(backend, str) else "transformers"  # for a judge model
    bad, dropped = BadRows(ON_BAD_ROW[on_bad_row]), {}
    benchmarks = load_benchmarks(list(data), out / "images", bad, dropped)
    items, requests = _requests(
        [it for bench in benchmarks.values() for it in bench[:limit]], cot, max_dynamic_patch, bad
    )
    _check_run(out, {**settings, "data": list(data)}, overwrite)
    if bad.skipped:
        bad.write(out / BAD_ROWS)
    else:
        (out / BAD_ROWS).unlink(missing_ok=True)
    pred_path = out / PREDICTIONS
    journal = Journal(pred_path, prediction_key, "prediction")
    done = journal.done
    for it in items:
        old = done.get(_key(it.benchmark, it.index))
        if old is not None and (old.get("question"), old.get("answer")) != (it.question, it.answer):
            journal.close()
            raise UserError(
                f"{pred_path}: the prediction for {it.benchmark} index {it.index} was made for another "
                f"question or answer than {it.path}:{it.line}; use another --out, or --overwrite"
            )
    pending = [it for it in items if _key(it.benchmark, it.index) not in done]

    if pending:
        if isinstance(backend, str):
            from mpo.generation import make_backend, resolve_backend_name

            name = resolve_backend_name(backend)
            batch_size = batch_size or DEFAULT_BATCH_SIZE.get(name, 16)
            backend = make_backend(
                name,
                model,
                batch_size=batch_size,
                max_dynamic_patch=max_dynamic_patch,
                vllm_options=vllm_options,
            )
        batch_size = batch_size or DEFAULT_BATCH_SIZE["transformers"]
        params = SamplingParams(
            n=num_samples, temperature=sampling["temperature"], max_new_tokens=max_new_tokens, seed=seed
        )
        if sampled:
            for it in pending:  # each item's samples depend on --seed and the item alone
                requests[_key(it.benchmark, it.index)].seed = item_seed(seed, it)
        if aggregate == "best-of-n" and sampled:
            scorer = _make_scorer(
                sampling["scorer"] if scorer is None else scorer,
                model,
                backend,
                reference,
                sampling["beta"],
                judge_model,
                judge_backend,
                backend_name,
                batch_size,
                max_dynamic_patch,
            )
        bar = tqdm(total=len(pending), desc="evaluating", disable=None if progress is None else not progress)
        with journal:
            for start in range(0, len(pending), batch_size):
                chunk = pending[start : start + batch_size]
                responses = backend.generate([requests[_key(it.benchmark, it.index)] for it in chunk], params)
                if len(responses) != len(chunk):
                    raise RuntimeError(f"backend returned {len(responses)} results for {len(chunk)} prompts")
                for it, samples in zip(chunk, responses, strict=True):
                    record = {
                        "benchmark": it.benchmark,
                        "index": it.index,
                        "category": it.category,
                        "question": it.question,
                        "answer": it.answer,
                    }
                    if sampled:
                        request = requests[_key(it.benchmark, it.index)]
                        if len(samples) != num_samples:
                            raise RuntimeError(
                                f"backend returned {len(samples)} samples, expected {num_samples}"
                            )
                        scores = scorer.score(request, samples) if aggregate == "best-of-n" else None
                        record.update(aggregate_record(it, samples, cot, aggregate, scores))
                    else:
                        response = samples[0] if samples else ""
                        record.update(response=response, **score(it, response, cot))
                    journal.append(record, sync=False)
                journal.sync()
                bar.update(len(chunk))
        bar.close()
    journal.close()

    judged_by = _judge(items, done, out, judge_model, judge_backend, backend_name, batch_size)
    records = [done[_key(it.benchmark, it.index)] for it in items]
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
    if sampled:
        results["test_time_scaling"] = scaling_curve(records, sampling)
        scaling_chart({Path(model_id).name: results["test_time_scaling"]}, out / SCALING_PLOT)
    (out / "results.json").write_text(
        json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "results.md").write_text(results_markdown(results), encoding="utf-8")
    return results


def _sampling_settings(
    num_samples: int,
    temperature: float | None,
    seed: int,
    aggregate: str,
    scorer,
    reference: str | None,
    beta: float | None,
    judge,
) -> dict:
    """The sampling part of run.json, checked; names the flag at fault."""
    if num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {num_samples}")
    if temperature is None:
        temperature = 0.0 if num_samples == 1 else DEFAULT_SAMPLE_TEMPERATURE
    if temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {temperature}")
    if temperature == 0 and num_samples > 1:
        raise UserError(
            f"--num-samples {num_samples} needs sampling: give --temperature > 0 (greedy decoding "
            "gives one response)"
        )
    if aggregate not in AGGREGATES:
        raise UserError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    if aggregate != "best-of-n" or temperature == 0:
        if scorer is not None or reference is not None:
            raise UserError(
                "--scorer and --reference score samples for --aggregate best-of-n with --temperature > 0"
            )
        return {
            "num_samples": num_samples,
            "temperature": float(temperature),
            "seed": seed if temperature > 0 else None,
            "aggregate": aggregate if temperature > 0 else None,
            "scorer": None,
            "reference": None,
            "beta": None,
        }
    scorer = "reward" if scorer is None else scorer
    name = scorer if isinstance(scorer, str) else getattr(scorer, "name", type(scorer).__name__)
    if isinstance(scorer, str) and scorer not in SCORERS:
        raise UserError(f"--scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")
    if scorer == "reward" and reference is None:
        raise UserError(
            "--aggregate best-of-n --scorer reward needs --reference (the SFT checkpoint the "
            "evaluated model was trained from), or use --scorer judge --judge-model M"
        )
    if scorer == "judge" and not judge:
        raise UserError("--scorer judge needs --judge-model M")
    if reference is not None and scorer != "reward":
        raise UserError("--reference is the reference model of --scorer reward")
    if scorer == "reward":
        from eval.reward import DEFAULT_BETA

        beta = DEFAULT_BETA if beta is None else beta
        if beta <= 0:
            raise UserError(f"--beta must be > 0, got {beta}")
        reference = str(Path(reference).resolve()) if Path(reference).exists() else str(reference)
    return {
        "num_samples": num_samples,
        "temperature": float(temperature),
        "seed": seed,
        "aggregate": aggregate,
        "scorer": name,
        "reference": reference,
        "beta": beta if scorer == "reward" else None,
    }


def item_seed(seed: int, item: EvalItem) -> int:
    """The sampling seed of one item: from the run's seed, its benchmark and its index."""
    return question_seed(seed, f"{item.benchmark}\x00{item.index}")


def _make_scorer(
    scorer,
    model: str,
    backend,
    reference: str,
    beta: float | None,
    judge_model,
    judge_backend,
    backend_name: str,
    batch_size: int,
    max_dynamic_patch: int,
):
    """The best-of-n scorer: a ready object as given, else the reward or the judge scorer."""
    if not isinstance(scorer, str):
        return scorer
    if scorer == "judge":
        from eval.judge import JudgeScorer

        if judge_backend is None:
            from mpo.generation import make_backend, resolve_backend_name

            judge_backend = make_backend(
                resolve_backend_name(backend_name),
                judge_model,
                batch_size=batch_size,
                max_dynamic_patch=max_dynamic_patch,
            )
        return JudgeScorer(judge_backend)
    import torch

    from eval.reward import RewardScorer
    from mpo.models.loading import load_model, load_processor

    policy = getattr(backend, "model", None)
    if policy is None:  # vLLM holds its own copy; score with a transformers one
        policy = load_model(model, training=False)
    ref = load_model(reference, training=False)
    if torch.cuda.is_available():
        policy, ref = policy.cuda(), ref.cuda()
    return RewardScorer(policy, ref, load_processor(model), beta)


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


def _requests(items: list[EvalItem], cot: bool, max_dynamic_patch: int, bad: BadRows):
    """The items whose prompt can be built, and their requests; the others go to ``bad``."""
    kept, requests = [], {}
    for it in items:
        try:
            requests[_key(it.benchmark, it.index)] = make_request(it, cot, max_dynamic_patch)
        except DataError as err:
            bad.handle(err)
            continue
        kept.append(it)
    return kept, requests


def _by_field(bad: BadRows) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in bad.skipped:
        counts[row["field"] or "row"] = counts.get(row["field"] or "row", 0) + 1
    return dict(sorted(counts.items()))


def _judge(items, done, out: Path, judge_model, judge_backend, backend_name: str, batch_size) -> str | None:
    """Judge what needs it when a judge is given; returns the judge's name (None: no judge)."""
    if judge_model is None and judge_backend is None:
        return None
    name = judge_model or getattr(judge_backend, "name", type(judge_backend).__name__)
    if not any(it.rule.judge for it in items):
        return name
    if judge_backend is None:
        from mpo.generation import make_backend, resolve_backend_name

        kind = resolve_backend_name(backend_name)
        judge_backend = make_backend(
            kind, judge_model, batch_size=batch_size or DEFAULT_BATCH_SIZE.get(kind, 16)
        )
    judge_records(items, done, judge_backend, out, batch_size or DEFAULT_BATCH_SIZE["transformers"], name)
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mpo eval",
        description="Evaluate a checkpoint on VLMEvalKit TSV / MMPR-style jsonl benchmarks, "
        "or compare finished evaluations (--compare).",
    )
    parser.add_argument("--model", help="checkpoint folder (native InternVL)")
    parser.add_argument(
        "--data",
        action="append",
        metavar="[NAME=]FILE",
        help="benchmark: .tsv (VLMEvalKit), .jsonl (MMPR-style with answer) or meta.json; repeatable",
    )
    parser.add_argument(
        "--cot",
        action="store_true",
        help='chain-of-thought prompt, answer read after "Final answer:" (default: direct answer)',
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--backend",
        choices=["auto", "transformers", "vllm"],
        default="auto",
        help="generation backend (auto: vLLM when it imports and a GPU is present)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="prompts per generate call; predictions are saved after each (default 16, vLLM 512)",
    )
    add_vllm_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 64, or 1024 with --cot")
    parser.add_argument(
        "--max-dynamic-patch",
        type=int,
        default=DEFAULT_MAX_DYNAMIC_PATCH,
        help=f"tiles per sample, split across its images (default {DEFAULT_MAX_DYNAMIC_PATCH})",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N items of each benchmark")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier predictions in --out")
    parser.add_argument(
        "--on-bad-row",
        choices=list(ON_BAD_ROW),
        default="error",
        help="error: stop at the first bad row (file:line: field); skip: leave bad rows out, "
        f"listed in --out/{BAD_ROWS}",
    )
    parser.add_argument(
        "--judge-model",
        default=None,
        metavar="M",
        help="checkpoint that judges MathVista answer extraction and MMVet grading (opt-in; "
        "without it those benchmarks report exact match only)",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        metavar="N",
        help="sample N responses per item and keep one by --aggregate; results add the accuracy "
        "at N = 1, 2, 4, ..., N (default 1)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"sampling temperature (default 0: greedy with one sample, {DEFAULT_SAMPLE_TEMPERATURE} "
        "with --num-samples > 1)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="sampling seed (each item's samples: this and its index)"
    )
    parser.add_argument(
        "--aggregate",
        choices=list(AGGREGATES),
        default="majority",
        help="majority: vote on the extracted final answers (ties: the answer voted first); "
        "best-of-n: the response with the highest --scorer score",
    )
    parser.add_argument(
        "--scorer",
        choices=list(SCORERS),
        default=None,
        help="best-of-n scorer: reward (default), the DPO implicit reward "
        "beta*(log pi - log pi_ref) against --reference; judge: --judge-model's grade",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="M",
        help="reference checkpoint of --scorer reward (the SFT model the evaluated one was trained from)",
    )
    parser.add_argument("--beta", type=float, default=None, help="beta of --scorer reward (default 0.1)")
    parser.add_argument(
        "--report-to",
        choices=["none", "wandb"],
        default="none",
        help="also log the results (or the comparison) as a wandb artifact",
    )
    parser.add_argument(
        "--compare", nargs="+", type=Path, metavar="DIR", help="finished evaluation folders to compare"
    )
    parser.add_argument(
        "--names", nargs="+", help="with --compare: a name per folder (default: folder names)"
    )
    args = parser.parse_args(argv)

    if args.compare:
        if args.model or args.data:
            raise UserError("--compare takes finished evaluation folders; it does not run --model / --data")
        report = compare(args.compare, args.out, args.names)
        print((args.out / "compare.md").read_text(encoding="utf-8"))
        plots = "compare.png" + (f", {COMPARE_SCALING_PLOT}" if "test_time_scaling" in report else "")
        print(f"mpo eval: compared {len(report['runs'])} runs -> {args.out}/compare.md, {plots}")
        if args.report_to == "wandb":
            files = [
                args.out / name
                for name in ("compare.md", "compare.json", "compare.png", COMPARE_SCALING_PLOT)
                if (args.out / name).is_file()
            ]
            log_report_artifact(f"eval-compare-{args.out.name}", "evaluation-report", files)
        return 0
    if not args.model or not args.data:
        raise UserError("give --model and at least one --data (or --compare DIR ...)")
    results = evaluate(
        args.model,
        args.data,
        args.out,
        cot=args.cot,
        backend=args.backend,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        max_dynamic_patch=args.max_dynamic_patch,
        limit=args.limit,
        overwrite=args.overwrite,
        on_bad_row=args.on_bad_row,
        judge_model=args.judge_model,
        num_samples=args.num_samples,
        temperature=args.temperature,
        seed=args.seed,
        aggregate=args.aggregate,
        scorer=args.scorer,
        reference=args.reference,
        beta=args.beta,
        vllm_options=vllm_options(args),
    )
    print(summary_line(results, args.out))
    if args.report_to == "wandb":
        files = [
            args.out / name
            for name in ("results.json", "results.md", SCALING_PLOT)
            if (args.out / name).is_file()
        ]
        log_report_artifact(f"eval-{args.out.name}", "evaluation-report", files)
    return 0
