"""Two ranks on the CPU: δ is global (gloo DDP), and DeepSpeed ZeRO-2/3 train on mixed input shapes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MIXED_ROWS, REPO, accelerate_launch, free_port, write_mmpr
from transformers import InternVLForConditionalGeneration

pytestmark = pytest.mark.slow  # every test here starts 2 processes
BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _run(cmd: list[str], log: Path) -> None:
    proc = subprocess.run(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )
    log.write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_delta_is_global_over_two_gloo_ranks(tiny_model, perturbed_policy, tmp_path):
    meta = write_mmpr(tmp_path / "data", MIXED_ROWS * 2)
    out = tmp_path / "run"
    out.mkdir()
    _run(
        [
            str(BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "tests/dist/delta_ranks.py",
            str(tiny_model),
            str(perturbed_policy),
            str(meta),
            str(out),
        ],
        tmp_path / "log.txt",
    )
    r0, r1 = (json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert len(r0["deltas"]) == len(r1["deltas"]) == 3
    assert r0["deltas"] == r1["deltas"]  # identical on both ranks, bit for bit
    # 3 steps x 2 micro-batches x 1 pair x (chosen, rejected) rewards per rank, different data per rank
    assert len(r0["rewards"]) == len(r1["rewards"]) == 12 and r0["rewards"] != r1["rewards"]
    for step in range(3):
        seen = r0["rewards"][: 4 * (step + 1)] + r1["rewards"][: 4 * (step + 1)]
        assert math.isclose(r0["deltas"][step], sum(seen) / len(seen), rel_tol=1e-6, abs_tol=1e-9)
    # the step of unequal micro-batches (1 and 3 pairs per rank): every reward weighs the same
    assert len(r0["step_rewards"]) == len(r1["step_rewards"]) == 2 * (1 + 3)
    everything = r0["rewards"] + r1["rewards"] + r0["step_rewards"] + r1["step_rewards"]
    assert r0["after"] == r1["after"] and r0["before"]["count"] == 24
    assert r0["after"]["count"] == 24 + 16
    assert math.isclose(r0["after"]["value"], sum(everything) / len(everything), rel_tol=1e-6, abs_tol=1e-9)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_two_ranks_mixed_shapes(tiny_model, tmp_path, zero):
    meta = write_mmpr(tmp_path / "data", MIXED_ROWS * 2)
    out = tmp_path / "out"
    _run(
        [
            *accelerate_launch(2, "--num_machines", "1", "--main_process_port", str(free_port()), zero=zero),
            "train",
            "--config",
            "recipes/tiny/mpo.yaml",
            "--model_name_or_path",
            str(tiny_model),
            "--meta_path",
            str(meta),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "1",
            "--learning_rate",
            "1e-3",
            "--logging_steps",
            "1",
            "--save_steps",
            "3",
        ],
        tmp_path / "log.txt",
    )
    state = json.loads((out / "trainer_state.json").read_text())
    steps = [h for h in state["log_history"] if "loss/dpo" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]
    assert all(math.isfinite(h["loss"]) for h in steps)
    assert (
        state["stateful_callbacks"]["MPORewardShift"]["attributes"]["count"] == 3 * 2 * 2
    )  # 2 ranks, 1 pair
    # the saved model loads (ZeRO-3 gathers the shards on save) and every part of it trained
    load = InternVLForConditionalGeneration.from_pretrained
    before, after = load(tiny_model).state_dict(), load(out).state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("vision_tower" in k for k in changed) and any("language_model" in k for k in changed)


def test_wandb_samples_table_under_zero3_is_collective_safe(tiny_model, tmp_path):
    """The preference-samples table runs a forward pass at every evaluation. Under ZeRO-3 that forward
    gathers parameters from all ranks, so every rank must take part (rank 0 alone would wait forever).
    Setting where a mismatch cannot hide: the only evaluation comes after the last training step (no
    later step of the other rank can pair with rank 0's gathers) and every parameter is partitioned
    (persistence threshold 0)."""
    meta = write_mmpr(tmp_path / "data", MIXED_ROWS * 2)
    config = json.loads((REPO / "recipes" / "deepspeed" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    proc = subprocess.run(
        [
            *accelerate_launch(
                2,
                "--num_machines",
                "1",
                "--main_process_port",
                str(free_port()),
                zero=str(tmp_path / "zero3.json"),
            ),
            "train",
            "--config",
            "recipes/tiny/mpo.yaml",
            "--model_name_or_path",
            str(tiny_model),
            "--meta_path",
            str(meta),
            "--eval_meta_path",
            str(meta),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "1",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--per_device_eval_batch_size",
            "2",
            "--report_to",
            "wandb",
            "--save_strategy",
            "no",
            "--precompute_ref_log_probs",
            "false",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # rank 0 logs, once
    logged = b"".join(p.read_bytes() for p in runs[0].rglob("*.wandb"))
    assert b"preference_samples" in logged


def test_zero3_prefix_sharing_on_sdpa_varlen_trains_as_the_dense_mask(tiny_model, tmp_path):
    """Two ZeRO-3 ranks, prefix sharing (the default layout), once on sdpa with the dense block mask and once
    on sdpa_varlen (the rejected branch's keys gathered, bottom-right causal): every logged loss term of
    every step agrees, so the gather's gradient reaches the sharded parameters as the mask's does."""
    meta = write_mmpr(tmp_path / "data", MIXED_ROWS * 2)
    logged = {}
    for kernel in ("sdpa", "sdpa_varlen"):
        out = tmp_path / kernel
        _run(
            [
                *accelerate_launch(
                    2, "--num_machines", "1", "--main_process_port", str(free_port()), zero="zero3"
                ),
                "train",
                "--config",
                "recipes/tiny/mpo.yaml",
                "--model_name_or_path",
                str(tiny_model),
                "--meta_path",
                str(meta),
                "--output_dir",
                str(out),
                "--attn_implementation",
                kernel,
                "--max_steps",
                "3",
                "--per_device_train_batch_size",
                "2",
                "--learning_rate",
                "1e-3",
                "--logging_steps",
                "1",
                "--save_strategy",
                "no",
                "--ref_cache_dir",
                str(tmp_path / f"cache_{kernel}"),
            ],
            tmp_path / f"log_{kernel}.txt",
        )
        state = json.loads((out / "trainer_state.json").read_text())
        logged[kernel] = [h for h in state["log_history"] if "loss/dpo" in h]
    assert [h["step"] for h in logged["sdpa_varlen"]] == [1, 2, 3]
    for dense, varlen in zip(logged["sdpa"], logged["sdpa_varlen"], strict=True):
        for key in (
            "loss",
            "loss/dpo",
            "loss/bco",
            "loss/sft",
            "logps/chosen",
            "logps/rejected",
            "bco/delta",
        ):
            assert varlen[key] == pytest.approx(dense[key], rel=1e-4, abs=1e-6), (dense["step"], key)
    assert logged["sdpa"][-1]["logps/chosen"] != logged["sdpa"][0]["logps/chosen"]  # it trained
