"""Benchmark files -> :class:`EvalItem` s, with every image as a file the generation backend can open.

Three inputs (one benchmark per file, or per subset of a meta.json):

* **VLMEvalKit TSV**: columns ``index``, ``question``, ``answer``, and ``image`` (base64; a list
  literal of base64 strings for several images, ``['...', '...']`` as VLMEvalKit writes it; a value
  of at most 64 characters names another row's ``index`` and reuses that row's image, as VLMEvalKit
  does) and/or ``image_path`` (relative to the TSV; a list literal for several images). Optional:
  option columns ``A``, ``B``, ... (a row with any non-empty option is multiple choice),
  ``category``, ``hint``, ``kind`` (an answer kind of :mod:`mpo.grading.answers`); every other column is
  kept in :attr:`EvalItem.fields` for the benchmark's rule (:mod:`eval.rules`: MathVista's
  ``question_type`` / ``answer_option`` / ``choices``, HallusionBench's ``l2-category``, ...). A row
  without any image is dropped for the VLMEvalKit benchmarks (as VLMEvalKit drops it, and counted)
  and is a text-only question otherwise. Base64 images are decoded once into ``image_dir``, named
  by content hash, so a rerun reuses them. List cells are parsed by :func:`ast.literal_eval`.
* **MMPR-style jsonl**: ``question``, ``answer``, optional ``image`` (file or list, relative to the
  jsonl), ``choices`` (``{"A": "cat", ...}`` or a list), ``category`` (else ``skill``), ``index``
  (else ``id``, else the line number), ``kind``. Scored by the generic rule, whatever its name.
* **meta.json** (MMPR/InternVL layout): each subset's annotation jsonl is one benchmark named after
  the subset, images under its ``root``, its ``max_dynamic_patch`` used for its items.

Every problem raises :class:`~mpo.errors.DataError` naming the file, the line and the field; with a
``skip`` :class:`~mpo.data.meta.BadRows` policy, a bad row is recorded there and left out instead
(problems with the whole file, such as a missing column, still raise).
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import os
import re
import sys
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from eval.rules import GENERIC, Rule, check_answer, check_image_refs, literal_list, rule_for
from mpo.data.images import check_image, load_image
from mpo.data.meta import BadRows, Subset, iter_jsonl, read_meta, row_images
from mpo.errors import DataError, UserError
from mpo.grading.answers import KINDS
from mpo.prompts import parse_choices

DEFAULT_CATEGORY = "uncategorized"
REQUIRED_TSV_COLUMNS = ("index", "question", "answer")
# Columns read into EvalItem attributes (everything else goes to EvalItem.fields).
_OWN_COLUMNS = ("index", "question", "answer", "image", "image_path", "hint", "kind")
# VLMEvalKit stores a duplicated image once; other rows hold that row's index (at most 64 chars).
_IMAGE_REFERENCE_MAX_LEN = 64
_EMPTY = ("", "nan", "NaN", "None")


@dataclass
class EvalItem:
    """One question of one benchmark. ``question`` is as written in the file (no prompt added yet)."""

    benchmark: str
    index: str
    question: str
    answer: str
    images: list[str]
    choices: dict[str, str] | None
    category: str
    path: str  # the benchmark file, for error messages
    line: int
    kind: str | None = None  # answer kind override; default: "choice" with options, else inferred
    hint: str | None = None
    max_dynamic_patch: int | None = None  # per-benchmark tile budget (meta.json); None: the run's
    fields: dict[str, str] = dataclass_field(default_factory=dict)  # the row's other columns (see eval.rules)
    rule: Rule = GENERIC
    frames: list[int] = dataclass_field(default_factory=list)  # a video file (images[0]): the frames shown
    video: bool = False  # images are video frames (Frame{i}: <image>, one tile each)

    @property
    def num_images(self) -> int:
        """Images shown: the frames of a video file, else the image files."""
        return len(self.frames) if self.frames else len(self.images)


# ---------------------------------------------------------------------------------------- helpers


def _empty(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in _EMPTY)


def _check_kind(kind, path, line) -> str | None:
    if _empty(kind):
        return None
    if kind not in KINDS:
        raise DataError(
            path, line, f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}", "kind"
        )
    return kind


def _local_image(value: str, base: Path, path, line, field: str) -> str:
    """An image file (relative to ``base``), fully decoded once so that a truncated file is a bad row."""
    image = Path(value.strip())
    image = image if image.is_absolute() else base / image
    try:
        check_image(image)
        load_image(image)
    except ValueError as err:
        raise DataError(path, line, str(err), field) from None
    return str(image.resolve())


def decode_image(data: str, image_dir: Path, path, line, field: str = "image") -> str:
    """Decode one base64 image into ``image_dir`` (named by content hash); returns its path. The image
    is fully decoded once here, so a truncated file is a bad row now, not a crash mid-generation."""
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise DataError(path, line, f"corrupt base64 image ({err})", field) from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            fmt = (img.format or "png").lower()
            img.verify()
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(path, line, f"base64 data is not a readable image ({err})", field) from None
    ext = {"jpeg": "jpg"}.get(fmt, fmt)
    target = image_dir / f"{hashlib.sha1(raw).hexdigest()[:20]}.{ext}"
    if not target.is_file():
        image_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(raw)
        os.replace(tmp, target)
    return str(target.resolve())


def _unique_indices(items: list[EvalItem], bad: BadRows) -> list[EvalItem]:
    """``items`` without repeated indices; each repeat is a bad row (the first one is kept)."""
    first: dict[str, int] = {}
    kept = []
    for item in items:
        if item.index in first:
            bad.handle(
                DataError(
                    item.path,
                    item.line,
                    f"duplicate index {item.index!r} (first at line {first[item.index]})",
                    "index",
                )
            )
            continue
        first[item.index] = item.line
        kept.append(item)
    return kept


# -------------------------------------------------------------------------------------------- TSV


def _tsv_header(reader, path) -> list[str]:
    header = next(reader, None)
    if not header:
        raise DataError(path, 1, "empty file: expected a header row of tab-separated column names")
    header = [h.strip().lstrip("\ufeff") for h in header]
    for column in REQUIRED_TSV_COLUMNS:
        if column not in header:
            raise DataError(path, 1, f"missing column (the header has: {', '.join(header)})", column)
    if "image" not in header and "image_path" not in header:
        raise DataError(path, 1, "missing column: need 'image' (base64) or 'image_path'", "image")
    return header


def _tsv_item(cells: dict[str, str], letters: list[str], name: str, rule: Rule, path, line: int) -> EvalItem:
    """One row (images not attached yet)."""
    index = cells["index"].strip()
    if not index:
        raise DataError(path, line, "empty index", "index")
    question = cells["question"]
    if _empty(question):
        raise DataError(path, line, "empty question", "question")
    choices = {letter: cells[letter].strip() for letter in letters if not _empty(cells[letter])} or None
    answer, choices = rule.read_answer(cells, choices, path, line)
    fields = {
        k: v.strip() for k, v in cells.items() if k not in _OWN_COLUMNS and k not in letters and not _empty(v)
    }
    return EvalItem(
        benchmark=name,
        index=index,
        question=rule.clean_question(question.strip(), choices),
        answer=answer,
        images=[],
        choices=choices,
        category=fields.get("category") or DEFAULT_CATEGORY,
        path=str(path),
        line=line,
        kind=_check_kind(cells.get("kind"), path, line),
        hint=None if _empty(cells.get("hint")) else cells["hint"].strip(),
        fields=fields,
        rule=rule,
    )


def _tsv_rows(path: Path, bad: BadRows):
    """(header, [(line, cells)]) of a TSV; rows with the wrong number of fields are bad rows."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = _tsv_header(reader, path)
        line = 1
        for row in reader:
            start, line = line + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                bad.handle(
                    DataError(path, start, f"{len(row)} tab-separated fields, the header has {len(header)}")
                )
                continue
            rows.append((start, dict(zip(header, row, strict=True))))
    return header, rows


def load_tsv(
    path: Path, name: str, image_dir: Path, bad: BadRows | None = None, dropped: dict[str, int] | None = None
) -> list[EvalItem]:
    """A VLMEvalKit TSV (see the module docstring); base64 images are written under ``image_dir``.

    ``bad`` (default: raise) takes the bad rows; ``dropped[name]`` counts the rows without an image
    that the benchmark's rule drops.
    """
    bad = bad if bad is not None else BadRows("fail")
    rule = rule_for(name)
    header, rows = _tsv_rows(Path(path), bad)
    letters = [h for h in header if re.fullmatch(r"[A-Z]", h)]
    items: list[EvalItem] = []
    image_cells: dict[str, str] = {}  # index -> image cell of a good row, for references (<= 64 chars)
    references: list[tuple[EvalItem, str]] = []  # rows whose image cell names another row's index
    n_dropped = 0
    for line, cells in rows:
        encoded, local = cells.get("image", ""), cells.get("image_path", "")
        if rule.drop_imageless and _empty(encoded) and _empty(local):
            n_dropped += 1
            continue
        try:
            item = _tsv_item(cells, letters, name, rule, path, line)
            if not _empty(encoded) and len(encoded.strip()) <= _IMAGE_REFERENCE_MAX_LEN:
                references.append((item, encoded.strip()))  # resolved once every row's image is known
            else:
                _attach_images(item, encoded, local, image_dir)
                image_cells[item.index] = encoded
        except DataError as err:
            bad.handle(err)
            continue
        items.append(item)
    failed: set[int] = set()
    for item, ref in references:
        try:
            if _empty(image_cells.get(ref)):
                raise DataError(
                    path,
                    item.line,
                    f"not base64 image data, nor the index of a row with an image: {ref!r}",
                    "image",
                )
            _attach_images(item, image_cells[ref], "", image_dir)
        except DataError as err:
            bad.handle(err)
            failed.add(id(item))
    items = [item for item in items if id(item) not in failed]
    if dropped is not None and n_dropped:
        dropped[name] = dropped.get(name, 0) + n_dropped
    return _unique_indices(items, bad)


def _attach_images(item: EvalItem, encoded: str, local: str, image_dir: Path) -> None:
    """Set the row's image files (base64 decoded, else ``image_path`` files) and check the item."""
    path, line = item.path, item.line
    if not _empty(encoded):
        item.images = [
            decode_image(v, image_dir, path, line) for v in literal_list(encoded, path, line, "image")
        ]
    elif not _empty(local):
        base = Path(path).parent
        item.images = [
            _local_image(v, base, path, line, "image_path")
            for v in literal_list(local, path, line, "image_path")
        ]
    if item.rule.check_item is not None:
        item.rule.check_item(item)
    check_image_refs(item)


# ------------------------------------------------------------------------------------------ jsonl


def _choices_field(value, path, line) -> dict[str, str] | None:
    try:
        return parse_choices(value)
    except ValueError as err:
        raise DataError(path, line, str(err), "choices") from None


def _jsonl_item(
    row: dict, position: int, name: str, root: Path, max_dynamic_patch, path, line, subset: Subset | None
) -> EvalItem:
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(path, line, "missing or empty (expected a string)", "question")
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise DataError(path, line, "missing (expected a string or a number)", "answer")
    choices = _choices_field(row.get("choices"), path, line)
    image = row.get("image")
    video = row_images(row, subset, Path(path), line) if "video" in row else None
    if video is not None:
        images = [str(p) for p in video.paths]
    elif image in (None, "", []):
        images = []
    elif isinstance(image, str) or (isinstance(image, list) and all(isinstance(p, str) for p in image)):
        images = [
            _local_image(p, root, path, line, "image") for p in ([image] if isinstance(image, str) else image)
        ]
    else:
        raise DataError(path, line, "expected a file name or a list of file names", "image")
    index = row.get("index", row.get("id", position))
    category = row.get("category", row.get("skill"))
    reasoning = row.get("reasoning")
    return EvalItem(
        benchmark=name,
        index=str(index),
        question=question.strip(),
        answer=check_answer(answer, choices, path, line),
        images=images,
        choices=choices,
        category=str(category).strip() if not _empty(category) else DEFAULT_CATEGORY,
        path=str(path),
        line=line,
        kind=_check_kind(row.get("kind"), path, line),
        max_dynamic_patch=max_dynamic_patch,
        frames=video.frames if video else [],
        video=video is not None,
        fields={"reasoning": reasoning.strip()} if isinstance(reasoning, str) and reasoning.strip() else {},
    )


def load_jsonl(
    path: Path,
    name: str,
    root: Path | None = None,
    max_dynamic_patch: int | None = None,
    bad: BadRows | None = None,
    subset: Subset | None = None,
) -> list[EvalItem]:
    """An MMPR-style jsonl with ground truth (see the module docstring); images under ``root``.
    ``bad`` (default: raise) takes the bad rows. A ``video`` (file or frame files) is shown as
    training shows it (``subset``'s frame counts)."""
    bad = bad if bad is not None else BadRows("fail")
    root = Path(path).parent if root is None else Path(root)
    subset = subset or Subset(name=name, root=root, annotation=Path(path))
    items = []
    for position, (line, row) in enumerate(iter_jsonl(Path(path), bad)):
        try:
            items.append(_jsonl_item(row, position, name, root, max_dynamic_patch, path, line, subset))
        except DataError as err:
            bad.handle(err)
    return _unique_indices(items, bad)


# ------------------------------------------------------------------------------------------ entry


def parse_data_arg(arg: str) -> tuple[str | None, Path]:
    """``FILE`` or ``NAME=FILE`` (NAME: the benchmark's name in reports; default: the file's stem)."""
    name, sep, rest = arg.partition("=")
    if sep and re.fullmatch(r"[\w.\-]+", name) and not Path(arg).exists():
        return name, Path(rest)
    return None, Path(arg)


def load_benchmarks(
    data: list[str], image_dir: Path, bad: BadRows | None = None, dropped: dict[str, int] | None = None
) -> dict[str, list[EvalItem]]:
    """Every ``--data`` argument -> ``{benchmark name: items}``, in the order given. ``bad`` (default:
    raise) takes the bad rows; ``dropped`` counts, per benchmark, the rows without an image dropped."""
    out: dict[str, list[EvalItem]] = {}

    def add(name: str, items: list[EvalItem], path: Path) -> None:
        if name in out:
            raise UserError(
                f"two benchmarks are named {name!r} (the second from {path}); name them: --data NAME={path}"
            )
        if not items:
            raise UserError(f"{path}: benchmark {name!r} has no items")
        out[name] = items

    for arg in data:
        name, path = parse_data_arg(arg)
        if not path.is_file():
            raise UserError(f"{path}: no such benchmark file")
        suffix = path.suffix.lower()
        if suffix == ".tsv":
            bench = name or path.stem
            add(bench, load_tsv(path, bench, image_dir / _safe(bench), bad, dropped), path)
        elif suffix == ".jsonl":
            bench = name or path.stem
            add(bench, load_jsonl(path, bench, bad=bad), path)
        elif suffix == ".json":
            for subset in read_meta(path):
                bench = f"{name}/{subset.name}" if name else subset.name
                items = load_jsonl(
                    subset.annotation, bench, subset.root, subset.max_dynamic_patch, bad, subset
                )
                add(bench, items, path)
        else:
            raise UserError(
                f"{path}: unknown benchmark format {suffix or '(no suffix)'}; expected .tsv "
                "(VLMEvalKit), .jsonl (MMPR-style with answers) or a meta.json"
            )
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name)
