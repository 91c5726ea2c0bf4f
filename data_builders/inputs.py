"""The questions a pair build reads: an InternVL meta.json (every subset) or a single jsonl file.

Lines look like the synthetic QA split: ``{"id", "image" (path or list, relative to the subset
root; absent for text-only), "question", "answer", "choices"?, ...}``. Every line becomes a
:class:`Question` with a stable key (``subset:id``, or ``subset:L<line>`` without an id) and its
position in the input (``index``), so shards, resumes and reports agree on what a question is.
Unreadable lines are questions too, with an ``error``: they are counted as bad rows, never lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mpo.data.images import check_image
from mpo.data.meta import BadRows, Subset, iter_jsonl, read_meta
from mpo.data.template import normalize_question
from mpo.errors import UserError
from mpo.prompts import parse_choices


@dataclass
class Question:
    key: str
    index: int
    subset: Subset
    line: int
    row: dict | None  # None when the line could not be read (see ``error``)
    error: str | None = None

    @property
    def images(self) -> list[str]:
        """The row's ``image`` field as a list (paths as written, relative to the subset root)."""
        image = (self.row or {}).get("image")
        return [] if image is None else list(image) if isinstance(image, list) else [image]

    def image_paths(self) -> list[str]:
        return [str(self.subset.root / p) for p in self.images]


def read_subsets(data: str | Path, max_dynamic_patch: int | None = None) -> list[Subset]:
    """``data`` as subsets: a meta.json, or a jsonl file (one subset named after it, images
    relative to its folder). ``max_dynamic_patch`` overrides the subsets' own."""
    data = Path(data)
    if data.suffix == ".jsonl":
        if not data.is_file():
            raise UserError(f"--data: no such file {data}")
        subsets = [Subset(name=data.stem, root=data.parent, annotation=data)]
    else:
        subsets = read_meta(data)
    if max_dynamic_patch is not None:
        subsets = [Subset(s.name, s.root, s.annotation, s.repeat_time, max_dynamic_patch, s.data_augment)
                   for s in subsets]  # fmt: skip
    return subsets


def load_questions(
    data: str | Path, *, limit: int | None = None, max_dynamic_patch: int | None = None
) -> list[Question]:
    """Every line of every subset of ``data`` as a :class:`Question` (the first ``limit`` only)."""
    questions: list[Question] = []
    seen: set[str] = set()
    for subset in read_subsets(data, max_dynamic_patch):
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
    if "video" in row:
        return "video: video rows are not supported by the pair builders"
    for name in need:
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
            return f"{name}: missing or empty"
    try:
        parse_choices(row.get("choices"))
    except ValueError as err:
        return f"choices: {err}"
    if not all(isinstance(p, str) and p for p in q.images):
        return "image: expected a path or a list of paths"
    for path in q.image_paths():
        try:
            check_image(Path(path))
        except (ValueError, OSError) as err:
            return f"image: {err}"
    try:
        normalize_question(str(row.get("question", "")), len(q.images))
    except ValueError as err:
        return f"question: {err}"
    return None


def bad_row_record(q: Question, reason: str) -> dict:
    """The journal record of a question that was not used."""
    return {"key": q.key, "index": q.index, "subset": q.subset.name, "file": str(q.subset.annotation),
            "line": q.line, "status": "bad_row", "reason": reason, "pairs": [], "responses": []}  # fmt: skip


__all__ = ["Question", "bad_row_record", "check_question", "load_questions", "read_subsets"]
