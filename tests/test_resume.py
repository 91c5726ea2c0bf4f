"""--resume_from_checkpoint that explains itself: True picks the newest complete checkpoint, a wrong
path or a checkpoint cut short by a kill is one line naming what is missing, and after a kill during
a save the run resumes from the previous complete checkpoint with δ (the BCO reward shift) restored."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MIXED_ROWS, REPO, tiny_mpo, write_mmpr

from mpo.cli import main as cli_main
from mpo.cli.train import main as train_main

STEPS = 3


def _argv(tiny_model, meta, out, cache, *extra) -> list[str]:
    return tiny_mpo(
        str(tiny_model),
        str(meta),
        str(out),
        "--ref_cache_dir",
        str(cache),
        "--max_steps",
        str(STEPS),
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "1e-3",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        *extra,
    )


def _delta(state_file: Path) -> dict:
    return json.loads(state_file.read_text())["stateful_callbacks"]["MPORewardShift"]["attributes"]


@pytest.fixture(scope="module")
def full_run(tiny_model, tmp_path_factory):
    """An uninterrupted run that saves a checkpoint after every step."""
    base = tmp_path_factory.mktemp("resume")
    meta = write_mmpr(base / "data", MIXED_ROWS)
    out = base / "full"
    assert train_main(_argv(tiny_model, meta, out, base / "cache")) == 0
    return meta, out, base / "cache"


def test_wrong_or_missing_checkpoints_are_one_line(tiny_model, full_run, tmp_path, capsys):
    meta, full, cache = full_run
    cases = [
        ("True", tmp_path / "empty", "resume_from_checkpoint=True: no checkpoint-N folder in output_dir"),
        (
            str(tmp_path / "nope"),
            tmp_path / "o",
            f"resume_from_checkpoint: {tmp_path / 'nope'}: no such checkpoint folder",
        ),
    ]
    cut = tmp_path / "cut"
    for name in ("no_weights", "empty_state", "half_state"):
        (cut / name).mkdir(parents=True)
        for f in (full / "checkpoint-1").iterdir():
            if f.is_file():
                (cut / name / f.name).write_bytes(f.read_bytes())
    (cut / "no_weights" / "model.safetensors").unlink()
    (cut / "empty_state" / "trainer_state.json").write_bytes(b"")
    state = (cut / "half_state" / "trainer_state.json").read_bytes()
    (cut / "half_state" / "trainer_state.json").write_bytes(state[: len(state) // 2])
    cases += [
        (str(cut / "no_weights"), tmp_path / "o", "no weights file (none of model.safetensors"),
        (str(cut / "empty_state"), tmp_path / "o", "trainer_state.json is empty: the save was cut short"),
        (str(cut / "half_state"), tmp_path / "o", "trainer_state.json is not valid JSON"),
    ]
    for value, out, message in cases:
        argv = ["train", *_argv(tiny_model, meta, out, cache, "--resume_from_checkpoint", value)]
        assert cli_main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("mpo train: error: ") and message in err, err


@pytest.mark.parametrize("damage", ["weights", "state"])
def test_true_resumes_from_the_last_complete_checkpoint_with_delta(
    tiny_model, full_run, tmp_path, damage, caplog
):
    meta, full, cache = full_run
    part = tmp_path / "part"
    part.mkdir()
    for k in (
        1,
        2,
        STEPS,
    ):  # the run's checkpoints; the last one is cut short as a kill during its save would
        (part / f"checkpoint-{k}").mkdir()
        for f in (full / f"checkpoint-{k}").iterdir():
            if f.is_file():
                (part / f"checkpoint-{k}" / f.name).write_bytes(f.read_bytes())
    last = part / f"checkpoint-{STEPS}"
    if damage == "weights":
        (last / "model.safetensors").unlink()
    else:
        (last / "trainer_state.json").write_bytes(b"")
    # mark checkpoint-2's δ: the sum of rewards folded in is 1000 more than the run's. Step 3's rewards do not
    # depend on δ (it only enters the loss), so a run resumed from it ends 1000 above the full run's sum,
    # and a run that started over (or lost δ) does not.
    state_file = part / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    shift = state["stateful_callbacks"]["MPORewardShift"]["attributes"]
    shift["total"] += 1000.0
    shift["value"] = shift["total"] / shift["count"]
    state_file.write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING, logger="mpo.checkpointing"):
        assert train_main(_argv(tiny_model, meta, part, cache, "--resume_from_checkpoint", "True")) == 0
    passed_over = "no weights file" if damage == "weights" else "trainer_state.json is empty"
    assert f"passing over {last} ({passed_over}" in caplog.text
    assert f"resuming from {part / 'checkpoint-2'}" in caplog.text
    final = json.loads((part / "trainer_state.json").read_text())
    assert final["global_step"] == STEPS
    expected = _delta(full / f"checkpoint-{STEPS}" / "trainer_state.json")
    resumed = _delta(part / "trainer_state.json")
    assert resumed["count"] == expected["count"]
    assert resumed["total"] == pytest.approx(expected["total"] + 1000.0, rel=1e-6)


@pytest.mark.slow
def test_sigkill_during_training_then_resume_true_matches_the_uninterrupted_run(
    tiny_model, full_run, tmp_path, caplog
):
    """A real SIGKILL of the training process as soon as checkpoint-2 appears (the save is under way);
    ``True`` then resumes from whichever checkpoint is complete and ends where the full run ended."""
    meta, full, cache = full_run
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpo.cli", "train", *_argv(tiny_model, meta, out, cache)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint-2").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "trainer_state.json").exists()  # it never finished
    with caplog.at_level(logging.WARNING, logger="mpo.checkpointing"):
        assert train_main(_argv(tiny_model, meta, out, cache, "--resume_from_checkpoint", "True")) == 0
    assert f"resuming from {out / 'checkpoint-'}" in caplog.text  # not started over
    final = json.loads((out / "trainer_state.json").read_text())
    assert final["global_step"] == STEPS
    expected = _delta(full / "trainer_state.json")
    assert _delta(out / "trainer_state.json") == pytest.approx(expected, rel=1e-5)
