"""Benchmark files -> :class:`EvalItem` s, with every image as a file the generation backend can open.

Three inputs (one benchmark per file, or per subset of a meta.json):

* **VLMEvalKit TSV**: columns ``index``, ``question``, ``answer``, and ``image`` (base64; a JSON list
  of base64 strings for several images; a short value naming another row's ``index`` reuses that
  row's image, as VLMEvalKit does) and/or ``image_path`` (relative to the TSV; a JSON list for
  several images). Optional: option columns ``A``, ``B``, ... (a row with any non-empty option is
  multiple choice), ``category``, ``hint``, ``kind`` (an answer kind of :mod:`mpo.answers`). An empty
  image cell is a text-only question. Base64 images are decoded once into ``image_dir``, named by
  content hash, so a rerun reuses them.
* **MMPR-style jsonl**: ``question``, ``answer``, optional ``image`` (file or list, relative to the
  jsonl), ``choices`` (``{"A": "cat", ...}`` or a list), ``category`` (else ``skill``), ``index``
  (else ``id``, else the line number), ``kind``.
* **meta.json** (MMPR/InternVL layout): each subset's annotation jsonl is one benchmark named after
  the subset, images under its ``root``, its ``max_dynamic_patch`` used for its items.

Every problem raises :class:`~mpo.errors.DataError` naming the file, the line and the field.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mpo.answers import KINDS
from mpo.data.images import check_image
from mpo.data.meta import BadRows, Subset, iter_jsonl, read_meta, row_images
from mpo.errors import DataError, UserError

DEFAULT_CATEGORY = "uncategorized"
REQUIRED_TSV_COLUMNS = ("index", "question", "answer")
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
    frames: list[int] = field(default_factory=list)  # a video file (images[0]): the frames shown
    video: bool = False  # images are video frames (Frame{i}: <image>, one tile each)

    @property
    def num_images(self) -> int:
        """Images shown: the frames of a video file, else the image files."""
        return len(self.frames) if self.frames else len(self.images)


# ---------------------------------------------------------------------------------------- helpers


def _empty(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in _EMPTY)


def _list_cell(value: str) -> list[str]:
    """A cell holding one value or a JSON list of values."""
    value = value.strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            return [value]
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return items
    return [value]


def _check_kind(kind, path, line) -> str | None:
    if _empty(kind):
        return None
    if kind not in KINDS:
        raise DataError(
            path, line, f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}", "kind"
        )
    return kind


def _check_answer(answer: str, choices: dict[str, str] | None, path, line) -> str:
    """The ground truth; for multiple choice, the option letter (an option's exact text also names it)."""
    answer = answer.strip()
    if not answer:
        raise DataError(path, line, "empty answer (a split without ground truth cannot be scored)", "answer")
    if choices:
        letter = answer.strip("().").upper()
        if len(letter) == 1 and letter in choices:
            return letter
        named = [key for key, text in choices.items() if text.strip() == answer]
        if len(named) == 1:
            return named[0]
        raise DataError(path, line, f"{answer!r} is not one of the options {', '.join(choices)}", "answer")
    return answer


def _local_image(value: str, base: Path, path, line, field: str) -> str:
    image = Path(value.strip())
    image = image if image.is_absolute() else base / image
    try:
        check_image(image)
    except ValueError as err:
        raise DataError(path, line, str(err), field) from None
    return str(image.resolve())


def decode_image(data: str, image_dir: Path, path, line, field: str = "image") -> str:
    """Decode one base64 image into ``image_dir`` (named by content hash); returns its path."""
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise DataError(path, line, f"corrupt base64 image ({err})", field) from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            fmt = (img.format or "png").lower()
            img.verify()
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


def _unique_indices(items: list[EvalItem]) -> None:
    first: dict[str, int] = {}
    for item in items:
        if item.index in first:
            raise DataError(item.path, item.line, f"duplicate index {item.index!r} (first at line {first[item.index]})",
                            "index")  # fmt: skip
        first[item.index] = item.line


# -------------------------------------------------------------------------------------------- TSV


def load_tsv(path: Path, name: str, image_dir: Path) -> list[EvalItem]:
    """A VLMEvalKit TSV (see the module docstring); base64 images are written under ``image_dir``."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    items: list[EvalItem] = []
    image_cells: dict[str, list[str]] = {}  # index -> decoded image paths (for references)
    references: list[tuple[EvalItem, str]] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header:
            raise DataError(path, 1, "empty file: expected a header row of tab-separated column names")
        header = [h.strip().lstrip("\ufeff") for h in header]
        for column in REQUIRED_TSV_COLUMNS:
            if column not in header:
                raise DataError(path, 1, f"missing column (the header has: {', '.join(header)})", column)
        if "image" not in header and "image_path" not in header:
            raise DataError(path, 1, "missing column: need 'image' (base64) or 'image_path'", "image")
        letters = [h for h in header if re.fullmatch(r"[A-Z]", h)]
        line = 1
        for row in reader:
            start, line = line + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(path, start, f"{len(row)} tab-separated fields, the header has {len(header)}")
            cells = dict(zip(header, row, strict=True))
            index = cells["index"].strip()
            if not index:
                raise DataError(path, start, "empty index", "index")
            question = cells["question"]
            if _empty(question):
                raise DataError(path, start, "empty question", "question")
            choices = {
                letter: cells[letter].strip() for letter in letters if not _empty(cells[letter])
            } or None
            item = EvalItem(
                benchmark=name, index=index, question=question.strip(), answer=_check_answer(cells["answer"], choices, path, start),
                images=[], choices=choices, category=cells.get("category", "").strip() or DEFAULT_CATEGORY,
                path=str(path), line=start, kind=_check_kind(cells.get("kind"), path, start),
                hint=None if _empty(cells.get("hint")) else cells["hint"].strip(),
            )  # fmt: skip
            encoded = cells.get("image", "")
            if not _empty(encoded):
                values = _list_cell(encoded)
                if len(values) == 1 and len(values[0]) <= _IMAGE_REFERENCE_MAX_LEN:
                    references.append((item, values[0].strip()))
                else:
                    item.images = [decode_image(v, image_dir, path, start) for v in values]
                    image_cells[index] = item.images
            elif not _empty(cells.get("image_path")):
                base = Path(path).parent
                item.images = [
                    _local_image(v, base, path, start, "image_path") for v in _list_cell(cells["image_path"])
                ]
            items.append(item)
    for item, ref in references:
        if ref not in image_cells:
            raise DataError(path, item.line, f"not base64 image data, nor the index of a row with an image: {ref!r}",
                            "image")  # fmt: skip
        item.images = list(image_cells[ref])
    _unique_indices(items)
    return items


# ------------------------------------------------------------------------------------------ jsonl


def _choices_field(value, path, line) -> dict[str, str] | None:
    if value in (None, {}, []):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and len(value) <= 26:
        return {chr(ord("A") + i): v for i, v in enumerate(value)}
    if isinstance(value, dict) and all(isinstance(k, str) and re.fullmatch(r"[A-Z]", k.strip()) and isinstance(v, str)
                                       for k, v in value.items()):  # fmt: skip
        return {k.strip(): v for k, v in value.items()}
    raise DataError(path, line, 'expected {"A": "option text", ...} or a list of option texts', "choices")


def load_jsonl(
    path: Path, name: str, root: Path | None = None, max_dynamic_patch: int | None = None,
    subset: Subset | None = None,
) -> list[EvalItem]:
    """An MMPR-style jsonl with ground truth (see the module docstring); images under ``root``.
    A ``video`` (file or frame files) is shown as training shows it (``subset``'s frame counts)."""
    root = Path(path).parent if root is None else Path(root)
    subset = subset or Subset(name=name, root=root, annotation=Path(path))
    items = []
    for position, (line, row) in enumerate(iter_jsonl(Path(path), BadRows("fail"))):
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
                _local_image(p, root, path, line, "image")
                for p in ([image] if isinstance(image, str) else image)
            ]
        else:
            raise DataError(path, line, "expected a file name or a list of file names", "image")
        index = row.get("index", row.get("id", position))
        category = row.get("category", row.get("skill"))
        items.append(
            EvalItem(
                benchmark=name, index=str(index), question=question.strip(),
                answer=_check_answer(answer, choices, path, line), images=images, choices=choices,
                category=str(category).strip() if not _empty(category) else DEFAULT_CATEGORY, path=str(path),
                line=line, kind=_check_kind(row.get("kind"), path, line), max_dynamic_patch=max_dynamic_patch,
                frames=video.frames if video else [], video=video is not None,
            )
        )  # fmt: skip
    _unique_indices(items)
    return items


# ------------------------------------------------------------------------------------------ entry


def parse_data_arg(arg: str) -> tuple[str | None, Path]:
    """``FILE`` or ``NAME=FILE`` (NAME: the benchmark's name in reports; default: the file's stem)."""
    name, sep, rest = arg.partition("=")
    if sep and re.fullmatch(r"[\w.\-]+", name) and not Path(arg).exists():
        return name, Path(rest)
    return None, Path(arg)


def load_benchmarks(data: list[str], image_dir: Path) -> dict[str, list[EvalItem]]:
    """Every ``--data`` argument -> ``{benchmark name: items}``, in the order given."""
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
            add(bench, load_tsv(path, bench, image_dir / _safe(bench)), path)
        elif suffix == ".jsonl":
            bench = name or path.stem
            add(bench, load_jsonl(path, bench), path)
        elif suffix == ".json":
            for subset in read_meta(path):
                bench = f"{name}/{subset.name}" if name else subset.name
                items = load_jsonl(subset.annotation, bench, subset.root, subset.max_dynamic_patch, subset)
                add(bench, items, path)
        else:
            raise UserError(f"{path}: unknown benchmark format {suffix or '(no suffix)'}; expected .tsv "
                            "(VLMEvalKit), .jsonl (MMPR-style with answers) or a meta.json")  # fmt: skip
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name)
