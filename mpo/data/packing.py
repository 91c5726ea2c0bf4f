"""Packing: several samples per row, never split, kept independent of each other.

:func:`pack_samples` groups samples (by their token lengths) into rows of at most ``max_tokens``.
Inside a row, each sample gets ``position_ids`` restarting at 0 and a ``sample_id``; attention is
restricted to the same sample by either

- a block-diagonal causal 4-D additive mask (:func:`packed_attention_mask`) passed to the language
  model together with the position ids (``sdpa`` / ``eager``, the CPU path), or
- no mask at all, only the position ids: transformers' flash-attention path detects the restarts and
  runs varlen flash-attention (``flash_attention_2`` on a GPU), which never materialises an L x L mask.

Either way every sample computes exactly what it computes alone in its own row (up to float
reordering); the vision tower sees tiles one by one and needs nothing.
"""

from __future__ import annotations

import random

import torch


def pack_samples(lengths: list[int], max_tokens: int, *, seed: int = 0, window: int = 64) -> list[list[int]]:
    """Group sample indices into rows whose total length is at most ``max_tokens``.

    Samples are visited in a seeded random order and each goes into the first of the last ``window``
    open rows where it fits (first fit over a bounded window: linear time, and rows mix samples from
    all over the data instead of grouping similar lengths). A sample longer than ``max_tokens`` is an
    error: the caller drops over-long samples before packing. Every index appears exactly once.
    """
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        raise ValueError(f"{len(too_long)} samples longer than max_tokens={max_tokens} (first: #{too_long[0]})")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    rows: list[list[int]] = []
    room: list[int] = []
    first_open = 0
    for i in order:
        n = lengths[i]
        for r in range(max(first_open, len(rows) - window), len(rows)):
            if room[r] >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_tokens - n)
        first_open = max(first_open, len(rows) - window)
    return rows


def position_ids_for(sample_ids: torch.Tensor) -> torch.Tensor:
    """Positions restarting at 0 at every change of ``sample_ids`` along each row ([B, L] -> [B, L])."""
    b, length = sample_ids.shape
    idx = torch.arange(length, device=sample_ids.device).expand(b, length)
    start = torch.ones_like(sample_ids, dtype=torch.bool)
    start[:, 1:] = sample_ids[:, 1:] != sample_ids[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - first


def packed_attention_mask(sample_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Block-diagonal causal mask [B, 1, L, L]: query q sees key k iff k <= q and both belong to the
    same sample (padding, id -1, sees only earlier padding, so no row is empty).

    Boolean (True = attend; what ``sdpa`` takes, whatever the autocast dtype) when ``dtype`` is None,
    else additive in ``dtype`` (0 = attend, dtype min = not; what ``eager`` adds to its scores).
    """
    length = sample_ids.shape[1]
    same = sample_ids[:, :, None] == sample_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=sample_ids.device).tril()
    allowed = (same & causal)[:, None]
    if dtype is None:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sample_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)
