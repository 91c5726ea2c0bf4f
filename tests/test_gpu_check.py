"""The GPU check's dry run on the CPU: every CPU kernel and layout checked, the file written, CUDA parts skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_results(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "mpo.cli", "gpu-check", "--dry", "--out", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry"] is True
    rows = {(r["kernel"], r["layout"]): r for r in report["exactness"]}
    layouts = ["plain", "vision once", "prefix sharing", "packing", "prefix sharing + packing"]
    for kernel in ("sdpa", "eager"):
        for layout in layouts:
            row = rows[(kernel, layout)]
            assert (
                row["exact"]
                and row["dtype"] == "float32"
                and row["logp_err"] <= 1e-4
                and row["grad_err"] <= 1e-4
            )
    # sdpa per sequence, the varlen kernel that runs on the CPU: exact in every layout, prefix sharing too
    for layout in layouts:
        row = rows[("sdpa_varlen", layout)]
        assert row["exact"] and row["logp_err"] <= 1e-4 and row["grad_err"] <= 1e-4
    assert not any(r.get("refused") for r in report["exactness"])
    for kernel in (
        "flash_attention_2",
        "flash_attention_4",
        "torch_varlen",
        "sdpa_varlen",
    ):  # every varlen kernel
        assert report["expresses"][kernel] == ["plain", "packed", "shared"]
    control = rows[("sdpa", "packing (leaky control)")]
    assert not control["exact"] and control["grad_err"] > 1e-2  # the check can fail
    assert "CUDA" in report["skipped"]["flash_attention_2"] and "flex_attention" in report["skipped"]
    assert {layout: c["text"] for layout, c in report["auto"].items()} == {
        "plain": "sdpa",
        "packed": "sdpa",
        "shared": "sdpa",
    }
    stream = report["stream"]
    assert set(stream) == {"trl.DPOTrainer (MPO losses)", "MPOTrainer (defaults)"}
    for r in stream.values():  # 3 steps of one pair, each a new shape, nothing compiled on the CPU
        assert r["train_pairs_per_s"] > 0 and r["peak_mb"] > 0 and r["first_step_s"] > 0
        assert r["steps"] == r["distinct_shapes"] == 3 and r["compilations"] == 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| eager | prefix sharing | float32 |" in table and "| shared | sdpa | sdpa |" in table
    assert "- no compilation after the first step: 0, met" in table
    assert "| torch_varlen | plain, packed, shared | no: needs CUDA and torch >= 2.9 |" in table
