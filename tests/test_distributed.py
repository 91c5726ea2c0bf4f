"""Two ranks on the CPU: δ is global (gloo DDP); DeepSpeed ZeRO-2 (the README's launch line) and ZeRO-3 train on
mixed input shapes; under ZeRO-3 the reference cache is built by both ranks, the wandb samples table is
collective-safe, and prefix sharing on the varlen kernel trains as the dense mask.

Each launch pays two imports of torch, transformers and DeepSpeed, so the ZeRO-3 checks read two runs that
differ only in the attention kernel (the ``zero3_runs`` fixture) instead of a launch each."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MIXED_ROWS, REPO, accelerate_launch, free_port, tiny_mpo, write_mmpr
from safetensors.torch import load_file
from test_ref_cache import reference_by_hand
from transformers import InternVLForConditionalGeneration

pytestmark = pytest.mark.slow  # every test here starts 2 processes
BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _run(cmd: list[str], log: Path, env: dict | None = None) -> str:
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    log.write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


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


def _trained_every_part(before: Path, after: Path) -> None:
    """The saved model loads (ZeRO-3 gathers the shards on save) and both the vision tower and the language
    model changed."""
    load = InternVLForConditionalGeneration.from_pretrained
    initial, trained = load(before).state_dict(), load(after).state_dict()
    assert initial.keys() == trained.keys()
    changed = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert any("vision_tower" in k for k in changed) and any("language_model" in k for k in changed)


def _steps(out: Path) -> list[dict]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss/dpo" in h]


def _delta_count(out: Path) -> int:
    state = json.loads((out / "trainer_state.json").read_text())
    return state["stateful_callbacks"]["MPORewardShift"]["attributes"]["count"]


def test_readme_zero2_launch_line_trains_mixed_shapes(tiny_model, tmp_path):
    """The CPU launch line of recipes/README.md (two ranks, ZeRO-2), as written there, on images, several
    images, text only and video, one pair per rank and step."""
    readme = (REPO / "recipes" / "README.md").read_text()
    argv = shlex.split(re.search(r"<!-- tiny-2rank -->\n```bash\n(.+?)\n```", readme, re.S).group(1))
    assert argv[:2] == ["accelerate", "launch"] and "cpu_2proc_zero2.yaml" in argv[3]
    argv[0] = str(BIN / "accelerate")
    argv[2:2] = ["--main_process_port", str(free_port())]  # over the config's fixed port
    meta = write_mmpr(tmp_path / "data", MIXED_ROWS * 2)
    out = tmp_path / "out"
    argv += [
        "--model_name_or_path", str(tiny_model), "--meta_path", str(meta), "--output_dir", str(out),
        "--max_steps", "3", "--per_device_train_batch_size", "1", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--save_steps", "3", "--ref_cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    _run(argv, tmp_path / "log.txt")
    assert [h["step"] for h in _steps(out)] == [1, 2, 3]
    assert all(math.isfinite(h["loss"]) for h in _steps(out))
    assert _delta_count(out) == 3 * 2 * 1 * 2  # steps x ranks x pairs x (chosen, rejected)
    assert json.loads((out / "mpo_config.json").read_text())["world_size"] == 2
    _trained_every_part(tiny_model, out)


ZERO3_STEPS, ZERO3_PAIRS = 3, 2  # per rank and step: one epoch of the 12 pairs over 2 ranks


@pytest.fixture(scope="module")
def zero3_runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Two ZeRO-3 ranks, once on sdpa (prefix sharing as a dense block mask) and once on sdpa_varlen (the
    rejected branch's keys gathered, bottom-right causal), otherwise the same: 3 steps of 2 mixed-shape pairs
    per rank, every parameter partitioned (persistence threshold 0), reference log-probs computed by both
    ranks into a fresh cache, the wandb preference-samples table at the one evaluation, after the last step
    (so no later step of the other rank could pair with rank 0's gathers), and the model saved at the end.
    {kernel: output folder}; each folder also holds log.txt, cache/ and wandb/."""
    root = tmp_path_factory.mktemp("zero3")
    meta = write_mmpr(root / "data", MIXED_ROWS * 2)
    config = json.loads((REPO / "recipes" / "deepspeed" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (root / "zero3.json").write_text(json.dumps(config))
    runs = {}
    for kernel in ("sdpa", "sdpa_varlen"):
        out = runs[kernel] = root / kernel
        out.mkdir()
        env = {**ENV, "WANDB_MODE": "offline", "WANDB_DIR": str(out)}
        launch = accelerate_launch(
            2, "--num_machines", "1", "--main_process_port", str(free_port()), zero=str(root / "zero3.json")
        )
        train = ["train"] + tiny_mpo(
            tiny_model, meta, out,
            "--attn_implementation", kernel, "--max_steps", str(ZERO3_STEPS),
            "--per_device_train_batch_size", str(ZERO3_PAIRS), "--learning_rate", "1e-3", "--logging_steps", "1",
            "--save_steps", str(ZERO3_STEPS), "--eval_meta_path", str(meta), "--eval_strategy", "steps",
            "--eval_steps", str(ZERO3_STEPS), "--per_device_eval_batch_size", "2", "--report_to", "wandb",
            "--ref_cache_dir", str(out / "cache"), "--precompute_ref_log_probs", "true",
        )  # fmt: skip
        _run([*launch, *train], out / "log.txt", env)
    return runs


def test_zero3_two_ranks_train_mixed_shapes(tiny_model, zero3_runs):
    out = zero3_runs["sdpa"]
    assert [h["step"] for h in _steps(out)] == [1, 2, 3]
    assert all(math.isfinite(h["loss"]) for h in _steps(out))
    assert _delta_count(out) == ZERO3_STEPS * 2 * ZERO3_PAIRS * 2
    _trained_every_part(tiny_model, out)


def test_two_zero3_ranks_build_the_reference_cache_by_hand(tiny_model, zero3_runs):
    """Each rank scores its share of the pairs (by length); the file holds every pair's reference
    log-probs as an unpatched model on plain batches gives them, whichever rank computed it."""
    out = zero3_runs["sdpa"]
    assert "reference log-probs: computed for 12 train pairs" in (out / "log.txt").read_text()
    (cached,) = (out / "cache").glob("train-*.safetensors")
    values = load_file(cached)
    chosen, rejected = reference_by_hand(tiny_model, out.parent / "data" / "meta.json")
    torch.testing.assert_close(values["ref_chosen_logps"], chosen, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(values["ref_rejected_logps"], rejected, rtol=1e-5, atol=1e-4)


def test_wandb_samples_table_under_zero3_is_collective_safe(zero3_runs):
    """The preference-samples table runs a forward pass at every evaluation. Under ZeRO-3 that forward
    gathers parameters from all ranks, so every rank must take part: rank 0 alone would wait forever, and
    the run would not have finished."""
    runs = list((zero3_runs["sdpa"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # rank 0 logs, once
    logged = b"".join(p.read_bytes() for p in runs[0].rglob("*.wandb"))
    assert b"preference_samples" in logged


def test_zero3_prefix_sharing_on_sdpa_varlen_trains_as_the_dense_mask(zero3_runs):
    """Every logged loss term of every step agrees between the dense block mask and the varlen gather, so
    the gather's gradient reaches the sharded parameters as the mask's does."""
    dense, varlen = _steps(zero3_runs["sdpa"]), _steps(zero3_runs["sdpa_varlen"])
    assert [h["step"] for h in varlen] == [1, 2, 3]
    for d, v in zip(dense, varlen, strict=True):
        for key in (
            "loss",
            "loss/dpo",
            "loss/bco",
            "loss/sft",
            "logps/chosen",
            "logps/rejected",
            "bco/delta",
        ):
            assert v[key] == pytest.approx(d[key], rel=1e-4, abs=1e-6), (d["step"], key)
    assert dense[-1]["logps/chosen"] != dense[0]["logps/chosen"]  # it trained
