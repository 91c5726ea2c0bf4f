"""The questions a pair build reads: an InternVL meta.json (every subset) or a single jsonl file.

Lines look like the synthetic QA split: ``{"id", "image" (path or list, relative to the subset
root; absent for text-only), "question", "answer", "choices"?, ...}``; ``"video"`` (a video file,
or a list of frame files) instead of ``image`` is shown as ``mpo train`` shows it
(:mod:`mpo.data.video`). Every line becomes a :class:`Question` with a stable key (``subset:id``,
or ``subset:L<line>`` without an id) and its position in the input (``index``), so shards, resumes
and reports agree on what a question is.
Unreadable lines are questions too, with an ``error``: they are counted as bad rows, never lost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mpo.data.meta import BadRows, Subset, iter_jsonl, read_meta, row_images
from mpo.data.template import normalize_question
from mpo.errors import DataError, UserError
from mpo.generation import GenerationRequest
from mpo.prompts import parse_choices


@dataclass
class Question:
    key: str
    index: int
    subset: Subset
    line: int
    row: dict | None  # None when the line could not be read (see ``error``)
    error: str | None = None

    def visual_fields(self) -> dict:
        """The row's ``image`` / ``video`` fields as written (what an output pair line repeats)."""
        return {k: self.row[k] for k in ("image", "video") if self.row and k in self.row}

    def request(self, question: str, max_dynamic_patch: int, **kwargs) -> GenerationRequest:
        """A generation request showing this row's images, video frames or sampled video-file frames
        exactly as the training data loader shows them (:func:`mpo.data.meta.row_images`)."""
        visuals = row_images(self.row or {}, self.subset, self.subset.annotation, self.line)
        return GenerationRequest(
            question,
            [str(p) for p in visuals.paths],
            max_dynamic_patch,
            frames=visuals.frames,
            video=visuals.is_video,
            **kwargs,
        )


def read_subsets(
    data: str | Path,
    max_dynamic_patch: int | None = None,
    data_root: str | Path | None = None,
    path_map: list[str] | None = None,
) -> list[Subset]:
    """``data`` as subsets: a meta.json (its paths resolved with ``data_root`` and ``path_map`` as
    :mod:`mpo.data.meta` describes), or a jsonl file (one subset named after it, images relative to
    its folder). ``max_dynamic_patch`` overrides the subsets' own."""
    data = Path(data)
    if data.suffix == ".jsonl":
        if not data.is_file():
            raise UserError(f"--data: no such file {data}")
        subsets = [Subset(name=data.stem, root=data.parent, annotation=data)]
    else:
        subsets = read_meta(data, data_root, path_map)
    if max_dynamic_patch is not None:
        subsets = [dataclasses.replace(s, max_dynamic_patch=max_dynamic_patch) for s in subsets]
    return subsets


def load_questions(
    data: str | Path,
    *,
    limit: int | None = None,
    max_dynamic_patch: int | None = None,
    data_root: str | Path | None = None,
    path_map: list[str] | None = None,
) -> list[Question]:
    """Every line of every subset of ``data`` as a :class:`Question` (the first ``limit`` only)."""
    questions: list[Question] = []
    seen: set[str] = set()
    for subset in read_subsets(data, max_dynamic_patch, data_root, path_map):
        bad = BadRows("skip")
        rows = dict(iter_jsonl(subset.annotation, bad))
        errors = {int(r["line"]): str(r["reason"]) for r in bad.skipped}
        for line in sorted(rows.keys() | errors.keys()):
            row = rows.get(line)
            ident = row.get("id") if row is not None else None
            key = f"{subset.name}:{ident}" if ident is not None else f"{subset.name}:L{line}"
            error = errors.get(line)
            if key in seen:
                key, error = f"{subset.name}:L{line}", f"duplicate id {ident!r}"
            seen.add(key)
            questions.append(Question(key, len(questions), subset, line, row, error))
            if limit is not None and len(questions) >= limit:
                return questions
    return questions


def check_question(q: Question, need: tuple[str, ...] = ("question",)) -> str | None:
    """Why ``q`` cannot be used (``field: reason``), or ``None``. Checks the fields in ``need``
    are non-empty strings (or numbers), the images exist and are readable, and the question holds
    as many ``<image>`` placeholders as images (or none)."""
    if q.error is not None:
        return q.error
    row = q.row or {}
    for name in need:
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
            return f"{name}: missing or empty"
    try:
        parse_choices(row.get("choices"))
    except ValueError as err:
        return f"choices: {err}"
    try:
        visuals = row_images(row, q.subset, q.subset.annotation, q.line)
    except DataError as err:
        return f"{err.field}: {err.reason}"
    try:
        normalize_question(str(row.get("question", "")), len(visuals.sizes), video=visuals.is_video)
    except ValueError as err:
        return f"question: {err}"
    return None


def bad_row_record(q: Question, reason: str) -> dict:
    """The journal record of a question that was not used."""
    return {
        "key": q.key,
        "index": q.index,
        "subset": q.subset.name,
        "file": str(q.subset.annotation),
        "line": q.line,
        "status": "bad_row",
        "reason": reason,
        "pairs": [],
        "responses": [],
    }


__all__ = ["Question", "bad_row_record", "check_question", "load_questions", "read_subsets"]
