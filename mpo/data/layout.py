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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def assemble(rows: list[list[Segment]], pad_id: int, layout: str) -> dict:
    """Stack rows of segments into the batch tensors of :mod:`mpo.attention` (right padding)."""
    length = max(sum(len(s) for s in row) for row in rows)
    shape = (len(rows), length)
    out = {
        "input_ids": torch.full(shape, pad_id, dtype=torch.long),
        "position_ids": torch.zeros(shape, dtype=torch.long),
        "shift_labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        "logp_index": torch.full(shape, -1, dtype=torch.long),
        "attention_mask": torch.zeros(shape, dtype=torch.long),
        "attn_group": torch.full(shape, -1, dtype=torch.long),
        "attn_prefix": torch.full(shape, -1, dtype=torch.long),
    }
    for i, row in enumerate(rows):
        start = 0
        for seg in row:
            end = start + len(seg)
            out["input_ids"][i, start:end] = torch.tensor(seg.ids)
            out["position_ids"][i, start:end] = torch.tensor(seg.positions)
            out["shift_labels"][i, start:end] = torch.tensor(seg.labels)
            out["logp_index"][i, start:end] = torch.tensor(seg.index)
            out["attn_group"][i, start:end] = torch.tensor(seg.groups)
            out["attn_prefix"][i, start:end] = seg.prefix_group
            out["attention_mask"][i, start:end] = 1
            start = end
    out["layout"] = layout
    return out
