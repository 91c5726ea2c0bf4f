"""MMPR preference data: meta.json + jsonl lines ``{"image", "question", "chosen", "rejected"}``.

``image`` is one path, a list of paths (multi-image) or absent (text-only); ``video`` is a video
file (frames sampled as :mod:`mpo.data.video` describes) or a list of frame paths, shown as
``Frame{i}: <image>``, one tile each. Rows are validated when the dataset is built (fields,
chosen != rejected, image files present and readable, total length within ``max_length``); images
are decoded only when a batch is collated. Extra keys are kept as metadata.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from mpo.data.images import count_tiles
from mpo.data.meta import (
    BadRows,
    DataConfig,
    Subset,
    apply_repeat,
    check_image_tokens,
    iter_jsonl,
    read_meta,
    row_images,
    too_long,
)
from mpo.data.records import PreferenceRecord, visual_fields
from mpo.data.template import leading_special_ids, normalize_question, tokenize_with_images
from mpo.errors import DataError, UserError
from mpo.models import families
from mpo.models.families.base import Family

REQUIRED_FIELDS = ("question", "chosen", "rejected")


@dataclass
class PreferenceDataConfig(DataConfig):
    """Where the MMPR preference data is and what to do with bad rows (the data arguments of `mpo train`)."""


def parse_row(row: dict, subset: Subset, path: Path, line: int) -> PreferenceRecord:
    """Validate one preference row and return the dataset record; raises :class:`DataError`."""
    for name in REQUIRED_FIELDS:
        if name not in row:
            raise DataError(path, line, "missing field", field=name)
        if not isinstance(row[name], str) or not row[name].strip():
            raise DataError(path, line, "must be a non-empty string", field=name)
    if row["chosen"].strip() == row["rejected"].strip():
        raise DataError(path, line, "chosen == rejected", field="rejected")
    visuals = row_images(row, subset, path, line)
    try:
        question = normalize_question(row["question"], len(visuals.sizes), video=visuals.is_video)
    except ValueError as err:
        raise DataError(path, line, str(err), field="question") from None
    extra = {k: v for k, v in row.items() if k not in (*REQUIRED_FIELDS, "image", "video")}
    return PreferenceRecord(
        **visual_fields(visuals, subset),
        question=question,
        chosen=row["chosen"],
        rejected=row["rejected"],
        subset=subset.name,
        source=f"{path}:{line}",
        metadata=json.dumps(extra, ensure_ascii=False),
    )


def sequence_length(
    record: PreferenceRecord, tokenizer, tile_size: int, tokens_per_tile: int, family: Family
) -> int:
    """Tokens of [prompt | longer response], image tokens included, as the collator will build it
    (``family``: the checkpoint's template and image tokens)."""
    tiles = [count_tiles(w, h, tile_size, record["max_dynamic_patch"]) for w, h in record["image_sizes"]]
    prompt = tokenize_with_images(
        tokenizer, family.template.prompt_text(record["question"]), tiles, tokens_per_tile, family.tokens
    )
    n_prompt = len(leading_special_ids(tokenizer)) + len(prompt)
    n_resp = max(
        len(tokenizer(family.template.response_text(record[k]), add_special_tokens=False)["input_ids"])
        for k in ("chosen", "rejected")
    )
    return n_prompt + n_resp


def load_mmpr(
    meta_path: str | Path,
    processor,
    *,
    max_length: int | None = None,
    seed: int = 42,
    on_bad_row: str = "fail",
    report_path: str | Path | None = None,
    data_root: str | Path | None = None,
    path_map: list[str] | None = None,
) -> tuple[Dataset, BadRows]:
    """Read every subset of an MMPR meta.json into one ``datasets.Dataset`` of preference records.

    Bad rows stop the load with ``file:line: field: reason`` (``on_bad_row="fail"``) or are skipped,
    counted and, when ``report_path`` is given, written there (``"skip"``). Over-long samples are bad
    rows too: truncating would separate image tokens from their features. ``data_root`` and
    ``path_map`` resolve the meta.json's paths (:mod:`mpo.data.meta`).
    """
    bad_rows = BadRows(on_bad_row)
    rng = random.Random(seed)
    tile_size = processor.image_processor.size["height"]
    tokens_per_tile = processor.image_seq_length
    family = families.of_processor(processor)
    records: list[dict] = []
    for subset in read_meta(meta_path, data_root, path_map):
        rows = []
        for line, row in iter_jsonl(subset.annotation, bad_rows):
            try:
                record = parse_row(row, subset, subset.annotation, line)
                check_image_tokens(
                    {k: record[k] for k in REQUIRED_FIELDS}, family.tokens, subset.annotation, line
                )
                if max_length is not None:
                    n = sequence_length(record, processor.tokenizer, tile_size, tokens_per_tile, family)
                    if n > max_length:
                        raise too_long(subset.annotation, line, n, max_length)
            except DataError as err:
                bad_rows.handle(err)
                continue
            rows.append(record)
        records += apply_repeat(rows, subset.repeat_time, rng)
    if report_path is not None and bad_rows.policy == "skip":
        bad_rows.write(report_path)
    if not records:
        raise UserError(f"{meta_path}: no usable rows ({len(bad_rows.skipped)} skipped)")
    return Dataset.from_list(records), bad_rows
