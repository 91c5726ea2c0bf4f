"""Skips that really skip: images decoded completely when checked, rows that fail later (collator,
reference pass) skipped and counted under on_bad_row: skip, a console summary per reason, and the
same over-long policy in SFT and MPO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_mmpr
from PIL import Image

from mpo.data.collator import DROPPED_SOURCES, SKIPPED_ROWS, PreferenceCollator, SkipBadRecords, take_skips
from mpo.data.meta import BadRows
from mpo.data.mmpr import load_mmpr
from mpo.data.sft_data import load_sft
from mpo.errors import DataError, UserError
from mpo.models.loading import load_model

ROWS = [
    {"image": f"{c}.png", "question": "Colour?", "chosen": c, "rejected": "grey"}
    for c in ("red", "green", "blue")
]


def truncate_png(path: Path) -> None:
    """Keep the signature and IHDR (the header PIL reads, and ``verify`` may pass) but cut the pixel data."""
    Image.new("RGB", (64, 64), (10, 200, 30)).save(path)  # hard to compress: make the data span bytes
    data = path.read_bytes()
    idat = data.index(b"IDAT")
    path.write_bytes(data[: idat + 20])


def test_truncated_png_is_caught_when_the_data_is_loaded(processor, tmp_path):
    meta = write_mmpr(tmp_path, ROWS)
    truncate_png(tmp_path / "img" / "green.png")
    with Image.open(tmp_path / "img" / "green.png") as img:
        assert img.size == (64, 64)  # the header is intact: a header-only check passes it
    with pytest.raises(DataError) as err:
        load_mmpr(meta, processor)
    assert str(err.value).startswith(f"{tmp_path / 'toy.jsonl'}:2: image: corrupt image")
    data, bad = load_mmpr(meta, processor, on_bad_row="skip")
    assert len(data) == 2 and [(r["line"], r["field"]) for r in bad.skipped] == [(2, "image")]


def test_a_file_that_breaks_after_loading_is_skipped_in_batches(processor, tmp_path):
    meta = write_mmpr(tmp_path, ROWS)
    data, bad = load_mmpr(meta, processor, on_bad_row="skip")
    records = [data[i] for i in range(3)]
    truncate_png(tmp_path / "img" / "green.png")
    inner = PreferenceCollator(processor, prefix_sharing=False, vision_once=True)
    with pytest.raises(DataError, match="toy.jsonl:2: image: corrupt or missing image"):
        SkipBadRecords(inner, BadRows("fail"))(records)
    collate = SkipBadRecords(inner, bad)
    batch = collate(records)
    assert int(batch["num_pairs"]) == 2  # red and blue
    expected = inner([records[0], records[2]])
    assert batch["input_ids"].equal(expected["input_ids"]) and batch["pixel_values"].equal(
        expected["pixel_values"]
    )
    # the skip travels in the batch (from a DataLoader worker too) and is counted where it is taken
    toy = str(tmp_path / "toy.jsonl")
    assert batch[DROPPED_SOURCES] == [f"{toy}:2"] and not bad.skipped
    take_skips(batch, bad)
    assert [(r["file"], r["line"]) for r in bad.skipped] == [(toy, 2)]
    # counted once; a batch of only bad records runs the last good batch again (the step still runs)
    again = collate([records[1]])
    assert again["input_ids"].equal(expected["input_ids"]) and again[DROPPED_SOURCES] == [f"{toy}:2"]
    assert again[SKIPPED_ROWS] == []  # known bad: dropped without decoding it again
    take_skips({**batch, DROPPED_SOURCES: []}, bad)  # the same row from another worker: counted once
    assert len(bad.skipped) == 1
    with pytest.raises(UserError, match="first batch"):
        SkipBadRecords(inner, BadRows("skip"))([records[1]])


@pytest.mark.parametrize("workers", [0, 2])
def test_mpo_reference_pass_skips_a_record_that_fails_to_decode(tiny_model, processor, tmp_path, workers):
    """Decoded in the training process or in DataLoader workers: the same records skipped, counted once."""
    from mpo.trainer import MPOConfig, MPOTrainer

    meta = write_mmpr(tmp_path / "d", ROWS * 2)
    data, bad = load_mmpr(meta, processor, on_bad_row="skip")
    truncate_png(tmp_path / "d" / "img" / "blue.png")  # rows 3 and 6
    args = MPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=2,
        report_to=[],
        save_strategy="no",
        ref_cache_dir=str(tmp_path / "cache"),
        logging_steps=1,
        dataloader_num_workers=workers,
    )
    trainer = MPOTrainer(
        load_model(tiny_model), args=args, train_dataset=data, processing_class=processor, bad_rows=bad
    )
    assert sorted(trainer.train_dataset["source"]) == sorted(
        s for s in data["source"] if "blue" not in s and not s.endswith((":3", ":6"))
    )
    assert sorted(r["line"] for r in bad.skipped) == [3, 6]
    trainer.train()
    assert trainer.state.global_step == 2


def _long_mpo_row() -> dict:
    return {"image": "red.png", "question": "Colour?", "chosen": "red " * 300, "rejected": "grey"}


def _long_sft_row() -> dict:
    return {
        "image": "red.png",
        "conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "red " * 300}],
    }


def test_over_long_samples_follow_on_bad_row_in_sft_as_in_mpo(processor, tmp_path):
    mpo_meta = write_mmpr(tmp_path / "mpo", [ROWS[0], _long_mpo_row()])
    sft_rows = [
        {
            "image": "red.png",
            "conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "red"}],
        },
        _long_sft_row(),
    ]
    sft_meta = write_mmpr(tmp_path / "sft", sft_rows, name="sft")
    for meta, load, name in ((mpo_meta, load_mmpr, "toy"), (sft_meta, load_sft, "sft")):
        with pytest.raises(DataError) as err:
            load(meta, processor, max_length=200)
        assert str(err.value).startswith(f"{meta.parent / name}.jsonl:2: too long: ")
        assert "> max_length 200" in str(err.value)
        kept, _ = load(meta, processor, max_length=200, on_bad_row="skip")
        assert len(kept) == 1


def _cli_data(tmp_path: Path) -> tuple[Path, Path]:
    """MPO and SFT data with two missing images, one truncated image and one malformed line."""
    rows = [*ROWS, {**ROWS[0], "image": "gone1.png"}, {**ROWS[0], "image": "gone2.png"}]
    mpo_meta = write_mmpr(tmp_path / "mpo", rows)
    sft_rows = [
        {
            "image": r["image"],
            "conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": r["chosen"]}],
        }
        for r in rows
    ]
    sft_meta = write_mmpr(tmp_path / "sft", sft_rows, name="sft")
    for root in (tmp_path / "mpo", tmp_path / "sft"):
        for gone in ("gone1.png", "gone2.png"):
            (root / "img" / gone).unlink()
        truncate_png(root / "img" / "green.png")
        ann = next(root.glob("*.jsonl"))
        ann.write_text(ann.read_text() + "{not json\n")
    return mpo_meta, sft_meta


def _summary(out: str, prog: str) -> list[str]:
    return [
        line
        for line in out.splitlines()
        if line.startswith(f"{prog}:") and "skipped" in line or line.startswith(f"{prog}:   ")
    ]


def test_every_skip_run_prints_one_line_per_reason(tiny_model, tmp_path, capsys):
    from mpo.cli.sft import main as sft_main
    from mpo.cli.train import main as train_main

    mpo_meta, sft_meta = _cli_data(tmp_path)
    common = [
        "--model_name_or_path",
        str(tiny_model),
        "--max_steps",
        "1",
        "--on_bad_row",
        "skip",
        "--per_device_train_batch_size",
        "1",
        "--report_to",
        "none",
    ]
    assert (
        train_main(
            [
                "--config",
                "recipes/tiny/mpo.yaml",
                *common,
                "--meta_path",
                str(mpo_meta),
                "--output_dir",
                str(tmp_path / "o1"),
                "--ref_cache_dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert (
        sft_main(
            [
                "--config",
                "recipes/tiny/sft_stage1.yaml",
                *common,
                "--meta_path",
                str(sft_meta),
                "--output_dir",
                str(tmp_path / "o2"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for prog, meta, report in (
        ("mpo train", mpo_meta, tmp_path / "o1" / "skipped_rows_train.json"),
        ("mpo sft", sft_meta, tmp_path / "o2" / "sft_data_report_train.json"),
    ):
        ann = next(meta.parent.glob("*.jsonl"))
        lines = _summary(out, prog)
        assert lines[0] == f"{prog}: skipped 4 bad rows (every row in {report})", out
        img = meta.parent / "img"
        expected = {  # one line per kind of problem, with its count and first row
            "2 x image: missing image": f"(first: {ann}:4: missing image {img / 'gone1.png'})",
            "1 x image: corrupt image": f"(first: {ann}:2: corrupt image {img / 'green.png'} (",
            "1 x malformed JSON": f"(first: {ann}:6: malformed JSON (",
        }
        assert len(lines) == 1 + len(expected), lines
        for kind, first in expected.items():
            assert any(line.startswith(f"{prog}:   {kind} {first}") for line in lines[1:]), (kind, lines)
    assert json.loads((tmp_path / "o1" / "skipped_rows_train.json").read_text())["skipped"] == 4


class _Echo:
    name = "echo"

    def generate(self, requests, params):
        return [["The colour is red, so the answer is red."] * params.n for _ in requests]


def test_build_pairs_reports_name_file_and_line_and_summarise_per_reason(tmp_path):
    from data_builders.build_pairs import run, summary
    from mpo.cli.build_pairs import build_parser

    rows = [
        {"id": f"q{k}", "image": r["image"], "question": "Colour?", "answer": r["chosen"]}
        for k, r in enumerate(ROWS)
    ]
    rows.append({"id": "q9", "image": "gone.png", "question": "Colour?", "answer": "red"})
    meta = write_mmpr(tmp_path / "d", rows, name="qa")
    (tmp_path / "d" / "img" / "gone.png").unlink()
    truncate_png(tmp_path / "d" / "img" / "green.png")
    args = build_parser().parse_args(
        ["dropout-ntp", "--model", "m", "--data", str(meta), "--out", str(tmp_path / "o")]
    )
    report = run(args, backend=_Echo())
    ann = tmp_path / "d" / "qa.jsonl"
    assert [(e["file"], e["line"]) for e in report["bad_rows"]["examples"]] == [(str(ann), 2), (str(ann), 4)]
    lines = report["bad_rows"]["summary"]
    assert lines[0] == "mpo build-pairs: skipped 2 bad rows"
    assert sorted(line.split(" (first")[0] for line in lines[1:]) == [
        "mpo build-pairs:   1 x image: corrupt image",
        "mpo build-pairs:   1 x image: missing image",
    ]
    assert f"{ann}:4: missing image" in " ".join(lines)
    markdown = (tmp_path / "o" / "report.md").read_text()
    assert "| key | file:line | reason |" in markdown and f"{ann}:4 |" in markdown
    assert summary(report, tmp_path / "o")  # the one-line run summary still renders


def test_sft_packed_rows_lose_only_the_sample_that_fails_to_decode(processor, tmp_path):
    from mpo.data.sft_collator import SFTCollator

    rows = [
        {
            "image": r["image"],
            "conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": r["chosen"]}],
        }
        for r in ROWS
    ]
    records, report = load_sft(write_mmpr(tmp_path, rows, name="sft"), processor, on_bad_row="skip")
    truncate_png(tmp_path / "img" / "green.png")
    inner = SFTCollator(processor, train=False)
    collate = SkipBadRecords(inner, report.bad_rows)
    batch = collate([[records[0], records[1]], [records[2]]])  # two packed rows
    expected = inner([[records[0]], [records[2]]])
    assert batch["sources"] == [records[0]["source"], records[2]["source"]]
    assert batch["input_ids"].equal(expected["input_ids"]) and batch["labels"].equal(expected["labels"])
    assert batch[DROPPED_SOURCES] == [records[1]["source"]]
    take_skips(batch, report.bad_rows)  # as the trainer does with every batch
    assert [r["line"] for r in report.bad_rows.skipped] == [2]
    assert [r["line"] for r in report.skipped_rows()] == [2]
