"""MMPR loading: every input shape, repeat_time, tile budget, and the bad-row policy (file:line messages)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MIXED_ROWS, write_mmpr

from mpo.data.collator import PreferenceCollator
from mpo.data.mmpr import load_mmpr
from mpo.errors import DataError


def test_every_input_shape_is_loaded_and_collated(processor, mixed_meta):
    data, bad = load_mmpr(mixed_meta, processor)
    assert len(data) == len(MIXED_ROWS) and not bad.skipped
    single, multi, text, video = (data[i] for i in range(4))
    assert single["question"].startswith("<image>\n")  # placeholder added
    assert multi["question"].count("<image>") == 2 and multi["max_dynamic_patch"] == 3  # 6 tiles split over 2
    assert text["image_paths"] == [] and "<image>" not in text["question"]
    assert video["is_video"] and video["question"].startswith(
        "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\n"
    )
    assert video["max_dynamic_patch"] == 1

    batch = PreferenceCollator(processor, prefix_sharing=False, vision_once=False)(
        [data[i] for i in range(4)]
    )
    ids, labels, index = batch["input_ids"], batch["shift_labels"], batch["logp_index"]
    assert ids.shape[0] == 8  # 4 chosen rows then 4 rejected rows
    n_img_tokens = int((ids == processor.image_token_id).sum())
    assert n_img_tokens == batch["pixel_values"].shape[0] * processor.image_seq_length
    # single 64x64 -> 1 tile; green 1 + wide 128x64 (2 tiles + thumbnail) = 4; 3 video frames: 8 tiles, twice
    assert batch["pixel_values"].shape[0] == 2 * (1 + 4 + 3)
    tok = processor.tokenizer
    for pair in range(4):
        for row, kind, score in ((pair, "chosen", 2 * pair), (pair + 4, "rejected", 2 * pair + 1)):
            scored = index[row] == score
            assert int((index[row] >= 0).sum()) == int(scored.sum())  # a row scores one sequence only
            assert tok.decode(labels[row][scored]) == MIXED_ROWS[pair][kind] + "<|im_end|>"
        # the prompt is identical for the chosen and the rejected row
        n = int((index[pair] >= 0).int().argmax()) + 1
        assert torch.equal(ids[pair, :n], ids[pair + 4, :n])


def test_text_only_batch_still_feeds_one_unseen_tile(processor, tmp_path):
    meta = write_mmpr(tmp_path, [MIXED_ROWS[2]])
    data, _ = load_mmpr(meta, processor)
    for shared in (False, True):
        batch = PreferenceCollator(processor, prefix_sharing=shared)([data[0]])
        assert batch["pixel_values"].shape[0] == 1
        is_img = batch["input_ids"] == processor.image_token_id
        assert int(is_img.sum()) == processor.image_seq_length
        assert not (is_img & (batch["logp_index"] >= 0)).any()  # never scored
        first_img = int(is_img[0].int().argmax())
        assert (batch["logp_index"][0, first_img:] < 0).all()  # after every scored token: never seen by one
        assert (
            batch["attn_group"][0, first_img] not in batch["attn_group"][:, :first_img]
        )  # a group of its own


@pytest.mark.parametrize("repeat_time, expected", [(0.5, 3), (2.0, 12), (1.5, 9)])
def test_repeat_time(processor, tmp_path, repeat_time, expected):
    meta = write_mmpr(tmp_path, MIXED_ROWS, repeat_time=repeat_time)
    data, _ = load_mmpr(meta, processor, seed=3)
    again, _ = load_mmpr(meta, processor, seed=3)
    assert len(data) == expected
    assert data["source"] == again["source"]  # seeded
    assert set(data["source"]) <= {f"{meta.parent / 'toy.jsonl'}:{i + 1}" for i in range(len(MIXED_ROWS))}


def _bad_cases(tmp_path):
    good = {"image": "red.png", "question": "q?", "chosen": "a", "rejected": "b"}
    (tmp_path / "img").mkdir(parents=True)
    (tmp_path / "img" / "corrupt.png").write_bytes(b"this is not a png")
    return {
        "malformed JSON": "{not json",
        "missing field": json.dumps({k: v for k, v in good.items() if k != "chosen"}),
        "missing image": json.dumps({**good, "image": "nowhere.png"}),
        "corrupt image": json.dumps({**good, "image": "corrupt.png"}),
        "chosen == rejected": json.dumps({**good, "rejected": "a"}),
        "too long": json.dumps({**good, "chosen": "word " * 400}),
        "image token in the question": json.dumps({**good, "question": "what is <IMG_CONTEXT> here?"}),
    }


def _write_with_bad_row(tmp_path, bad_line: str):
    meta = write_mmpr(tmp_path, [{"image": "red.png", "question": "q?", "chosen": "a", "rejected": "b"}] * 2)
    annotation = tmp_path / "toy.jsonl"
    lines = annotation.read_text().splitlines()
    annotation.write_text("\n".join([lines[0], bad_line, lines[1]]) + "\n")
    return meta, annotation


@pytest.mark.parametrize(
    "case",
    [
        "malformed JSON",
        "missing field",
        "missing image",
        "corrupt image",
        "chosen == rejected",
        "too long",
        "image token in the question",
    ],
)
def test_bad_row_fails_with_file_and_line(processor, tmp_path, case):
    meta, annotation = _write_with_bad_row(tmp_path, _bad_cases(tmp_path)[case])
    with pytest.raises(DataError) as err:
        load_mmpr(meta, processor, max_length=300)
    assert str(err.value).startswith(f"{annotation}:2: ")
    assert case.split()[0] in str(err.value)


def test_skip_reports_every_bad_row(processor, tmp_path):
    cases = _bad_cases(tmp_path)
    meta = write_mmpr(tmp_path, [{"image": "red.png", "question": "q?", "chosen": "a", "rejected": "b"}])
    annotation = tmp_path / "toy.jsonl"
    annotation.write_text(annotation.read_text() + "\n".join(cases.values()) + "\n")
    report = tmp_path / "skipped.json"
    data, bad = load_mmpr(meta, processor, max_length=300, on_bad_row="skip", report_path=report)
    assert len(data) == 1
    written = json.loads(report.read_text())
    assert written["skipped"] == len(cases) == len(bad.skipped)
    assert [row["line"] for row in written["rows"]] == list(range(2, 2 + len(cases)))
    for row, case in zip(written["rows"], cases, strict=True):
        assert case.split()[0] in row["reason"], (case, row)
