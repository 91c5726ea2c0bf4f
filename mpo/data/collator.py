"""Collate MMPR records into model batches: tiles, the checkpoint family's template, and a token layout."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mpo.attention import layout_of
from mpo.data.images import load_visuals, tiles_for
from mpo.data.layout import assemble, pack, plain_segment, shared_segment, tiles_or_blank
from mpo.data.meta import BadRows
from mpo.data.records import PreferenceRecord
from mpo.data.template import leading_special_ids, tokenize_with_images
from mpo.errors import DataError, UserError
from mpo.models import families

logger = logging.getLogger(__name__)


def _source(record: dict) -> tuple[str, int]:
    path, _, line = record["source"].rpartition(":")
    return path, int(line)


@dataclass
class PreferenceCollator:
    """Build preference batches from records of :func:`mpo.data.mmpr.load_mmpr`.

    Layouts (see :mod:`mpo.data.layout`): plain two-row pairs (default), ``prefix_sharing`` (one
    [prompt | chosen | rejected] segment per pair), and ``max_packed_tokens`` (several segments per
    row). ``vision_once`` (plain layout) sends each pair's tiles once; the trainer then runs the
    vision tower once and uses the features for both rows (``feature_repeats`` = 2).

    Besides the layout tensors, the batch holds ``pixel_values`` [T, 3, H, W], ``num_pairs``,
    ``feature_repeats`` and, when the records carry them, ``ref_chosen_logps`` / ``ref_rejected_logps``.

    A batch without any image runs the vision tower on one blank tile (:func:`mpo.data.layout.tiles_or_blank`).
    """

    processor: object
    prefix_sharing: bool = False
    max_packed_tokens: int | None = None
    vision_once: bool = False

    def encode(self, record: PreferenceRecord) -> tuple[list[int], list[int], list[int], torch.Tensor | None]:
        """(prompt ids, chosen ids, rejected ids, tiles) of one record."""
        prompt, pixel_values = self.encode_prompt(record)
        template, tokenizer = families.of_processor(self.processor).template, self.processor.tokenizer
        chosen, rejected = (
            tokenizer(template.response_text(record[k]), add_special_tokens=False)["input_ids"]
            for k in ("chosen", "rejected")
        )
        return prompt, chosen, rejected, pixel_values

    def encode_prompt(self, record: dict) -> tuple[list[int], torch.Tensor | None]:
        """(prompt ids, tiles) of one record: its images tiled, its question in the family's template, each
        ``<image>`` expanded to its tiles' context tokens, led by the tokenizer's leading special ids. Also
        the prompt of `mpo rl` (:mod:`mpo.rl.data`), so a question is asked byte for byte alike in both."""
        tokenizer = self.processor.tokenizer
        pixel_values, tiles = None, []
        if record["image_paths"]:
            try:
                images = load_visuals(record["image_paths"], record.get("video_frames"))
            except ValueError as err:
                field_name = "video" if record.get("is_video") else "image"
                raise DataError(*_source(record), str(err), field=field_name) from None
            pixel_values, tiles = tiles_for(
                self.processor.image_processor, images, record["max_dynamic_patch"]
            )
        family = families.of_processor(self.processor)
        template = family.template
        question = template.prompt_text(record["question"])
        try:
            prompt = tokenize_with_images(
                tokenizer, question, tiles, self.processor.image_seq_length, family.tokens
            )
        except ValueError as err:
            raise DataError(*_source(record), str(err), field="question") from None
        return leading_special_ids(tokenizer) + prompt, pixel_values

    def __call__(self, records: list[PreferenceRecord]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(r) for r in records]
        tiles = [t for *_, t in encoded if t is not None]
        shared = self.prefix_sharing
        if shared:
            segments = [shared_segment(p, c, r, i, 3 * i) for i, (p, c, r, _) in enumerate(encoded)]
        else:  # chosen rows, then rejected rows
            segments = [plain_segment(p, c, 2 * i, 2 * i) for i, (p, c, _, _) in enumerate(encoded)]
            segments += [plain_segment(p, r, 2 * i + 1, 2 * i + 1) for i, (p, _, r, _) in enumerate(encoded)]
        rows = [
            [segments[i] for i in row] for row in pack([len(s) for s in segments], self.max_packed_tokens)
        ]
        tiles, blank = tiles_or_blank(self.processor, tiles, group=10 * len(segments) + 1)
        if blank is not None:
            repeats = 1
        elif shared or self.vision_once:
            repeats = 1 if shared else 2
        else:
            tiles, repeats = tiles + tiles, 1
        layout = layout_of(prefix_sharing=shared, packed=self.max_packed_tokens is not None)
        batch = assemble(rows, self.processor.tokenizer.pad_token_id, layout, blank=blank)
        batch["pixel_values"] = torch.cat(tiles)
        batch["num_pairs"] = torch.tensor(len(records))
        batch["feature_repeats"] = torch.tensor(repeats)
        if "ref_chosen_logps" in records[0]:
            batch["ref_chosen_logps"] = torch.tensor([r["ref_chosen_logps"] for r in records])
            batch["ref_rejected_logps"] = torch.tensor([r["ref_rejected_logps"] for r in records])
        return batch


def _drop_source(items: list, source: str) -> list:
    """``items`` (records, or rows that are lists of records) without the records from ``source``."""
    out = []
    for item in items:
        if isinstance(item, list):
            kept = [r for r in item if r["source"] != source]
            if kept:
                out.append(kept)
        elif item["source"] != source:
            out.append(item)
    return out


def _count(items: list) -> int:
    """Records in ``items`` (records, or rows that are lists of records)."""
    return sum(len(item) if isinstance(item, list) else 1 for item in items)


SKIPPED_ROWS = "skipped_rows"  # batch key: report rows of the records that failed while it was built
DROPPED_SOURCES = "dropped_sources"  # batch key: ``file:line`` of every record left out of it


@dataclass
class SkipBadRecords:
    """A collate function that skips records whose files fail to decode, under ``on_bad_row: skip``.

    Rows are checked when the data is loaded, but a file can still fail when a batch is built (it
    changed, or a video frame does not decode). Then the error names the record (``file:line``);
    with ``bad_rows.policy == "skip"`` that record is dropped from the batch (later batches drop it
    without decoding it again) and the batch is built from the rest. When no record of a batch is
    left, the last batch that was built is built again, as InternVL's loader replaces a failed item
    by another one: the step still runs on every rank. With ``fail`` the error stops the run.

    The skips travel with the batch, under :data:`SKIPPED_ROWS` (new report rows) and
    :data:`DROPPED_SOURCES` (every record left out), because in a DataLoader worker this object is a
    copy whose counts the training process never sees: the trainer records them with
    :func:`take_skips`.

    ``items`` are records (preference collator) or rows of records (SFT collator, packed rows).
    """

    collate: Callable[[list], dict]
    bad_rows: BadRows
    bad_sources: set[str] = field(default_factory=set)
    last_good: list | None = None

    def __getattr__(self, name: str):  # the wrapped collator's settings (prefix_sharing, train, ...)
        if name == "collate":
            raise AttributeError(name)
        return getattr(self.collate, name)

    def __call__(self, items: list) -> dict:
        sources = {r["source"] for item in items for r in (item if isinstance(item, list) else [item])}
        skipped: list[dict] = []
        for source in self.bad_sources:
            items = _drop_source(items, source)
        while items:
            try:
                batch = self.collate(items)
            except DataError as err:
                source = f"{err.path}:{err.line}"
                skipped.append(self.bad_rows.row(err))  # raises under "fail"
                logger.warning(f"skipped a row that failed to decode: {err}")
                self.bad_sources.add(source)
                before, items = _count(items), _drop_source(items, source)
                if _count(items) == before:  # the error names no record of this batch
                    raise
                continue
            self.last_good = items
            kept = {r["source"] for item in items for r in (item if isinstance(item, list) else [item])}
            return {**batch, SKIPPED_ROWS: skipped, DROPPED_SOURCES: sorted(sources - kept)}
        if self.last_good is None:
            raise UserError("every record of the first batch failed to decode (see the skipped rows above)")
        return {**self.collate(self.last_good), SKIPPED_ROWS: skipped, DROPPED_SOURCES: sorted(sources)}


def take_skips(batch: dict, bad_rows: BadRows | None) -> dict:
    """``batch`` without the skip keys of :class:`SkipBadRecords`, its new skips recorded in ``bad_rows``."""
    if SKIPPED_ROWS not in batch:
        return batch
    batch = dict(batch)
    rows = batch.pop(SKIPPED_ROWS)
    batch.pop(DROPPED_SOURCES)
    if bad_rows is not None:
        bad_rows.add(rows)
    return batch
