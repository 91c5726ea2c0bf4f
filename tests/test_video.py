"""Video-file rows (``"video": "clip.mp4"``): frames sampled as InternVL samples them, in MPO, SFT,
build-pairs and eval. The expected frames are computed here from InternVL's rule (numpy segment
cuts), and read back from the decoded pixels (each test frame's colour encodes its index)."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import torch
from conftest import tiny_mpo, write_mmpr
from video_files import frame_number, write_video

from mpo.data.collator import PreferenceCollator
from mpo.data.images import load_visuals
from mpo.data.mmpr import load_mmpr
from mpo.data.sft_collator import SFTCollator
from mpo.data.sft_data import load_sft
from mpo.errors import DataError


def internvl_segments(n: int, length: int) -> list[tuple[int, int]]:
    """InternVL's segments: cuts at np.linspace(0, V, k + 1).astype(int), segment j = [cut_j, cut_{j+1} - 1]."""
    k = min(n, length)
    cuts = np.linspace(0, length, k + 1).astype(int)
    return [(int(cuts[j]), int(cuts[j + 1]) - 1) for j in range(k)]


def internvl_middle(n: int, length: int) -> list[int]:
    chosen = [(a + b) // 2 for a, b in internvl_segments(n, length)]
    return chosen + [chosen[-1]] * (n - len(chosen))  # padded with the last frame


def _video_meta(root, rows, *, frames=(6, 6), name="toy"):
    meta = write_mmpr(root, rows, name=name)
    spec = json.loads(meta.read_text())
    spec[name].update(min_num_frame=frames[0], max_num_frame=frames[1])
    meta.write_text(json.dumps(spec))
    return meta


@pytest.mark.parametrize("length", [20, 4])  # more frames than shown; fewer (the last one repeats)
def test_mpo_video_file_row_shows_the_middle_frame_of_each_segment(processor, tmp_path, length):
    write_video(tmp_path / "d" / "img" / "clip.mp4", length)
    row = {
        "video": "clip.mp4",
        "question": "<video>\nWhat happens?",
        "chosen": "a cat runs",
        "rejected": "nothing",
    }
    data, _ = load_mmpr(_video_meta(tmp_path / "d", [row]), processor)
    record = data[0]
    expected = internvl_middle(6, length)
    assert record["video_frames"] == expected
    assert record["question"] == "".join(f"Frame{i}: <image>\n" for i in range(1, 7)) + "What happens?"
    assert record["max_dynamic_patch"] == 1 and record["is_video"]
    shown = load_visuals(record["image_paths"], record["video_frames"])
    assert [frame_number(img) for img in shown] == expected
    # one tile per frame, every frame's tokens in the prompt
    batch = PreferenceCollator(processor, prefix_sharing=False, vision_once=True)([record])
    assert batch["pixel_values"].shape[0] == 6
    assert int((batch["input_ids"][0] == processor.image_token_id).sum()) == 6 * processor.image_seq_length


def test_frame_count_is_drawn_per_video_from_its_path(processor, tmp_path):
    rows = [{"video": f"clip{k}.mp4", "question": "q?", "chosen": "a", "rejected": "b"} for k in range(6)]
    for k in range(6):
        write_video(tmp_path / "d" / "img" / f"clip{k}.mp4", 20)
    data, _ = load_mmpr(_video_meta(tmp_path / "d", rows, frames=(2, 9)), processor)
    for k in range(6):
        h = int.from_bytes(hashlib.sha256(f"clip{k}.mp4".encode()).digest()[:8], "big")
        n = 2 + h % 8
        assert data[k]["video_frames"] == internvl_middle(n, 20)
        assert data[k]["question"].count("<image>") == n


def test_sft_training_draws_random_frames_within_segments_and_eval_uses_the_middle(processor, tmp_path):
    write_video(tmp_path / "d" / "img" / "clip.mp4", 24)
    row = {
        "video": "clip.mp4",
        "conversations": [
            {"from": "human", "value": "<video>\nDescribe."},
            {"from": "gpt", "value": "Colours change."},
        ],
    }
    records, _ = load_sft(_video_meta(tmp_path / "d", [row], name="sft"), processor)
    record = records[0]
    segments = internvl_segments(6, 24)
    train = SFTCollator(processor, train=True, seed=3)
    draws = [train.frames(record) for _ in range(20)]
    for drawn in draws:  # InternVL: random.choice(range(first, last)) in each segment
        assert all(a <= f < b for f, (a, b) in zip(drawn, segments, strict=True))
    assert len({tuple(d) for d in draws}) > 1
    shown = [frame_number(img) for img in SFTCollator(processor, train=True, seed=3)._images(record)]
    assert shown == SFTCollator(processor, train=True, seed=3).frames(record)  # the drawn frames are decoded
    evaluation = SFTCollator(processor, train=False)
    assert evaluation.frames(record) == internvl_middle(6, 24)
    batch = evaluation([record])
    assert batch["pixel_values"].shape[0] == 6
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.count("Frame") == 6 and "<video>" not in text


def test_rand_falls_back_to_distinct_sorted_frames_when_a_segment_is_one_frame():
    from mpo.data.video import frame_indices

    # 7 frames in 6 segments: cuts 0,1,2,3,4,5,7 -> one-frame segments, InternVL's fallback
    assert any(a == b for a, b in internvl_segments(6, 7))
    for seed in range(10):
        chosen = frame_indices(6, 7, "rand", random.Random(seed))
        assert chosen == sorted(chosen) and len(set(chosen)) == 6 and all(0 <= f < 7 for f in chosen)


def test_frame_list_rows_still_work_and_broken_videos_name_the_row(processor, tmp_path):
    (tmp_path / "d" / "img").mkdir(parents=True)
    (tmp_path / "d" / "img" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    rows = [
        {"video": ["red.png", "green.png"], "question": "q?", "chosen": "a", "rejected": "b"},
        {"video": "broken.mp4", "question": "q?", "chosen": "a", "rejected": "b"},
    ]
    meta = write_mmpr(tmp_path / "d", rows)
    with pytest.raises(DataError) as err:
        load_mmpr(meta, processor)
    assert str(err.value).startswith(f"{tmp_path / 'd' / 'toy.jsonl'}:2: video: corrupt video")
    data, bad = load_mmpr(meta, processor, on_bad_row="skip")
    assert (
        len(data) == 1
        and data[0]["video_frames"] == []
        and data[0]["question"].startswith("Frame1: <image>\n")
    )


def test_video_file_row_trains_a_few_mpo_steps(tiny_model, tmp_path, capsys):
    from mpo.cli.train import main as train_main

    write_video(tmp_path / "d" / "img" / "clip.mp4", 16)
    rows = [
        {"video": "clip.mp4", "question": "What colour?", "chosen": "red then more red", "rejected": "blue"},
        {"image": "red.png", "question": "Colour?", "chosen": "red", "rejected": "green"},
    ]
    meta = _video_meta(tmp_path / "d", rows, frames=(3, 3))
    out = tmp_path / "out"
    argv = tiny_mpo(
        str(tiny_model),
        str(meta),
        str(out),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "1",
        "--ref_cache_dir",
        str(tmp_path / "cache"),
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
    )
    assert train_main(argv) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == 3 and len(losses) == 3 and all(np.isfinite(losses))


class RecordingBackend:
    """Gives one fixed answer to everything and keeps the requests (to check what was shown)."""

    name = "recording"

    def __init__(self, answer: str = "B") -> None:
        self.requests, self.answer = [], answer

    def generate(self, requests, params):
        self.requests += requests
        return [[self.answer] * params.n for _ in requests]


def test_video_file_row_builds_pairs_and_evaluates(tmp_path):
    from data_builders.build_pairs import run
    from eval.config import EvalConfig
    from eval.run import evaluate
    from mpo.cli.build_pairs import build_parser

    write_video(tmp_path / "d" / "img" / "clip.mp4", 12)
    row = {"id": "v1", "video": "clip.mp4", "question": "<video>\nWhich letter? A. x B. y", "answer": "B"}
    meta = _video_meta(tmp_path / "d", [row], frames=(4, 4), name="qa")
    backend = RecordingBackend("The frames turn from black to a brighter red, so the answer is B.")
    out = tmp_path / "pairs"
    args = build_parser().parse_args(["dropout-ntp", "--model", "m", "--data", str(meta), "--out", str(out)])
    report = run(args, backend=backend)
    assert report["questions"]["by_status"]["bad_row"] == 0
    shown = backend.requests[0]
    assert shown.video and shown.frames == internvl_middle(4, 12)
    assert [frame_number(img) for img in shown.pictures()] == internvl_middle(4, 12)
    # the built pair keeps the video file, with the subset's frame counts: training shows the same frames
    built = json.loads((out / "meta.json").read_text())
    (subset,) = built.values()
    assert (subset["min_num_frame"], subset["max_num_frame"]) == (4, 4)
    line = json.loads((out / subset["annotation"]).read_text().splitlines()[0])
    assert line["video"] == "clip.mp4"

    backend = RecordingBackend()
    results = evaluate(EvalConfig("m", [str(meta)], tmp_path / "eval", backend=backend))
    assert results["overall"]["total"] == 1
    (req,) = backend.requests
    assert req.frames == internvl_middle(4, 12) and req.video
    assert req.question.count("<image>") == 4 and req.question.startswith("Frame1: <image>\n")
    assert torch.tensor([frame_number(img) for img in req.pictures()]).tolist() == internvl_middle(4, 12)
