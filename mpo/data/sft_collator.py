"""The SFT collator: rows of :class:`~mpo.data.records.SFTRecord` (one sample, or several packed by
:func:`mpo.data.packing.pack_samples`) into a batch, through the segments and :func:`~mpo.data.layout.assemble`
of the preference batches (:mod:`mpo.data.layout`).

Each sample's images are decoded, JPEG-compressed at a random quality (uniform in 75..100) for subsets
with ``data_augment: true`` when ``train`` is set, tiled (per-subset ``max_dynamic_patch``, split across
the images of a sample, thumbnail included); a video file's frames are redrawn (``rand``) in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from mpo.attention import layout_of
from mpo.data.images import JPEG_QUALITY_RANGE, jpeg_compress, load_visuals, tiles_for
from mpo.data.layout import IGNORE_INDEX, SFT_BATCH, Segment, assemble, sample_segment, tiles_or_blank
from mpo.data.records import SFTRecord
from mpo.data.sft_data import encode_turns
from mpo.data.video import frame_indices
from mpo.errors import DataError
from mpo.models import families
from mpo.sft_loss import sample_weight


@dataclass
class SFTCollator:
    """Build SFT batches from rows of records (:class:`~mpo.data.sft_data.SFTDataset` items; a bare record is a
    row of one).

    Output for R rows right-padded to length L, N samples in all, T tiles::

        input_ids      [R, L]
        attention_mask [R, L]      1 on real tokens
        position_ids   [R, L]      restart at 0 at every sample, and after a row's samples (padding)
        attn_group, attn_prefix, layout   the attention description of :mod:`mpo.attention`
        sample_ids     [R, L]      index 0..N-1 of the sample each token belongs to, -1 elsewhere
        labels         [R, L]      token ids on supervised tokens, -100 elsewhere
        loss_weights   [R, L]      w_i of the token's sample (mpo.sft_loss) on supervised tokens, else 0
        pixel_values   [T, 3, H, W]
        supervised_tokens [N]      x_i of every sample
        sources        list[str]   ``file:line`` of every sample, in sample-id order

    A batch without any image runs the vision tower on one blank tile (:func:`mpo.data.layout.tiles_or_blank`),
    as the preference collator's: seen by no sample, no loss.
    """

    processor: object
    loss_reduction: str = "square"
    train: bool = True
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _worker: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def rng(self) -> random.Random:
        """The stream of JPEG qualities and video frames: seeded with ``seed`` in the training process and in
        a single DataLoader worker (so one worker draws what no worker would), and with ``seed`` and the
        worker's id in each of several workers. Every worker holds a copy of the collator: without their own
        seeds, all would draw the same qualities and frames for the different batches they build."""
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1 and self._worker != info.id:
            self._rng, self._worker = random.Random(f"{self.seed}/worker {info.id}"), info.id
        return self._rng

    def draw_jpeg_quality(self) -> int:
        """JPEG quality for one image, uniform over the integers of ``JPEG_QUALITY_RANGE`` (75..100)."""
        return self.rng.randint(*JPEG_QUALITY_RANGE)

    def frames(self, record: SFTRecord) -> list[int]:
        """The frames of a video-file record to show: ``rand`` positions drawn anew in training, the
        load-time ``middle`` ones otherwise (:mod:`mpo.data.video`); empty for other records."""
        chosen = list(record.get("video_frames") or [])
        if chosen and self.train:
            return frame_indices(len(chosen), record["video_length"], "rand", self.rng)
        return chosen

    def _images(self, record: SFTRecord) -> list:
        try:
            images = load_visuals(record["image_paths"], self.frames(record))
        except ValueError as err:
            path, _, line = record["source"].rpartition(":")
            raise DataError(
                path, int(line), str(err), field="video" if record["is_video"] else "image"
            ) from None
        if self.train and record.get("data_augment"):
            images = [jpeg_compress(img, self.draw_jpeg_quality()) for img in images]
        return images

    def encode(self, record: SFTRecord) -> tuple[list[int], list[int], torch.Tensor | None]:
        """(input ids, labels, tiles) of one sample."""
        pixel_values, tiles = None, []
        if record["image_paths"]:
            pixel_values, tiles = tiles_for(
                self.processor.image_processor, self._images(record), record["max_dynamic_patch"]
            )
        family = families.of_processor(self.processor)
        ids, labels = encode_turns(
            record, self.processor.tokenizer, tiles, self.processor.image_seq_length, family
        )
        return ids, labels, pixel_values

    def __call__(self, rows: list) -> dict[str, torch.Tensor]:
        rows = [row if isinstance(row, list) else [row] for row in rows]
        encoded = [[self.encode(r) for r in row] for row in rows]
        segments: list[list[Segment]] = []
        supervised: list[int] = []  # x_i of every sample, in sample-id order
        for row in encoded:
            segments.append([])
            for ids, labels, _ in row:
                x = sum(1 for t in labels if t != IGNORE_INDEX)
                weight = sample_weight(x, self.loss_reduction)
                segments[-1].append(sample_segment(ids, labels, len(supervised), weight))
                supervised.append(x)
        tiles = [t for row in encoded for _, _, t in row if t is not None]
        tiles, blank = tiles_or_blank(self.processor, tiles, group=len(supervised))
        layout = layout_of(packed=any(len(row) > 1 for row in rows))
        batch = assemble(segments, self.processor.tokenizer.pad_token_id, layout, blank=blank, keys=SFT_BATCH)
        batch["pixel_values"] = torch.cat(tiles)
        batch["supervised_tokens"] = torch.tensor(supervised, dtype=torch.long)
        batch["sources"] = [record["source"] for row in rows for record in row]
        return batch
