"""``mpo build-pairs``: preference pairs from the model itself, in the MMPR layout.

    mpo build-pairs correctness --model M --data QA_META --out DIR [--n 8 --max-pairs-per-question 15 ...]
    mpo build-pairs dropout-ntp --model M --data D --out DIR [--keep-ratio 0.5 --chosen-from model|data]
    mpo build-pairs merge DIR

Work is split over processes with ``--shard i/n`` (or ``RANK``/``WORLD_SIZE`` under ``torchrun`` /
``accelerate launch``); each shard appends one journal line per finished question (see
:mod:`data_builders.store`), so rerunning the same command after a crash resumes where it stopped.
The last shard to finish merges: ``DIR/meta.json`` + ``DIR/<subset>.jsonl`` (what ``mpo train``
reads), ``DIR/report.json``, ``DIR/report.md`` and the accuracy histogram. ``merge`` redoes that step.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from tqdm import tqdm

from data_builders.builders import BUILDERS, BuildContext, QuestionBuilder
from data_builders.filters import FilterConfig, QualityScorer
from data_builders.inputs import load_questions, read_subsets
from data_builders.output import write_mmpr
from data_builders.report import build_report, write_report
from data_builders.store import BuildDir, parse_shard
from mpo.errors import UserError
from mpo.generation import GenerationBackend, SamplingParams
from mpo.journal import Journal

# ----------------------------------------------------------------------------------------- cli


# ------------------------------------------------------------------------------------- settings


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _backend_name(args: argparse.Namespace, backend: GenerationBackend | None) -> str:
    if backend is not None:
        return getattr(backend, "name", type(backend).__name__)
    from mpo.generation import resolve_backend_name

    return resolve_backend_name(args.backend)


def settings_of(args: argparse.Namespace, backend_name: str) -> dict:
    """Everything that decides the results; a rerun into the same folder must repeat it exactly."""
    settings = {
        "model": str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
        "data": str(args.data.resolve()),
        "limit": args.limit,
        "max_dynamic_patch": args.max_dynamic_patch,
        "backend": backend_name,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "max_words": args.max_words,
        "repetition_n": args.repetition_n,
        "repetition_threshold": args.repetition_threshold,
        "repetition_in": args.repetition_in,
        "quality_threshold": args.quality_threshold if args.quality_prompt else None,
        "quality_prompt_sha256": _sha256_files([args.quality_prompt]) if args.quality_prompt else None,
    }
    settings.update(BUILDERS[args.pipeline].settings(args))
    return settings


def make_builder(args: argparse.Namespace, backend: GenerationBackend) -> QuestionBuilder:
    """The builder of ``args.pipeline`` (:data:`data_builders.builders.BUILDERS`), generating with ``backend``."""
    pipeline = BUILDERS[args.pipeline]
    filters = FilterConfig(args.max_words, args.repetition_n, args.repetition_threshold, args.repetition_in)
    scorer = (
        QualityScorer.from_file(backend, args.quality_prompt, args.quality_threshold)
        if args.quality_prompt
        else None
    )
    try:
        params = SamplingParams(
            n=pipeline.responses(args),
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    return pipeline.make(args, BuildContext(backend, params, args.seed, filters, scorer))


def _load_backend(args: argparse.Namespace) -> GenerationBackend:
    import torch

    from mpo.generation import make_backend, vllm_options

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        return make_backend(
            args.backend,
            args.model,
            batch_size=args.batch_size,
            max_dynamic_patch=args.max_dynamic_patch or 12,
            vllm_options=vllm_options(args),
        )
    except OSError as err:
        raise UserError(f"--model {args.model}: cannot load ({err})") from None


# ------------------------------------------------------------------------------------------ run


def run(args: argparse.Namespace, backend: GenerationBackend | None = None) -> dict | None:
    """Do this process's shard; merge when every shard is done. Returns the report (None when
    other shards are still running). ``backend`` replaces the one ``--backend`` would load."""
    pipeline = args.pipeline.replace("-", "_")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    i, n_shards = parse_shard(args.shard)
    paths = {"data_root": args.data_root, "path_map": args.path_map}
    subsets = read_subsets(args.data, args.max_dynamic_patch, **paths)
    questions = load_questions(args.data, limit=args.limit, max_dynamic_patch=args.max_dynamic_patch, **paths)
    if not questions:
        raise UserError(f"--data {args.data}: no questions")
    build = {
        "pipeline": pipeline,
        "settings": settings_of(args, _backend_name(args, backend)),
        "shards": n_shards,
        "questions": len(questions),
        "input_sha256": _sha256_files([s.annotation for s in subsets]),
        "subsets": {
            s.name: {
                "root": str(s.root.resolve()),
                "max_dynamic_patch": s.max_dynamic_patch,
                "min_num_frame": s.min_num_frame,
                "max_num_frame": s.max_num_frame,
            }
            for s in subsets
        },
    }
    store = BuildDir(args.out)
    store.prepare(build)
    with Journal(store.shard_path(i, n_shards)) as journal:
        mine = [q for q in questions if q.index % n_shards == i]
        pending = [q for q in mine if q.key not in journal.done]
        if pending:
            builder = make_builder(args, backend if backend is not None else _load_backend(args))
            bar = tqdm(
                total=len(mine),
                initial=len(mine) - len(pending),
                desc=f"{args.pipeline} {i}/{n_shards}",
                unit="question",
                disable=None,
            )
            for start in range(0, len(pending), args.batch_size):
                for record in builder.process(pending[start : start + args.batch_size]):
                    journal.append(record)
                bar.update(min(args.batch_size, len(pending) - start))
            bar.close()
    if args.no_merge:
        return None
    return merge(args.out, copy_images=args.copy_images, image_root=args.image_root, require_complete=False)


def _global_dedupe(records: list[dict]) -> None:
    """Drop, as ``duplicate``, a kept pair equal to one of an earlier question (same output subset,
    images, question, chosen and rejected): duplicated input rows must not double a pair."""
    seen: set[tuple] = set()
    for record in records:
        for cand in record["pairs"]:
            if cand["drop"] is not None:
                continue
            key = (
                record["subset"],
                cand["subset"],
                repr(record.get("image")),
                repr(record.get("video")),
                record["question"],
                record["responses"][cand["c"]]["text"],
                record["responses"][cand["r"]]["text"],
            )
            if key in seen:
                cand["drop"] = "duplicate"
            seen.add(key)


def merge(
    out: str | Path, *, copy_images: bool = False, image_root: str = "relative", require_complete: bool = True
) -> dict | None:
    """Combine all shard journals of ``out`` into the MMPR layout and the report."""
    out = Path(out)
    store = BuildDir(out)
    build = store.read_build()
    records, missing = store.collect(build["shards"], build["questions"])
    if missing:
        todo = ", ".join(f"shard {i}/{build['shards']}: {k} questions" for i, k in sorted(missing.items()))
        message = f"{out}: not every shard is done ({todo})"
        if require_complete:
            raise UserError(message)
        print(
            f"mpo build-pairs: {message}; the last shard to finish merges (or run `mpo build-pairs merge {out}`)",
            file=sys.stderr,
        )
        return None
    _global_dedupe(records)
    rows: dict[str, list[dict]] = {}
    sources: dict[str, dict] = {}
    for record in records:
        for cand in record["pairs"]:
            name = f"{record['subset']}_{cand['subset']}"
            rows.setdefault(name, [])
            sources[name] = {**build["subsets"][record["subset"]], "input_subset": record["subset"]}
            if cand["drop"] is not None:
                continue
            line = {k: record[k] for k in ("image", "video") if k in record}
            line.update(
                question=record["question"],
                chosen=record["responses"][cand["c"]]["text"],
                rejected=record["responses"][cand["r"]]["text"],
                source=record["key"],
            )
            if "answer" in record:
                line["answer"] = record["answer"]
            rows[name].append(line)
    meta = write_mmpr(out, rows, sources, copy_images=copy_images, image_root=image_root)
    report = build_report(records, build)
    report["files"] = {name: entry["annotation"] for name, entry in meta.items()}
    write_report(out, report)
    return report


def summary(report: dict, out: Path) -> str:
    q, p = report["questions"], report["pairs"]
    per_subset = ", ".join(f"{name} {e['kept']}" for name, e in report["subsets"].items()) or "none"
    statuses = ", ".join(f"{s} {k}" for s, k in q["by_status"].items())
    dropped = ", ".join(f"{r} {k}" for r, k in p["dropped"].items()) or "none"
    return (
        f"mpo build-pairs {report['pipeline']}: {q['in']} questions ({statuses}) -> {p['kept']} pairs "
        f"({per_subset}) of {p['candidates']} candidates; dropped: {dropped}; wrote {out}"
    )
