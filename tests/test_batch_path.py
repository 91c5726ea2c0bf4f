"""One batch path (issue 29): both record types typed once with one image key, the reference cache's keys
read from the preference record's type, and one blank-tile rule for the SFT and the preference batches."""

from __future__ import annotations

from typing import get_type_hints

import torch
from conftest import MIXED_ROWS, write_mmpr

from mpo import ref_cache
from mpo.data.collator import PreferenceCollator
from mpo.data.layout import IGNORE_INDEX
from mpo.data.mmpr import load_mmpr
from mpo.data.records import PreferenceRecord, SFTRecord
from mpo.data.sft_collator import SFTCollator
from mpo.data.sft_data import load_sft

SFT_ROWS = [
    {
        "image": "red.png",
        "conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "red"}],
    },
    {"conversations": [{"from": "human", "value": "What is 2 + 2?"}, {"from": "gpt", "value": "4"}]},
]


def _keys(record_type: type) -> tuple[set[str], set[str]]:
    return set(record_type.__required_keys__), set(get_type_hints(record_type))


def test_records_have_the_keys_of_their_type_and_one_image_key(processor, tmp_path):
    mpo_data, _ = load_mmpr(write_mmpr(tmp_path / "mmpr", MIXED_ROWS), processor)
    sft_meta = write_mmpr(tmp_path / "sft", SFT_ROWS, name="sft")
    sft_records, _ = load_sft(sft_meta, processor)
    for records, record_type in ((list(mpo_data), PreferenceRecord), (sft_records, SFTRecord)):
        required, allowed = _keys(record_type)
        for record in records:
            assert required <= set(record) <= allowed
            assert "images" not in record and isinstance(record["image_paths"], list)
    assert ref_cache.RECORD_KEYS == ("image_paths", "question", "chosen", "rejected", "max_dynamic_patch")


def _blank_run(batch: dict, n: int, image_token: int) -> slice:
    """Where row 0's blank-tile tokens are: the n tokens of the one image run of row 0."""
    ids = batch["input_ids"][0]
    at = (ids == image_token).nonzero()[:, 0]
    assert len(at) == n and int(at[-1] - at[0]) == n - 1
    return slice(int(at[0]), int(at[0]) + n)


def test_text_only_sft_and_preference_batches_get_the_same_blank_tile(processor, tmp_path):
    text_row = [r for r in MIXED_ROWS if "image" not in r and "video" not in r]
    mpo_data, _ = load_mmpr(write_mmpr(tmp_path / "mmpr", text_row), processor)
    sft_records, _ = load_sft(write_mmpr(tmp_path / "sft", SFT_ROWS[1:], name="sft"), processor)
    n, image_token = processor.image_seq_length, processor.image_token_id
    for batch, index in (
        (PreferenceCollator(processor)([mpo_data[0]]), "logp_index"),
        (
            PreferenceCollator(processor, prefix_sharing=True, max_packed_tokens=512)([mpo_data[0]]),
            "logp_index",
        ),
        (SFTCollator(processor, train=False)(sft_records * 2), "sample_ids"),
    ):
        blank = _blank_run(batch, n, image_token)
        assert torch.equal(batch["pixel_values"], torch.zeros_like(batch["pixel_values"][:1]))
        group = batch["attn_group"][0, blank]
        assert bool((group == group[0]).all()) and bool((batch["attn_prefix"][0, blank] == group[0]).all())
        real = batch["attn_group"][batch["attn_group"] >= 0]
        assert int((real == group[0]).sum()) == n  # a group of its own: no real token sees it
        assert torch.equal(batch["position_ids"][0, blank], torch.arange(n))
        assert bool((batch["attention_mask"][0, blank] == 1).all())
        assert bool((batch[index][0, blank] == -1).all())
        labels = batch["shift_labels" if index == "logp_index" else "labels"]
        assert bool((labels[0, blank] == IGNORE_INDEX).all())
        assert blank.start == int(batch["attention_mask"][0, : blank.start].sum())  # after row 0's tokens
    # SFT padding is a block of its own, positions from 0 after a row's samples; the blank tile opens row 0's
    length, ends = batch["input_ids"].shape[1], [blank.start, int(batch["attention_mask"][1].sum())]
    for row, end in enumerate(ends):
        assert torch.equal(batch["position_ids"][row, end:], torch.arange(length - end))
