"""SFT data: InternVL meta.json + ``conversations`` jsonl, the checkpoint family's template, tiles, JPEG augmentation.

A line::

    {"image": "a.png" | ["a.png", "b.png"] | absent, "video": "clip.mp4" | ["f1.png", ...] (instead of image),
     "conversations": [{"from": "system", "value": "..."} (optional, first),
                       {"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}

Multi-turn, multi-image (one ``<image>`` per image, anywhere in the human turns), video (a video
file or frame files, shown as ``Frame{i}: <image>``, one tile per frame; which frames of a video
file: :mod:`mpo.data.video`, ``rand`` positions redrawn at every training collation), text-only.
Without any placeholder, the first human turn gets them prepended
(:func:`mpo.data.template.normalize_question`). Only assistant replies and their ``<|im_end|>`` are
supervised.

Loading (:func:`load_sft`) validates every row (fields, roles, placeholders, image files) under the
same bad-row policy as the MPO data (``fail``: ``file:line: field: reason``; ``skip``: counted and
reported), computes each sample's exact token length (image tokens included) and never truncates:
a sample longer than ``max_length`` is a bad row like the others (``fail``: an error naming its
file and line, as in ``mpo train``; ``skip``: dropped and counted). Samples whose replies loop
(n-gram repetition ratio above a threshold) are dropped and counted whatever the policy.

Collation: :class:`mpo.data.sft_collator.SFTCollator`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mpo.atomic import atomic_write
from mpo.data.images import count_tiles
from mpo.data.layout import IGNORE_INDEX
from mpo.data.meta import (
    BadRows,
    Subset,
    apply_repeat,
    check_image_tokens,
    iter_jsonl,
    read_meta,
    row_images,
    too_long,
)
from mpo.data.records import SFTRecord, visual_fields
from mpo.data.repetition import ngram_repetition_ratio
from mpo.data.template import IMAGE_PLACEHOLDER, leading_special_ids, normalize_question, tokenize_with_images
from mpo.errors import DataError, UserError
from mpo.models import families
from mpo.models.families.base import Family

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


# ------------------------------------------------------------------------------------------- rows


def parse_conversations(value, path: Path, line: int) -> tuple[str | None, list[list[str]]]:
    """(system message or None, [[role, text], ...]) of a ``conversations`` field; raises DataError."""
    if not isinstance(value, list) or not value:
        raise DataError(path, line, "expected a non-empty list of turns", field="conversations")
    system, turns = None, []
    for k, turn in enumerate(value):
        where = f"conversations[{k}]"
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(path, line, 'expected {"from": ..., "value": ...}', field=where)
        role = ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise DataError(path, line, f"unknown role {turn['from']!r} (expected human or gpt)", field=where)
        if not isinstance(turn["value"], str):
            raise DataError(path, line, "value must be a string", field=where)
        if role == "system":
            if k != 0:
                raise DataError(path, line, "a system turn may only come first", field=where)
            system = turn["value"]
            continue
        if role == "assistant" and not turn["value"].strip():
            raise DataError(path, line, "empty assistant reply", field=where)
        turns.append([role, turn["value"]])
    if not any(role == "assistant" for role, _ in turns):
        raise DataError(path, line, "no assistant (gpt) turn: nothing to learn", field="conversations")
    return system, turns


def _place_images(turns: list[list[str]], num_images: int, is_video: bool) -> list[list[str]]:
    """Check the ``<image>`` count over the user turns; without any, put them in the first user turn."""
    found = sum(text.count(IMAGE_PLACEHOLDER) for role, text in turns if role == "user")
    if any(IMAGE_PLACEHOLDER in text for role, text in turns if role == "assistant"):
        raise ValueError(f"{IMAGE_PLACEHOLDER} in an assistant reply")
    if found == num_images:
        return turns
    if found == 0:
        first = next((k for k, (role, _) in enumerate(turns) if role == "user"), None)
        if first is None:
            raise ValueError(f"{num_images} images but no human turn to show them in")
        turns = [list(t) for t in turns]
        turns[first][1] = normalize_question(turns[first][1], num_images, video=is_video)
        return turns
    raise ValueError(f"{found} {IMAGE_PLACEHOLDER} placeholders but {num_images} images")


def parse_sft_row(row: dict, subset: Subset, path: Path, line: int) -> SFTRecord:
    """Validate one SFT row and return its record (no pixels, no tokens yet); raises DataError."""
    if "conversations" not in row:
        raise DataError(path, line, "missing field", field="conversations")
    system, turns = parse_conversations(row["conversations"], path, line)
    visuals = row_images(row, subset, path, line)
    try:
        turns = _place_images(turns, len(visuals.sizes), visuals.is_video)
    except ValueError as err:
        raise DataError(path, line, str(err), field="conversations") from None
    return SFTRecord(
        **visual_fields(visuals, subset),
        video_length=visuals.video_length,
        system=system,
        turns=turns,
        data_augment=subset.data_augment,
        subset=subset.name,
        source=f"{path}:{line}",
    )


# -------------------------------------------------------------------------------------- encoding


def encode_turns(
    record: SFTRecord, tokenizer, tiles_per_image: Sequence[int], tokens_per_tile: int, family: Family
) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one sample: the family's template (the record's own system message, else
    the template's) with each ``<image>`` expanded to its tiles' tokens; labels are the ids on supervised
    tokens and -100 elsewhere."""
    system = ... if record.get("system") is None else record["system"]
    ids: list[int] = leading_special_ids(tokenizer)
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    next_image = 0
    for text, supervised in family.template.segments([tuple(t) for t in record["turns"]], system):
        k = text.count(IMAGE_PLACEHOLDER)
        tiles = list(tiles_per_image[next_image : next_image + k])
        seg = tokenize_with_images(tokenizer, text, tiles, tokens_per_tile, family.tokens)
        next_image += k
        ids += seg
        labels += seg if supervised else [IGNORE_INDEX] * len(seg)
    return ids, labels


def planned_tiles(record: SFTRecord, tile_size: int) -> list[int]:
    """Tiles per image as the collator will make them, from the image headers alone."""
    return [count_tiles(w, h, tile_size, record["max_dynamic_patch"]) for w, h in record["image_sizes"]]


def assistant_text(record: SFTRecord) -> str:
    return "\n".join(text for role, text in record["turns"] if role == "assistant")


# --------------------------------------------------------------------------------------- loading


@dataclass
class SFTDataReport:
    """What loading kept and dropped, and why; written as JSON next to the run."""

    bad_rows: BadRows
    rows_read: int = 0  # non-blank lines of the annotation files
    kept: int = 0  # records after repeat_time
    too_long: list[dict] = field(default_factory=list)
    repetitive: list[dict] = field(default_factory=list)

    def to_dict(self, max_listed: int = 200) -> dict:
        return {
            "rows_read": self.rows_read,
            "kept": self.kept,
            "skipped_bad_rows": len(self.bad_rows.skipped),
            "bad_rows_by_reason": self.bad_rows.counts(),
            "dropped_too_long": len(self.too_long),
            "dropped_repetitive": len(self.repetitive),
            "too_long": self.too_long[:max_listed],
            "repetitive": self.repetitive[:max_listed],
            "bad_rows": self.bad_rows.skipped[:max_listed],
        }

    def write(self, path: str | Path) -> Path:
        return atomic_write(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))

    def skipped_rows(self) -> list[dict]:
        """Every row left out, as ``{"file", "line", "field", "reason"}`` (for the console summary)."""
        rows = list(self.bad_rows.skipped)
        dropped = (
            (self.too_long, "too long: {tokens} tokens"),
            (self.repetitive, "repetitive: ratio {ratio}"),
        )
        for entries, reason in dropped:
            for entry in entries:
                file, _, line = entry["source"].rpartition(":")
                rows.append({"file": file, "line": int(line), "field": "", "reason": reason.format(**entry)})
        return rows


class SFTDataset(torch.utils.data.Dataset):
    """Records, grouped into rows: item ``i`` is the list of records of row ``i`` (one record per
    row unless packed)."""

    def __init__(self, records: list[dict], rows: list[list[int]] | None = None) -> None:
        self.records = records
        self.rows = rows if rows is not None else [[i] for i in range(len(records))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> list[dict]:
        return [self.records[j] for j in self.rows[i]]


def load_sft(
    meta_path: str | Path,
    processor,
    *,
    max_length: int | None = 8192,
    seed: int = 42,
    on_bad_row: str = "fail",
    repetition_ngram: int = 4,
    max_repetition_ratio: float | None = None,
    report_path: str | Path | None = None,
    data_root: str | Path | None = None,
    path_map: list[str] | None = None,
) -> tuple[list[SFTRecord], SFTDataReport]:
    """Read every subset of an SFT meta.json into records with their exact ``length`` (tokens,
    image tokens included) and ``supervised_tokens``.

    Bad rows, samples longer than ``max_length`` included, follow ``on_bad_row``. When
    ``max_repetition_ratio`` is set, samples whose assistant replies have a word
    ``repetition_ngram``-gram repetition ratio above it are dropped and counted whatever the policy.
    ``data_root`` and ``path_map`` resolve the meta.json's paths (:mod:`mpo.data.meta`).
    ``repeat_time`` applies after filtering. The report is written to ``report_path`` when given.
    """
    report = SFTDataReport(BadRows(on_bad_row))
    rng = random.Random(seed)
    tokenizer = processor.tokenizer
    tile_size = processor.image_processor.size["height"]
    tokens_per_tile = processor.image_seq_length
    family = families.of_processor(processor)
    records: list[SFTRecord] = []
    accepted = 0
    for subset in read_meta(meta_path, data_root, path_map):
        rows = []
        for line, row in iter_jsonl(subset.annotation, report.bad_rows):
            try:
                record = parse_sft_row(row, subset, subset.annotation, line)
                texts = {"conversations": "".join(text for _, text in record["turns"])}
                if record["system"]:
                    texts["system"] = record["system"]
                check_image_tokens(texts, family.tokens, subset.annotation, line)
            except DataError as err:
                report.bad_rows.handle(err)
                continue
            if max_repetition_ratio is not None:
                ratio = ngram_repetition_ratio(assistant_text(record), repetition_ngram)
                if ratio > max_repetition_ratio:
                    report.repetitive.append({"source": record["source"], "ratio": round(ratio, 4)})
                    continue
            ids, labels = encode_turns(
                record, tokenizer, planned_tiles(record, tile_size), tokens_per_tile, family
            )
            record["length"] = len(ids)
            record["supervised_tokens"] = sum(1 for t in labels if t != IGNORE_INDEX)
            if max_length is not None and len(ids) > max_length:
                if report.bad_rows.policy == "fail":  # under skip: listed under too_long
                    raise too_long(subset.annotation, line, len(ids), max_length)
                report.too_long.append({"source": record["source"], "tokens": len(ids)})
                continue
            rows.append(record)
        accepted += len(rows)
        records += apply_repeat(rows, subset.repeat_time, rng)
    report.kept = len(records)
    report.rows_read = accepted + len(report.bad_rows.skipped) + len(report.too_long) + len(report.repetitive)
    if report_path is not None:
        report.write(report_path)
    if not records:
        raise UserError(f"{meta_path}: no usable rows ({report.rows_read} read; see the data report)")
    return records, report
