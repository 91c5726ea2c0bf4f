"""mpo plan: model states against DeepSpeed's own estimators, and a known fit and a known misfit."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import REPO
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from transformers import InternVLForConditionalGeneration

from mpo.cli import main as cli_main
from mpo.models.convert import native_config
from mpo.models.sizes import SIZES, original_config
from mpo.plan import plan

RECIPES = REPO / "recipes" / "internvl2_5"


def recipe(size: str, stage: str = "mpo") -> dict:
    return yaml.safe_load((RECIPES / size / f"{stage}.yaml").read_text())


def meta_model(size: str):
    with torch.device("meta"):
        return InternVLForConditionalGeneration(native_config(original_config(SIZES[size]), 0, size))


def test_zero3_states_are_deepspeeds_estimate_for_78b_on_64_gpus():
    model = meta_model("78b")
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    _, expected, _ = estimate_zero3_model_states_mem_needs(
        total, largest, 8, 8, cpu_offload=False, cpu_offload_params=False
    )
    result = plan(recipe("78b"), "78b", gpus=64, gpu_memory_gib=80)
    assert result.zero == 3 and result.counts.total == total
    assert result.states == expected
    assert result.fits  # the published recipe: 64 GPUs of 80 GB, ZeRO-3, gradient checkpointing


def test_zero2_states_are_deepspeeds_estimate_with_the_frozen_weights_added():
    model = meta_model("8b")
    llm = sum(
        p.numel() for n, p in model.named_parameters() if "language_model" in n or n.startswith("lm_head")
    )
    total = sum(p.numel() for p in model.parameters())
    _, expected = estimate_zero2_model_states_mem_needs(total - llm, 8, 1, cpu_offload=False)
    frozen = dict(recipe("8b"), freeze_llm=True)
    assert plan(frozen, "8b", gpus=8, gpu_memory_gib=80, zero=2).states == expected + 2 * llm


def test_a_known_fit_and_a_known_misfit():
    fit = plan(recipe("8b"), "8b", gpus=8, gpu_memory_gib=80)  # the reference: 8 GPUs, ZeRO-1
    assert fit.zero == 1 and fit.fits
    p = fit.counts.trainable
    assert fit.states == 4 * p + 16 * p // 8  # bf16 weights and gradients whole, fp32 states over 8
    misfit = plan(recipe("78b"), "78b", gpus=8, gpu_memory_gib=80, zero=1)
    assert not misfit.fits and misfit.states > 80 * 2**30
    # gradient checkpointing off costs activations the plan shows
    assert fit.activations_without_checkpointing > 3 * fit.activations


def test_cli_prints_the_table_and_exits_3_when_it_does_not_fit(capsys):
    assert (
        cli_main(
            ["plan", "--config", str(RECIPES / "78b" / "mpo.yaml"), "--gpus", "64", "--gpu-memory", "80"]
        )
        == 0
    )
    assert "| fits | yes |" in capsys.readouterr().out
    code = cli_main(
        [
            "plan",
            "--config",
            str(RECIPES / "78b" / "mpo.yaml"),
            "--gpus",
            "8",
            "--gpu-memory",
            "80",
            "--zero",
            "1",
        ]
    )
    assert code == 3 and "| fits | NO |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["plan", "--gpus", "8"])
