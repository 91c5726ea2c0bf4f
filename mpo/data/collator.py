"""Collate MMPR records into model batches: tiles, the InternVL2.5 template, [chosen; rejected] rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mpo.data.images import load_image, tiles_for
from mpo.data.template import expand_images, prompt_text, response_text
from mpo.errors import DataError


def _source(record: dict) -> tuple[str, int]:
    path, _, line = record["source"].rpartition(":")
    return path, int(line)


@dataclass
class PreferenceCollator:
    """Build the batch a preference trainer consumes, from records of :func:`mpo.data.mmpr.load_mmpr`.

    Output for B pairs (rows 0..B-1 chosen, B..2B-1 rejected, right-padded to length L)::

        input_ids        [2B, L]   prompt (image tokens expanded) followed by the response
        attention_mask   [2B, L]
        completion_mask  [2B, L]   1 on response tokens (answer and <|im_end|>)
        pixel_values     [T, 3, H, W]  tiles of the chosen rows, then the same tiles again for the
                                       rejected rows

    A batch without any image still runs the vision tower: one blank tile whose image tokens sit
    after the end of row 0, masked out of attention and loss. Every rank then runs the same modules
    in the same order, which DeepSpeed ZeRO-3 needs (a rank skipping the vision tower would hang the
    parameter all-gathers of the others), and nothing of the text rows changes.
    """

    processor: object

    def encode(self, record: dict) -> tuple[list[int], list[int], list[int], torch.Tensor | None]:
        """(prompt ids, chosen ids, rejected ids, tiles) of one record."""
        tokenizer = self.processor.tokenizer
        pixel_values, tiles = None, []
        if record["images"]:
            try:
                images = [load_image(Path(p)) for p in record["images"]]
            except ValueError as err:
                raise DataError(*_source(record), str(err), field="image") from None
            pixel_values, tiles = tiles_for(self.processor.image_processor, images, record["max_dynamic_patch"])
        prompt = expand_images(prompt_text(record["question"]), tiles, self.processor.image_seq_length)

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        return ids(prompt), ids(response_text(record["chosen"])), ids(response_text(record["rejected"])), pixel_values

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(r) for r in records]
        rows = [(p, c) for p, c, _, _ in encoded] + [(p, r) for p, _, r, _ in encoded]
        pad_id = self.processor.tokenizer.pad_token_id
        tiles = [t for *_, t in encoded if t is not None]
        dummy = not tiles
        length = max(len(p) + len(c) for p, c in rows)
        if dummy:
            length = max(length, len(rows[0][0]) + len(rows[0][1]) + self.processor.image_seq_length)
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (prompt, completion) in enumerate(rows):
            n = len(prompt) + len(completion)
            input_ids[i, :n] = torch.tensor(prompt + completion)
            attention_mask[i, :n] = 1
            completion_mask[i, len(prompt) : n] = 1
        if dummy:
            size = self.processor.image_processor.size
            tiles = [torch.zeros(1, 3, size["height"], size["width"])]
            start = len(rows[0][0]) + len(rows[0][1])
            input_ids[0, start : start + self.processor.image_seq_length] = self.processor.image_token_id
        pixel_values = torch.cat(tiles) if dummy else torch.cat(tiles + tiles)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
            "pixel_values": pixel_values,
        }
