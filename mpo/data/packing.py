"""Packing: several samples per row, never split, kept independent of each other.

:func:`pack_samples` groups samples (by their token lengths) into rows of at most ``max_tokens``.
Inside a row, each sample gets ``position_ids`` restarting at 0 and an attention group of its own;
:mod:`mpo.attention` turns that into what the attention kernel needs (a block-diagonal mask, a flex
``BlockMask``, or padding-free varlen rows), so every sample computes exactly what it computes alone
in its own row (up to float reordering). The vision tower sees tiles one by one and needs nothing.
"""

from __future__ import annotations

import random


def pack_samples(lengths: list[int], max_tokens: int, *, seed: int = 0, window: int = 64) -> list[list[int]]:
    """Group sample indices into rows whose total length is at most ``max_tokens``.

    Samples are visited in a seeded random order and each goes into the first of the last ``window``
    open rows where it fits (first fit over a bounded window: linear time, and rows mix samples from
    all over the data instead of grouping similar lengths). A sample longer than ``max_tokens`` is an
    error: the caller drops over-long samples before packing. Every index appears exactly once.
    """
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        raise ValueError(
            f"{len(too_long)} samples longer than max_tokens={max_tokens} (first: #{too_long[0]})"
        )
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
