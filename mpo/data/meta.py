"""InternVL meta.json datasets: subsets, annotation jsonl files, repeat_time, and the bad-row policy.

Both the MMPR preference data and the SFT data use the same meta.json::

    {"subset": {"root": "images/dir", "annotation": "file.jsonl", "repeat_time": 1.0,
                "max_dynamic_patch": 12, "data_augment": false, "length": 123}}

Relative ``root`` and ``annotation`` paths are resolved against the folder of meta.json.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mpo.data.images import check_image
from mpo.errors import DataError, UserError

ON_BAD_ROW = ("fail", "skip")


@dataclass
class DataConfig:
    """Where a meta.json dataset is and what to do with its bad rows (shared by `mpo train` and `mpo sft`)."""

    meta_path: str = field(metadata={"help": "meta.json of the subsets (root, annotation, repeat_time, "
                                     "max_dynamic_patch, data_augment)."})  # fmt: skip
    eval_meta_path: str | None = field(default=None, metadata={"help": "Optional held-out meta.json."})
    on_bad_row: str = field(
        default="fail",
        metadata={"help": "'fail': stop at the first bad row with file:line: field: reason. 'skip': go on, and "
                  "write every skipped row and why to a report in output_dir.", "choices": list(ON_BAD_ROW)},
    )  # fmt: skip


@dataclass(frozen=True)
class Subset:
    """One entry of meta.json."""

    name: str
    root: Path
    annotation: Path
    repeat_time: float = 1.0
    max_dynamic_patch: int = 12
    data_augment: bool = False


def read_meta(meta_path: str | Path) -> list[Subset]:
    """Parse meta.json; every error names the file and the subset/field."""
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: no such meta.json")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{meta_path}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: expected an object of subsets")
    if not meta:
        raise UserError(f"{meta_path}: no subsets (empty meta.json: did the build that wrote it keep any rows?)")
    base = meta_path.parent
    subsets = []
    for name, entry in meta.items():
        where = f"{meta_path}: subset {name!r}"
        if not isinstance(entry, dict) or "annotation" not in entry:
            raise UserError(f"{where}: missing field 'annotation'")
        annotation = base / entry["annotation"]
        if not annotation.is_file():
            raise UserError(f"{where}: annotation: no such file {annotation}")
        repeat = entry.get("repeat_time", 1.0)
        if not isinstance(repeat, (int, float)) or repeat <= 0:
            raise UserError(f"{where}: repeat_time: must be a positive number, got {repeat!r}")
        tiles = entry.get("max_dynamic_patch", 12)
        if not isinstance(tiles, int) or tiles < 1:
            raise UserError(f"{where}: max_dynamic_patch: must be a positive integer, got {tiles!r}")
        subsets.append(
            Subset(
                name=name,
                root=base / entry.get("root", ""),
                annotation=annotation,
                repeat_time=float(repeat),
                max_dynamic_patch=tiles,
                data_augment=bool(entry.get("data_augment", False)),
            )
        )
    return subsets


@dataclass
class BadRows:
    """The bad-row policy: ``fail`` raises the first :class:`DataError`; ``skip`` counts and records it."""

    policy: str = "fail"
    skipped: list[dict[str, str | int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in ON_BAD_ROW:
            raise UserError(f"on_bad_row must be one of {ON_BAD_ROW}, got {self.policy!r}")

    def handle(self, err: DataError) -> None:
        if self.policy == "fail":
            raise err
        self.skipped.append({"file": err.path, "line": err.line, "field": err.field or "", "reason": err.reason})

    def counts(self) -> dict[str, int]:
        return dict(Counter(row["reason"] for row in self.skipped))

    def write(self, path: str | Path) -> Path:
        """Write ``{"skipped": N, "by_reason": {...}, "rows": [...]}`` as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        report = {"skipped": len(self.skipped), "by_reason": self.counts(), "rows": self.skipped}
        path.write_text(json.dumps(report, indent=1, ensure_ascii=False))
        return path


def iter_jsonl(path: Path, bad_rows: BadRows) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; malformed lines go to ``bad_rows``."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                bad_rows.handle(DataError(path, line_no, f"malformed JSON ({err.msg})"))
                continue
            if not isinstance(row, dict):
                bad_rows.handle(DataError(path, line_no, "expected a JSON object"))
                continue
            yield line_no, row


def apply_repeat(items: list, repeat_time: float, rng: random.Random) -> list:
    """``repeat_time`` < 1 keeps a seeded random fraction (order kept); > 1 repeats whole copies
    and then a seeded random fraction for the remainder."""
    whole = math.floor(repeat_time)
    out = items * whole
    frac = repeat_time - whole
    if frac > 0:
        keep = sorted(rng.sample(range(len(items)), round(len(items) * frac)))
        out += [items[i] for i in keep]
    return out


def _image_paths(row: dict, subset: Subset) -> tuple[list[Path], bool]:
    """The row's image files and whether they are video frames."""
    if "video" in row:
        frames = row["video"]
        if not isinstance(frames, list) or not frames:
            raise ValueError("video: expected a non-empty list of frame paths")
        return [subset.root / f for f in frames], True
    image = row.get("image")
    if image is None:
        return [], False
    images = image if isinstance(image, list) else [image]
    if not all(isinstance(p, str) and p for p in images):
        raise ValueError("image: expected a path or a list of paths")
    return [subset.root / p for p in images], False


def row_images(row: dict, subset: Subset, path: Path, line: int) -> tuple[list[Path], bool, list[list[int]]]:
    """The row's image files, whether they are video frames, and each one's (width, height) read from
    its header; a missing or unreadable image is a :class:`DataError` naming the file and line."""
    try:
        images, is_video = _image_paths(row, subset)
    except ValueError as err:
        name, _, msg = str(err).partition(": ")
        raise DataError(path, line, msg, field=name) from None
    sizes: list[list[int]] = []
    for img in images:
        try:
            sizes.append(list(check_image(img)))
        except ValueError as err:
            raise DataError(path, line, str(err), field="video" if is_video else "image") from None
    return images, is_video, sizes
