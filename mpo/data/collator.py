"""Collate MMPR records into model batches: tiles, the InternVL2.5 template, and a token layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mpo.attention import layout_of
from mpo.data.images import load_image, tiles_for
from mpo.data.layout import IGNORE, Segment, assemble, pack, plain_segment, shared_segment
from mpo.data.template import expand_images, prompt_text, response_text
from mpo.errors import DataError


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

    A batch without any image still runs the vision tower on one blank tile whose image tokens form
    their own segment after row 0's tokens (never seen by, and never scoring, any real token). Every
    rank then runs the same modules in the same order, which DeepSpeed ZeRO-3 needs: a rank that
    skipped the vision tower would hang the others' parameter all-gathers.
    """

    processor: object
    prefix_sharing: bool = False
    max_packed_tokens: int | None = None
    vision_once: bool = False

    def encode(self, record: dict) -> tuple[list[int], list[int], list[int], torch.Tensor | None]:
        """(prompt ids, chosen ids, rejected ids, tiles) of one record."""
        tokenizer = self.processor.tokenizer
        pixel_values, tiles = None, []
        if record["image_paths"]:
            try:
                images = [load_image(Path(p)) for p in record["image_paths"]]
            except ValueError as err:
                raise DataError(*_source(record), str(err), field="image") from None
            pixel_values, tiles = tiles_for(self.processor.image_processor, images, record["max_dynamic_patch"])
        prompt = expand_images(prompt_text(record["question"]), tiles, self.processor.image_seq_length)

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        return ids(prompt), ids(response_text(record["chosen"])), ids(response_text(record["rejected"])), pixel_values

    def _dummy_image_segment(self, group: int) -> Segment:
        n = self.processor.image_seq_length
        return Segment([self.processor.image_token_id] * n, list(range(n)), [IGNORE] * n, [-1] * n, [group] * n, group)

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(r) for r in records]
        tiles = [t for *_, t in encoded if t is not None]
        shared = self.prefix_sharing
        if shared:
            segments = [shared_segment(p, c, r, i, 3 * i) for i, (p, c, r, _) in enumerate(encoded)]
        else:  # chosen rows, then rejected rows
            segments = [plain_segment(p, c, 2 * i, 2 * i) for i, (p, c, _, _) in enumerate(encoded)]
            segments += [plain_segment(p, r, 2 * i + 1, 2 * i + 1) for i, (p, _, r, _) in enumerate(encoded)]
        rows = [[segments[i] for i in row] for row in pack([len(s) for s in segments], self.max_packed_tokens)]
        if not tiles:
            size = self.processor.image_processor.size
            tiles = [torch.zeros(1, 3, size["height"], size["width"])]
            rows[0].append(self._dummy_image_segment(group=10 * len(segments) + 1))
            repeats = 1
        elif shared or self.vision_once:
            repeats = 1 if shared else 2
        else:
            tiles, repeats = tiles + tiles, 1
        layout = layout_of(prefix_sharing=shared, packed=self.max_packed_tokens is not None)
        batch = assemble(rows, self.processor.tokenizer.pad_token_id, layout)
        batch["pixel_values"] = torch.cat(tiles)
        batch["num_pairs"] = torch.tensor(len(records))
        batch["feature_repeats"] = torch.tensor(repeats)
        if "ref_chosen_logps" in records[0]:
            batch["ref_chosen_logps"] = torch.tensor([r["ref_chosen_logps"] for r in records])
            batch["ref_rejected_logps"] = torch.tensor([r["ref_rejected_logps"] for r in records])
        return batch
