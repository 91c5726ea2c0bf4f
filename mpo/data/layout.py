"""Where each token of a preference batch goes: the plain two-row layout, prefix sharing, packing.

Every layout produces the same four per-token tensors, so the trainer scores all of them with one
routine (TRL's fused LM head with pre-shifted labels, then a scatter-add per sequence):

    input_ids     [R, L]
    position_ids  [R, L]     restart where a branch restarts
    shift_labels  [R, L]     token predicted at position p (-100 where nothing is scored)
    logp_index    [R, L]     2*pair + 0 (chosen) / 1 (rejected) at scored positions, -1 elsewhere

plus the attention description of :mod:`mpo.attention` (``attention_mask``, ``attn_group``,
``attn_prefix``, ``layout``), from which the trainer builds what its attention kernel needs.

Plain: rows 0..B-1 are [prompt | chosen], rows B..2B-1 [prompt | rejected], right-padded.

Prefix sharing: one segment [prompt[:-1] | t c_1 .. c_n | t r_1 .. r_m], where t is the prompt's
last token, repeated at the head of both branches so that each branch predicts its first response
token from its own copy of t. Both branches take positions P-1, P, ...; the rejected branch attends to
the shared prefix and to itself, never to the chosen branch. Each sequence is then scored exactly as
if it were [prompt | response] on its own, while the prompt (and its image tokens) runs once.
Packing puts several segments in one row; a segment never attends across its boundary.

SFT rows are built by the same functions: one :func:`sample_segment` per sample (positions from 0,
labels unshifted, a loss weight per token), packed upstream by :func:`mpo.data.packing.pack_samples`,
stacked by :func:`assemble` under the :data:`SFT_BATCH` keys. Both collators send a batch without
images through one rule, :func:`tiles_or_blank`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpo.data.images import blank_tile

IGNORE_INDEX = -100  # label of a position that is not scored (transformers' and PyTorch's ignore_index)


@dataclass
class Segment:
    """One block of tokens of a row with its positions, labels, score index and attention groups.

    ``group`` names which keys a token may see: a token sees earlier tokens of its own group and of
    the ``shared`` group (the segment's prefix). Groups are unique per segment.
    """

    ids: list[int]
    positions: list[int]
    labels: list[int]
    index: list[int]
    groups: list[int]  # per token: its branch group (prefix tokens carry the prefix group)
    prefix_group: int
    weights: list[float] | None = None  # per token: its loss weight (SFT), else none

    def __len__(self) -> int:
        return len(self.ids)


def _branch(tokens: list[int], start_pos: int, score: int, group: int) -> tuple[list, list, list, list, list]:
    """A run of tokens that predicts its own successors: positions from start_pos; the last token
    predicts nothing."""
    n = len(tokens)
    labels = tokens[1:] + [IGNORE_INDEX]
    index = [score] * (n - 1) + [-1]
    return tokens, list(range(start_pos, start_pos + n)), labels, index, [group] * n


def plain_segment(prompt: list[int], response: list[int], score: int, group: int) -> Segment:
    """[prompt | response]; the positions that predict response tokens are scored as ``score``."""
    ids = prompt + response
    labels = [IGNORE_INDEX] * (len(prompt) - 1) + response + [IGNORE_INDEX]
    index = [-1] * (len(prompt) - 1) + [score] * len(response) + [-1]
    return Segment(ids, list(range(len(ids))), labels, index, [group] * len(ids), prefix_group=group)


def shared_segment(
    prompt: list[int], chosen: list[int], rejected: list[int], pair: int, group0: int
) -> Segment:
    """[prompt[:-1] | t chosen | t rejected] with groups group0 (prefix), group0+1, group0+2."""
    head, t = prompt[:-1], prompt[-1]
    p = len(head)
    ids, pos, lab, idx, grp = (list(head), list(range(p)), [IGNORE_INDEX] * p, [-1] * p, [group0] * p)
    for k, response in enumerate((chosen, rejected)):
        b_ids, b_pos, b_lab, b_idx, b_grp = _branch([t] + response, p, 2 * pair + k, group0 + 1 + k)
        ids += b_ids
        pos += b_pos
        lab += b_lab
        idx += b_idx
        grp += b_grp
    return Segment(ids, pos, lab, idx, grp, prefix_group=group0)


def sample_segment(ids: list[int], labels: list[int], sample: int, weight: float) -> Segment:
    """One SFT sample on its own: positions from 0, group and index ``sample``, labels as given (the ids
    on supervised tokens, -100 elsewhere), ``weight`` on every supervised token and 0 elsewhere."""
    n = len(ids)
    weights = [weight if t != IGNORE_INDEX else 0.0 for t in labels]
    return Segment(ids, list(range(n)), labels, [sample] * n, [sample] * n, sample, weights)


def tiles_or_blank(
    processor, tiles: list[torch.Tensor], group: int
) -> tuple[list[torch.Tensor], Segment | None]:
    """The blank-tile rule of every collator: a batch without any image still runs the vision tower, on one
    blank tile whose image tokens form a segment of their own (group ``group``, which no real token uses)
    after row 0's tokens (:func:`assemble`'s ``blank``): seen by no real token, scoring nothing. Every rank
    then runs the same modules in the same order, which DDP and DeepSpeed ZeRO-3 need: a rank that skipped
    the vision tower would hang the others' parameter all-gathers.

    Returns the tiles to send and that segment (``None`` when the batch has images)."""
    if tiles:
        return tiles, None
    n = processor.image_seq_length
    ids, labels, index = [processor.image_token_id] * n, [IGNORE_INDEX] * n, [-1] * n
    return [blank_tile(processor.image_processor)], Segment(
        ids, list(range(n)), labels, index, [group] * n, group
    )


@dataclass(frozen=True)
class BatchKeys:
    """The batch keys that a segment's ``labels``, ``index`` and ``weights`` fill, and where padding sits:
    at position 0 (preference batches), or (``padding_block``) in a block of its own, its positions from 0
    after the row's segments, which a blank tile's tokens open (SFT batches)."""

    labels: str
    index: str
    weights: str | None = None
    padding_block: bool = False


PREFERENCE_BATCH = BatchKeys("shift_labels", "logp_index")
SFT_BATCH = BatchKeys("labels", "sample_ids", "loss_weights", padding_block=True)


def pack(lengths: list[int], max_tokens: int | None) -> list[list[int]]:
    """Group item indices into rows of at most ``max_tokens`` tokens, in order (next-fit).

    An item longer than ``max_tokens`` gets a row of its own. ``None`` = one item per row.
    """
    if max_tokens is None:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if rows and used + n <= max_tokens:
            rows[-1].append(i)
            used += n
        else:
            rows.append([i])
            used = n
    return rows


def assemble(
    rows: list[list[Segment]],
    pad_id: int,
    layout: str,
    *,
    blank: Segment | None = None,
    keys: BatchKeys = PREFERENCE_BATCH,
) -> dict:
    """Stack rows of segments into the batch tensors of :mod:`mpo.attention` (right padding), under
    ``keys``; ``blank`` (:func:`tiles_or_blank`), when given, follows row 0's segments."""
    ends = [sum(len(s) for s in row) for row in rows]
    length = max(ends[0] + (0 if blank is None else len(blank)), *ends)
    shape = (len(rows), length)
    out = {
        "input_ids": torch.full(shape, pad_id, dtype=torch.long),
        "position_ids": torch.zeros(shape, dtype=torch.long),
        keys.labels: torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        keys.index: torch.full(shape, -1, dtype=torch.long),
        "attention_mask": torch.zeros(shape, dtype=torch.long),
        "attn_group": torch.full(shape, -1, dtype=torch.long),
        "attn_prefix": torch.full(shape, -1, dtype=torch.long),
    }
    if keys.weights:
        out[keys.weights] = torch.zeros(shape, dtype=torch.float32)
    for i, row in enumerate(rows):
        start = 0
        for seg in row + ([blank] if blank is not None and i == 0 else []):
            end = start + len(seg)
            out["input_ids"][i, start:end] = torch.tensor(seg.ids)
            out["position_ids"][i, start:end] = torch.tensor(seg.positions)
            out[keys.labels][i, start:end] = torch.tensor(seg.labels)
            out[keys.index][i, start:end] = torch.tensor(seg.index)
            out["attn_group"][i, start:end] = torch.tensor(seg.groups)
            out["attn_prefix"][i, start:end] = seg.prefix_group
            out["attention_mask"][i, start:end] = 1
            if keys.weights and seg.weights is not None:
                out[keys.weights][i, start:end] = torch.tensor(seg.weights)
            start = end
        if keys.padding_block:
            out["position_ids"][i, ends[i] :] = torch.arange(length - ends[i])
    out["layout"] = layout
    return out
