"""Cluster faults on the CPU (README, "Reliability"): a job preempted by a signal saves and exits 75, and
resumes exactly, on its own rank count or another (DeepSpeed's universal checkpoint), launched as two
machines on localhost; ranks agree on a signal; a killed rank stops the job, naming the rank, within the
collective timeout, and leaves no half-written checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import MIXED_ROWS, REPO, accelerate_launch, free_port, tiny_mpo, write_mmpr
from test_sft import SFT_ROWS, write_sft

from mpo.checkpointing import checkpoint_problem, checkpoints
from mpo.cluster import (
    PREEMPTED_EXIT_CODE,
    PREEMPTED_FILE,
    RUN_SHAPE_KEY,
    RunShape,
    plan_resume,
    split_global_batch,
)
from mpo.errors import UserError

pytestmark = pytest.mark.slow  # every test here starts processes
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "WANDB_MODE": "disabled",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(REPO),
    "PYTHONUNBUFFERED": "1",
}
STEPS = 8  # global batch 2 over 18 pairs: 9 steps an epoch
LOSS_LINE = re.compile(r"\{'loss': ")  # the Trainer's log line of a training step
# Losses after a resume on another rank count against the uninterrupted run: the sums may run in another
# order (one rank accumulating two micro-batches instead of two ranks reducing one each); measured equal.
REL_TOL = 1e-6


@pytest.fixture(scope="module")
def meta(tmp_path_factory) -> Path:
    return write_mmpr(tmp_path_factory.mktemp("faults") / "data", MIXED_ROWS * 3)


def _train(tiny_model, meta, out, *extra, save=("--save_steps", "2")) -> list[str]:
    return [
        "train",
        *tiny_mpo(
            tiny_model,
            meta,
            out,
            "--ref_cache_dir",
            str(Path(meta).parent / "ref_cache"),
            "--max_steps",
            str(STEPS),
            "--per_device_train_batch_size",
            "1",
            "--learning_rate",
            "1e-3",
            "--logging_steps",
            "1",
            *save,
            "--report_to",
            "none",
            *extra,
        ),
    ]


def _accelerate(nproc: int, *launch: str) -> list[str]:
    return accelerate_launch(nproc, *launch)


def _zero3(nproc: int) -> list[str]:
    return accelerate_launch(
        nproc, "--num_machines", "1", "--main_process_port", str(free_port()), zero="zero3"
    )


def _run(cmd: list[str], log: Path) -> str:
    proc = subprocess.run(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )
    log.write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def _state(out: Path) -> dict:
    return json.loads((out / "trainer_state.json").read_text())


def _losses(state: dict) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def _delta(state: dict) -> dict:
    return state["stateful_callbacks"]["MPORewardShift"]["attributes"]


def _workers(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the worker processes a launcher started (read from /proc)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
            if "=" in item
        )
        ranks[int(env["RANK"])] = pid
    return ranks


def _until_logged(proc: subprocess.Popen, count: int) -> list[str]:
    """Read ``proc``'s output until ``count`` training steps have been logged."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if len([x for x in lines if LOSS_LINE.search(x)]) >= count:
            return lines
    raise AssertionError("".join(lines)[-4000:])


def _assert_same_losses(resumed: dict, reference: dict, steps: range) -> None:
    """The steps a resumed run trained (its history also holds those of its checkpoint) against the
    uninterrupted run's."""
    assert set(steps) <= set(resumed), resumed
    for step in steps:
        assert resumed[step] == pytest.approx(reference[step], rel=REL_TOL), (step, resumed, reference)


def test_preempted_zero3_job_resumes_on_one_rank_then_on_two_machines(tiny_model, meta, tmp_path):
    """2 ranks (ZeRO-3) save at step 2; 1 rank resumes (2 accumulation steps keep the global batch) and is
    preempted by SIGTERM; two machines of one rank each (the multi-node config on localhost) resume that
    checkpoint and finish. Every step after step 2, and δ, as in the uninterrupted 2-rank run."""
    full = tmp_path / "full"
    _run([*_zero3(2), *_train(tiny_model, meta, full)], tmp_path / "full.log")
    reference = _state(full)
    assert _losses(reference).keys() == set(range(1, STEPS + 1))

    # 2 ranks -> 1 rank, preempted: SIGTERM to the worker (SLURM signals every process of a job step)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copytree(full / "checkpoint-2", one / "checkpoint-2")
    cmd = [*_zero3(1), *_train(tiny_model, meta, one, "--resume_from_checkpoint", "True")]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = _until_logged(proc, 1)  # step 3 done
    os.kill(_workers(proc)[0], signal.SIGTERM)
    output = "".join(lines) + proc.stdout.read()
    proc.wait(timeout=300)
    (tmp_path / "one.log").write_text(output)
    assert "1 per device x 2 accumulation keeps the global batch 2" in output, output[-4000:]
    assert "converted to DeepSpeed's universal checkpoint" in output
    assert "reference log-probs: reusing" in output  # the cache the 2 ranks built (or an earlier test's)
    record = json.loads((one / PREEMPTED_FILE).read_text())
    stopped = record["step"]
    assert 3 <= stopped <= STEPS - 2 and record["signal"] == "SIGTERM", record
    assert record["exit_code"] == PREEMPTED_EXIT_CODE
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in output  # the launcher's summary of its worker
    assert (
        f"mpo train: SIGTERM: stopped after step {stopped}, saved {one / f'checkpoint-{stopped}'}" in output
    )
    assert checkpoint_problem(one / f"checkpoint-{stopped}") is None
    assert _state(one / f"checkpoint-{stopped}")["global_step"] == stopped
    assert not (one / "trainer_state.json").exists()  # stopped, not finished
    _assert_same_losses(
        _losses(_state(one / f"checkpoint-{stopped}")), _losses(reference), range(3, stopped + 1)
    )

    # 1 rank -> 2 machines x 1 rank: the multi-node accelerate config as two "machines" on localhost
    port = free_port()
    machines = [
        subprocess.Popen(
            [
                *_accelerate(
                    2,
                    "--config_file",
                    "recipes/accelerate/multinode_zero3.yaml",
                    "--num_machines",
                    "2",
                    "--machine_rank",
                    str(rank),
                    "--main_process_ip",
                    "127.0.0.1",
                    "--main_process_port",
                    str(port),
                ),
                *_train(tiny_model, meta, one, "--resume_from_checkpoint", "True"),
            ],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [m.communicate(timeout=600)[0] for m in machines]
    (tmp_path / "two_machines.log").write_text("\n".join(logs))
    assert [m.returncode for m in machines] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert (
        "keeps the global batch" not in logs[0]
    )  # 2 ranks x 1 x 1 is the saved 1 x 1 x 2: nothing to change
    assert f"(global_step{stopped}, ZeRO shards of 1 ranks) converted to DeepSpeed's universal" in logs[0]
    assert not (one / PREEMPTED_FILE).exists()
    resumed = _state(one)
    assert resumed["global_step"] == STEPS
    _assert_same_losses(_losses(resumed), _losses(reference), range(stopped + 1, STEPS + 1))
    assert _delta(resumed)["count"] == _delta(reference)["count"] == STEPS * 2 * 2
    assert _delta(resumed)["total"] == pytest.approx(_delta(reference)["total"], rel=REL_TOL)


def _sft(tiny_model, meta, out, *extra) -> list[str]:
    return [
        "sft",
        "--config",
        "recipes/tiny/sft_stage2.yaml",
        "--model_name_or_path",
        str(tiny_model),
        "--meta_path",
        str(meta),
        "--output_dir",
        str(out),
        "--packing",
        "false",
        "--max_steps",
        str(STEPS),
        "--per_device_train_batch_size",
        "1",
        "--warmup_steps",
        "2",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        *extra,
    ]


def _rl(tiny_model, qa_meta, out, *extra) -> list[str]:
    """`mpo rl` of tiny/gspo: one question and its 4 rollouts a step, every step logged."""
    return [
        "rl", "--config", "tiny/gspo", "--model_name_or_path", str(tiny_model), "--meta_path", str(qa_meta),
        "--output_dir", str(out), "--max_steps", str(STEPS), "--logging_steps", "1", "--save_strategy", "no",
        *extra,
    ]  # fmt: skip


def _rollouts(state: dict) -> dict[int, tuple]:
    """Per step: the rewards and the lengths of the rollouts sampled at it (RNG and data position show here)."""
    keys = ("rewards/correctness/mean", "completions/mean_length", "completions/min_length", "entropy")
    return {h["step"]: tuple(h[k] for k in keys) for h in state["log_history"] if "loss" in h}


@pytest.mark.parametrize("command", ["train", "sft", "rl"])
def test_sigterm_saves_exits_75_and_resumes_exactly(tiny_model, meta, tmp_path, command):
    """One process, no launcher: SIGTERM mid-run -> checkpoint of the step it stopped at, exit 75, one
    line; the resubmitted run ends with the losses (and δ; for `mpo rl` the rollouts' rewards and lengths,
    which the restored RNG and data position decide) of an uninterrupted run, bit for bit."""
    if command == "sft":
        data, argv = write_sft(tmp_path / "sft_data", SFT_ROWS * 3), _sft
    elif command == "rl":
        from data_builders.synthetic import generate

        generate(tmp_path / "synthetic", 8, 16, 4, seed=5)
        data, argv = tmp_path / "synthetic" / "qa" / "meta.json", _rl
    else:
        data, argv = meta, partial(_train, save=("--save_strategy", "no"))
    full, cut = tmp_path / "full", tmp_path / "cut"
    mpo = [sys.executable, "-m", "mpo.cli"]  # every run with the same threads, hence the same rounding
    _run([*mpo, *argv(tiny_model, data, full)], tmp_path / "full.log")
    proc = subprocess.Popen(
        [*mpo, *argv(tiny_model, data, cut)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _until_logged(proc, 1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    [saved] = checkpoints(cut)  # save_strategy "no": the signal's checkpoint only
    stopped = int(saved.name.split("-")[1])
    assert 1 <= stopped < STEPS and checkpoint_problem(saved) is None
    assert f"mpo {command}: SIGTERM: stopped after step {stopped}, saved {saved}; exit 75" in output
    assert json.loads((cut / PREEMPTED_FILE).read_text())["step"] == stopped
    assert not (cut / ".staging").exists()
    _run([*mpo, *argv(tiny_model, data, cut, "--resume_from_checkpoint", "True")], tmp_path / "resumed.log")
    assert not (cut / PREEMPTED_FILE).exists()
    assert _state(cut)["global_step"] == STEPS
    assert _losses(_state(cut)) == _losses(_state(full))  # bit for bit
    if command == "train":
        assert _delta(_state(cut)) == _delta(_state(full))
    if command == "rl":
        assert _rollouts(_state(cut)) == _rollouts(_state(full)) and len(_rollouts(_state(full))) == STEPS


def test_ranks_agree_on_a_signal_only_one_of_them_got(tmp_path):
    proc = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "tests/dist/preempt_ranks.py",
            str(tmp_path),
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["received"] == 0 and r1["received"] == signal.SIGUSR1  # only rank 1 was signalled
    for rank in (r0, r1):
        assert rank["decisions"] == [[False, False], [True, True]]  # both save and stop, at step 2
        assert rank["stopped_at"] == 2 and rank["signal"] == "SIGUSR1"
        assert rank["handler_restored"]


def test_a_killed_rank_stops_the_job_naming_it(tiny_model, meta, tmp_path):
    """SIGKILL one of 2 gloo ranks after the first step: the job ends well within the collective timeout
    (ddp_timeout, 30 s here), the launcher's summary names rank 1 as the root cause, and every
    checkpoint-N left in output_dir is complete (a save cut short stays in .staging)."""
    out = tmp_path / "out"
    cmd = [
        *_accelerate(2, "--multi_gpu", "--num_machines", "1", "--main_process_port", str(free_port())),
        *_train(tiny_model, meta, out, "--save_steps", "1", "--max_steps", "200", "--ddp_timeout", "30"),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = _until_logged(proc, 2)  # checkpoint-1 saved
    killed = time.monotonic()
    os.kill(_workers(proc)[1], signal.SIGKILL)
    output = "".join(lines) + proc.communicate(timeout=120)[0]
    took = time.monotonic() - killed
    (tmp_path / "log.txt").write_text(output)
    assert proc.returncode == 1 and took < 30, (took, output[-3000:])
    root_cause = output.split("Root Cause (first observed failure):")[1]
    assert re.search(r"rank\s+: 1 \(local_rank: 1\)\s+exitcode\s+: -9", root_cause), root_cause
    assert "SIGKILL" in root_cause
    assert checkpoints(out) and all(checkpoint_problem(c) is None for c in checkpoints(out))


def test_a_hung_rank_is_named_after_the_collective_timeout(tiny_model, meta, tmp_path):
    """SIGSTOP one of 2 gloo ranks (a hung process, or a node gone without closing its connections): the
    other gives up after ddp_timeout (10 s here), and the probe names rank 1 in one line."""
    out = tmp_path / "out"
    cmd = [
        *_accelerate(2, "--multi_gpu", "--num_machines", "1", "--main_process_port", str(free_port())),
        *_train(tiny_model, meta, out, "--save_strategy", "no", "--max_steps", "200", "--ddp_timeout", "10"),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = _until_logged(proc, 1)
    hung = _workers(proc)[1]
    stopped = time.monotonic()
    os.kill(hung, signal.SIGSTOP)
    unblock = threading.Timer(60, os.kill, (hung, signal.SIGKILL))  # without the timeout: gloo's 30 minutes
    unblock.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if "did not answer" in line:
                break
        took = time.monotonic() - stopped
    finally:
        unblock.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGKILL)  # the launcher would wait 30 s for a stopped process
        lines.append(proc.communicate(timeout=120)[0])
    (tmp_path / "log.txt").write_text("".join(lines))
    said = [line for line in lines if "did not answer" in line]
    assert said and "mpo train: rank 0: a collective failed (" in said[0], "".join(lines)[-3000:]
    assert "rank(s) 1 did not answer within 10 s: lost or hung" in said[0]
    assert 10 <= took < 40, took  # the collective timeout, then the probe's
    assert proc.returncode == 1


def _checkpoint(path: Path, files: dict[str, str], shape: RunShape | None = None) -> Path:
    """A checkpoint folder with ``files`` and a trainer state recording ``shape``."""
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    callbacks = {RUN_SHAPE_KEY: shape.state_entry()} if shape else {}
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 4, "stateful_callbacks": callbacks}))
    return path


def test_the_global_batch_is_kept_where_it_can_be_and_said_where_not(tmp_path, caplog):
    assert split_global_batch(8, 2, 4) == (4, 1)
    assert split_global_batch(8, 1, 4) == (4, 2)  # 2 ranks -> 1: twice the accumulation
    assert split_global_batch(8, 4, 1) == (1, 2)
    assert split_global_batch(8, 3, 4) is None
    saved = RunShape(world_size=2, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    ckpt = _checkpoint(tmp_path / "checkpoint-4", {"model.safetensors": "x"}, saved)
    args = SimpleNamespace(world_size=1, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    with caplog.at_level(logging.WARNING, logger="mpo.cluster"):
        assert plan_resume(str(ckpt), args).universal is False  # no ZeRO shards to convert
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    assert "4 per device x 2 accumulation keeps the global batch 8" in caplog.text
    caplog.clear()
    resumed = _checkpoint(tmp_path / "checkpoint-6", {"model.safetensors": "x"}, RunShape.of(args))
    args = SimpleNamespace(world_size=1, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    plan_resume(str(resumed), args)  # the same command line again, on the same single rank
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    caplog.clear()
    args = SimpleNamespace(world_size=3, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    with caplog.at_level(logging.WARNING, logger="mpo.cluster"):
        plan_resume(str(ckpt), args)
    [line] = caplog.messages
    assert line == (
        f"resume_from_checkpoint: {ckpt} was saved by 2 rank(s) x 4 per device x 1 accumulation = 8; this run "
        "is 3 rank(s) x 4 per device x 1 accumulation = 12: the global batch 8 cannot be split over 3 ranks; "
        "continuing with 3 rank(s) x 4 per device x 1 accumulation = 12: the schedule goes on by step, and 4 "
        "samples per completed step of this epoch are skipped"
    )


def test_a_checkpoint_of_the_other_kind_is_one_line_naming_it(tmp_path, monkeypatch):
    shards = {f"global_step4/zero_pp_rank_{r}_mp_rank_00_optim_states.pt": "x" for r in (0, 1)}
    zero = _checkpoint(tmp_path / "zero" / "checkpoint-4", {"latest": "global_step4", **shards})
    plain = _checkpoint(tmp_path / "plain" / "checkpoint-4", {"model.safetensors": "x"})
    args = SimpleNamespace(world_size=1, per_device_train_batch_size=1, gradient_accumulation_steps=1)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    with pytest.raises(UserError) as err:
        plan_resume(str(zero), args)
    assert str(err.value) == (
        f"resume_from_checkpoint: {zero}: DeepSpeed ZeRO shards (2 ranks) hold its optimizer state; resume "
        "it under DeepSpeed (accelerate launch --use_deepspeed ...)"
    )
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UserError) as err:
        plan_resume(str(plain), args)
    assert str(err.value) == (
        f"resume_from_checkpoint: {plain}: saved without DeepSpeed (no 'latest' tag, no ZeRO shards); "
        "resume it without DeepSpeed"
    )


def test_a_signal_to_every_process_of_a_launched_job_as_slurm_sends_it(tiny_model, meta, tmp_path):
    """recipes/slurm/train_multinode.sbatch starts each node's launcher ignoring SIGTERM and SIGUSR1, and
    SLURM signals every process of the job step: both ranks save one checkpoint, write preempted.json, exit
    75, and the launcher (which exits 1 whatever) outlives the signal to report them."""
    sbatch = (REPO / "recipes" / "slurm" / "train_multinode.sbatch").read_text()
    guard = """trap "" TERM USR1; exec accelerate launch"""
    assert guard in sbatch
    out = tmp_path / "out"
    launch = [*_zero3(2), *_train(tiny_model, meta, out, "--save_strategy", "no")]
    script = guard.replace("accelerate launch", shlex.join(launch))  # exec .../accelerate launch ...
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = _until_logged(proc, 1)
    for pid in [proc.pid, *_workers(proc).values()]:  # SLURM: every process of the step's cgroup
        os.kill(pid, signal.SIGUSR1)
    output = "".join(lines) + proc.communicate(timeout=300)[0]
    (tmp_path / "log.txt").write_text(output)
    assert proc.returncode == 1, output[-3000:]  # the launcher lived to report its ranks
    record = json.loads((out / PREEMPTED_FILE).read_text())
    assert record["signal"] == "SIGUSR1" and record["exit_code"] == PREEMPTED_EXIT_CODE
    assert [c.name for c in checkpoints(out)] == [f"checkpoint-{record['step']}"]
    assert checkpoint_problem(out / f"checkpoint-{record['step']}") is None
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in output
