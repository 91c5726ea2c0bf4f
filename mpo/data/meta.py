"""InternVL meta.json datasets: subsets, annotation jsonl files, repeat_time, and the bad-row policy.

Both the MMPR preference data and the SFT data use the same meta.json::

    {"subset": {"root": "images/dir", "annotation": "file.jsonl", "repeat_time": 1.0,
                "max_dynamic_patch": 12, "data_augment": false, "length": 123}}

Video subsets may also set ``min_num_frame`` / ``max_num_frame`` (InternVL's defaults 8 and 32;
see :mod:`mpo.data.video`).

Paths of ``root`` and ``annotation`` (:func:`resolve_meta_path`):

1. ``path_map`` rewrites a leading prefix first (``/mnt/petrelfs/x=/data/x``): for meta files written
   on another machine, whose absolute paths do not exist here.
2. An absolute path is used as it is; one that does not exist is an error naming the subset and the
   field and suggesting a ``path_map``.
3. A relative path is resolved against ``data_root`` when one is given, and only there (explicit).
4. Otherwise against the meta.json's folder if it exists there (meta files written by this project,
   e.g. ``mpo build-pairs``, are relative to their own folder and move with it), else against the
   current working directory: InternVL's scripts open ``annotation`` and join ``root`` as written,
   so the meta files of its ``shell/data/`` are relative to the folder training is launched from.
   The meta folder wins when both exist.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mpo.atomic import atomic_write
from mpo.data.images import check_image
from mpo.data.video import MAX_NUM_FRAME, MIN_NUM_FRAME, frame_indices, num_frames_for, probe_video
from mpo.errors import DataError, UserError
from mpo.models.families.base import Tokens

ON_BAD_ROW = ("fail", "skip")


@dataclass
class DataConfig:
    """Where a meta.json dataset is and what to do with its bad rows (shared by `mpo train` and `mpo sft`)."""

    meta_path: str = field(
        metadata={
            "help": "meta.json of the subsets (root, annotation, repeat_time, "
            "max_dynamic_patch, data_augment)."
        }
    )
    eval_meta_path: str | None = field(default=None, metadata={"help": "Optional held-out meta.json."})
    on_bad_row: str = field(
        default="fail",
        metadata={
            "help": "'fail': stop at the first bad row with file:line: field: reason. 'skip': go on (rows "
            "whose files fail to decode later, in the reference pass or a batch, too), write every skipped row "
            "and why to a report in output_dir and print one line per kind of problem.",
            "choices": list(ON_BAD_ROW),
        },
    )
    data_root: str | None = field(
        default=None,
        metadata={
            "help": "Folder that relative 'root' and 'annotation' paths of the meta.json are resolved "
            "against. Default: the meta.json's folder where the path exists there, else the working directory "
            "(InternVL's convention for its shell/data meta files)."
        },
    )
    path_map: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Prefix rewrites OLD=NEW for meta.json paths written on another machine, e.g. "
            "/mnt/petrelfs/x=/data/x (the first matching prefix applies)."
        },
    )

    def meta_paths(self) -> dict:
        """The path keywords of :func:`read_meta` (and of the loaders that call it)."""
        return {"data_root": self.data_root, "path_map": self.path_map}


@dataclass(frozen=True)
class Subset:
    """One entry of meta.json."""

    name: str
    root: Path
    annotation: Path
    repeat_time: float = 1.0
    max_dynamic_patch: int = 12
    data_augment: bool = False
    min_num_frame: int = MIN_NUM_FRAME
    max_num_frame: int = MAX_NUM_FRAME


def parse_path_map(pairs: list[str] | tuple[str, ...] | None) -> list[tuple[str, str]]:
    """``["OLD=NEW", ...]`` as (old prefix, new prefix) pairs; a malformed entry is a UserError."""
    out = []
    for pair in pairs or []:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise UserError(f"path_map: expected OLD=NEW (e.g. /mnt/petrelfs/x=/data/x), got {pair!r}")
        out.append((old, new))
    return out


def map_path(path: str, path_map: list[tuple[str, str]]) -> str:
    """``path`` with the first matching prefix of ``path_map`` rewritten (whole path components only)."""
    for old, new in path_map:
        old_stripped = old.rstrip("/")
        if path == old_stripped or path.startswith(old_stripped + "/"):
            return new.rstrip("/") + path[len(old_stripped) :]
    return path


def resolve_meta_path(
    value: str,
    meta_dir: Path,
    data_root: str | Path | None,
    path_map: list[tuple[str, str]],
    where: str,
    name: str,
) -> Path:
    """A ``root`` / ``annotation`` path of meta.json by the rule of the module docstring; a path that
    exists nowhere is a UserError naming ``where`` (file and subset), the field and what was tried."""
    mapped = map_path(value, path_map)
    if Path(mapped).is_absolute():
        if Path(mapped).exists():
            return Path(mapped)
        if mapped != value:
            raise UserError(f"{where}: {name}: no such path {mapped} (mapped from {value})")
        missing = Path(mapped)
        while not missing.parent.exists():  # the first folder that is not on this machine
            missing = missing.parent
        raise UserError(
            f"{where}: {name}: no such path {mapped} (written on another machine? remap it: "
            f"--path-map {missing}=/where/it/is/here)"
        )
    if data_root is not None:
        candidates = [Path(data_root) / mapped]
    else:
        candidates = [meta_dir / mapped, Path.cwd() / mapped]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = " or ".join(str(c) for c in candidates)
    via = "--data-root" if data_root is not None else "the meta.json's folder, else to the working directory"
    raise UserError(
        f"{where}: {name}: {mapped!r} is not at {tried} (relative to {via}; "
        "set --data-root to the folder it is relative to)"
    )


def _frame_range(entry: dict, where: str) -> tuple[int, int]:
    lo, hi = entry.get("min_num_frame", MIN_NUM_FRAME), entry.get("max_num_frame", MAX_NUM_FRAME)
    for key, value in (("min_num_frame", lo), ("max_num_frame", hi)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{where}: {key}: must be a positive integer, got {value!r}")
    if lo > hi:
        raise UserError(f"{where}: min_num_frame {lo} > max_num_frame {hi}")
    return lo, hi


def read_meta(
    meta_path: str | Path,
    data_root: str | Path | None = None,
    path_map: list[str] | tuple[str, ...] | None = None,
) -> list[Subset]:
    """Parse meta.json, resolving its paths (module docstring); errors name the file and the subset/field."""
    meta_path = Path(meta_path)
    mapping = parse_path_map(path_map)
    if data_root is not None and not Path(data_root).is_dir():
        raise UserError(f"data_root: no such folder {data_root}")
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: no such meta.json")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{meta_path}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: expected an object of subsets")
    if not meta:
        raise UserError(
            f"{meta_path}: no subsets (empty meta.json: did the build that wrote it keep any rows?)"
        )
    base = meta_path.parent
    subsets = []
    for name, entry in meta.items():
        where = f"{meta_path}: subset {name!r}"
        if not isinstance(entry, dict) or "annotation" not in entry:
            raise UserError(f"{where}: missing field 'annotation'")
        for key in ("annotation", "root"):
            if key in entry and not isinstance(entry[key], str):
                raise UserError(f"{where}: {key}: expected a path string, got {entry[key]!r}")
        annotation = resolve_meta_path(entry["annotation"], base, data_root, mapping, where, "annotation")
        if not annotation.is_file():
            raise UserError(f"{where}: annotation: {annotation} is not a file")
        root = resolve_meta_path(entry.get("root") or ".", base, data_root, mapping, where, "root")
        repeat = entry.get("repeat_time", 1.0)
        if not isinstance(repeat, (int, float)) or repeat <= 0:
            raise UserError(f"{where}: repeat_time: must be a positive number, got {repeat!r}")
        tiles = entry.get("max_dynamic_patch", 12)
        if not isinstance(tiles, int) or tiles < 1:
            raise UserError(f"{where}: max_dynamic_patch: must be a positive integer, got {tiles!r}")
        lo, hi = _frame_range(entry, where)
        subsets.append(
            Subset(
                name=name,
                root=root,
                annotation=annotation,
                repeat_time=float(repeat),
                max_dynamic_patch=tiles,
                data_augment=bool(entry.get("data_augment", False)),
                min_num_frame=lo,
                max_num_frame=hi,
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
        self.skipped.append(self.row(err))

    def row(self, err: DataError) -> dict[str, str | int]:
        """The report row of ``err`` (not recorded yet); raises ``err`` under ``fail``."""
        if self.policy == "fail":
            raise err
        return {"file": err.path, "line": err.line, "field": err.field or "", "reason": err.reason}

    def add(self, rows: list[dict[str, str | int]]) -> None:
        """Record ``rows`` (from :meth:`row`, possibly in another process), each ``file:line`` once."""
        seen = {(r["file"], r["line"]) for r in self.skipped}
        for r in rows:
            if (r["file"], r["line"]) not in seen:
                seen.add((r["file"], r["line"]))
                self.skipped.append(r)

    def counts(self) -> dict[str, int]:
        return dict(Counter(row["reason"] for row in self.skipped))

    def write(self, path: str | Path) -> Path:
        """Write ``{"skipped": N, "by_reason": {...}, "rows": [...]}`` as JSON, atomically."""
        report = {"skipped": len(self.skipped), "by_reason": self.counts(), "rows": self.skipped}
        return atomic_write(path, json.dumps(report, indent=1, ensure_ascii=False))


def reason_kind(field: str | None, reason: str) -> str:
    """What kind of problem a skipped row has, without its particulars: the field, then the words of
    the reason up to the first one holding a path, a number, a quote or a parenthesis
    (``"image: missing image"`` for ``"missing image /data/x.png"``)."""
    words = []
    for word in reason.split():
        if re.search(r"[/\\(\d'\"]", word):
            break
        if word.endswith(":"):
            words.append(word[:-1])
            break
        words.append(word)
    head = " ".join(words) or reason
    return f"{field}: {head}" if field else head


def skip_summary(prog: str, rows: list[dict], report: str | Path | None = None) -> list[str]:
    """The console lines of a run that skipped ``rows`` (``file``, ``line``, ``field``, ``reason``):
    one line per kind of problem (:func:`reason_kind`) with its count and first row's ``file:line``."""
    if not rows:
        return []
    kinds: dict[str, list[dict]] = {}
    for row in rows:
        kinds.setdefault(reason_kind(row.get("field") or None, str(row["reason"])), []).append(row)
    where = f" (every row in {report})" if report else ""
    lines = [f"{prog}: skipped {len(rows)} bad row{'s' * (len(rows) != 1)}{where}"]
    for kind, group in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        first = group[0]
        where = f"{first['file']}:{first['line']}"
        lines.append(f"{prog}:   {len(group)} x {kind} (first: {where}: {first['reason']})")
    return lines


def too_long(path: Path, line: int, tokens: int, max_length: int) -> DataError:
    """The bad-row error of a sample longer than ``max_length`` (never truncated: that would separate
    image tokens from their features), the same in SFT and MPO."""
    return DataError(
        path,
        line,
        f"too long: {tokens} tokens > max_length {max_length} (raise max_length, "
        "or drop such samples with on_bad_row: skip)",
    )


def check_image_tokens(texts: dict[str, str], tokens: Tokens, path: Path, line: int) -> None:
    """A row's text (``texts``: field -> text) may not spell the family's image tokens itself: they would
    take image features that no image supplies. Images are marked with ``<image>``."""
    for name, text in texts.items():
        for token in (tokens.img_start, tokens.img_end, tokens.img_context):
            if token in text:
                raise DataError(
                    path, line, f"holds the image token {token}; mark images with <image>", field=name
                )


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


@dataclass
class RowVisuals:
    """What a row shows: ``paths`` (image files, video frames, or one video file), whether it is a
    video, one (width, height) per image shown, and for a video file the frames shown
    (:mod:`mpo.data.video`, ``middle`` sampling) out of its ``video_length``."""

    paths: list[Path]
    is_video: bool
    sizes: list[list[int]]
    frames: list[int] = field(default_factory=list)
    video_length: int = 0


def _image_paths(row: dict, subset: Subset) -> tuple[list[Path], bool]:
    """The row's image files (or its one video file) and whether they are a video."""
    if "video" in row:
        video = row["video"]
        if isinstance(video, str) and video:
            return [subset.root / video], True
        if not isinstance(video, list) or not video or not all(isinstance(f, str) and f for f in video):
            raise ValueError("video: expected a video file or a non-empty list of frame paths")
        return [subset.root / f for f in video], True
    image = row.get("image")
    if image is None:
        return [], False
    images = image if isinstance(image, list) else [image]
    if not all(isinstance(p, str) and p for p in images):
        raise ValueError("image: expected a path or a list of paths")
    return [subset.root / p for p in images], False


def row_images(row: dict, subset: Subset, path: Path, line: int) -> RowVisuals:
    """The row's images (files, video frames, or the sampled frames of one video file) and each
    one's size. Every image is decoded once here; a video file is probed (size, frame count). A
    missing or unreadable file is a :class:`DataError` naming the file and line."""
    try:
        images, is_video = _image_paths(row, subset)
    except ValueError as err:
        name, _, msg = str(err).partition(": ")
        raise DataError(path, line, msg, field=name) from None
    field_name = "video" if is_video else "image"
    if is_video and isinstance(row["video"], str):
        try:
            width, height, length = probe_video(images[0])
        except ValueError as err:
            raise DataError(path, line, str(err), field="video") from None
        n = num_frames_for(row["video"], subset.min_num_frame, subset.max_num_frame)
        return RowVisuals(images, True, [[width, height]] * n, frame_indices(n, length, "middle"), length)
    sizes: list[list[int]] = []
    for img in images:
        try:
            sizes.append(list(check_image(img)))
        except ValueError as err:
            raise DataError(path, line, str(err), field=field_name) from None
    return RowVisuals(images, is_video, sizes)
