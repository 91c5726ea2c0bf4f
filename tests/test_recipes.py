"""Recipes: every YAML loads into its config classes, per-size values equal the reference table,
unknown keys fail, and the CPU launch line of recipes/README.md runs on 2 ranks."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import MIXED_ROWS, REPO, free_port, write_mmpr

from mpo.errors import UserError
from mpo.models.sizes import SIZES as TABLE
from mpo.sft import parse_sft_args
from mpo.train import parse_train_args

RECIPES = REPO / "recipes"
SIZES = list(TABLE)  # the seven published sizes
STAGES = {"sft_stage1": ("1", 2e-4, 100), "sft_stage1_5": ("1.5", 1e-5, 100), "sft_stage2": ("2", None, 0.03)}
CPU = ["--bf16", "false"]  # the recipes ask for bf16, which needs a GPU to validate


def _gpus(path: Path) -> int:
    return int(re.search(r"\((\d+) GPUs", path.read_text()).group(1))


@pytest.mark.parametrize("size", SIZES)
def test_mpo_recipe_per_size(size):
    path = RECIPES / "internvl2_5" / size / "mpo.yaml"
    model, data, args = parse_train_args(["--config", str(path), *CPU])
    ref = TABLE[size]  # mpo.models.sizes: the published sizes and their reference training settings
    assert (args.learning_rate, args.num_train_epochs, args.lr_scheduler_type) == (ref.mpo_learning_rate, 1, "cosine")
    assert (args.warmup_steps, args.weight_decay, args.beta) == (0.03, 0.05, 0.1)
    assert args.loss_type == ["sigmoid", "bco_pair", "sft"] and args.loss_weights == [0.8, 0.2, 1.0]
    assert args.per_device_train_batch_size == 1 and args.max_length == 8192
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * _gpus(path) == ref.global_batch
    assert yaml.safe_load(path.read_text())["bf16"] is True and args.gradient_checkpointing
    assert model.vision_drop_path_rate == ref.drop_path_rate
    assert not (model.freeze_vision or model.freeze_projector or model.freeze_llm)
    assert f"ZeRO-{ref.zero_stage}" in path.read_text().splitlines()[1]
    # A single image at the most tiles (max_dynamic_patch + thumbnail) fits in max_length, never truncated.
    assert (ref.max_dynamic_patch + ref.use_thumbnail) * ref.tokens_per_tile < args.max_length
    assert f"max_dynamic_patch {ref.max_dynamic_patch} + thumbnail" in path.read_text()
    assert path.read_text().startswith(f"# InternVL2.5-{ref.name} ({ref.vision.name.split('-448px')[0]} + {ref.llm.name})")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(STAGES))
def test_sft_recipe_per_size(size, name):
    path = RECIPES / "internvl2_5" / size / f"{name}.yaml"
    _, _, args = parse_sft_args(["--config", str(path), *CPU])
    stage, lr, warmup = STAGES[name]
    assert args.stage == stage
    assert args.learning_rate == (lr if lr is not None else TABLE[size].sft_stage2_learning_rate)
    assert f"ZeRO-{TABLE[size].zero_stage}" in path.read_text().splitlines()[1]
    assert args.warmup_steps == warmup
    assert (args.lr_scheduler_type, args.weight_decay, args.loss_reduction) == ("cosine", 0.05, "square")
    assert args.packing and args.max_packed_tokens == 16384


@pytest.mark.parametrize("path", sorted((RECIPES / "tiny").glob("*.yaml")), ids=lambda p: p.name)
def test_tiny_recipes_load(path):
    parse = parse_train_args if path.name == "mpo.yaml" else parse_sft_args
    parse(["--config", str(path)])


def test_unknown_and_invalid_keys_fail(tmp_path):
    base = yaml.safe_load((RECIPES / "tiny" / "mpo.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**base, "lerning_rate": 1e-5}))
    with pytest.raises(UserError, match="lerning_rate"):
        parse_train_args(["--config", str(bad)])
    bad.write_text(yaml.safe_dump({**base, "sft_normalization": "words"}))
    with pytest.raises(UserError, match="sft_normalization"):
        parse_train_args(["--config", str(bad)])
    sft = yaml.safe_load((RECIPES / "tiny" / "sft_stage1.yaml").read_text())
    bad.write_text(yaml.safe_dump({**sft, "stage": "3"}))
    with pytest.raises(UserError, match="stage"):
        parse_sft_args(["--config", str(bad)])


def test_readme_cpu_launch_line_runs_on_two_ranks(tiny_model, tmp_path):
    readme = (RECIPES / "README.md").read_text()
    command = re.search(r"<!-- tiny-2rank -->\n```bash\n(.+?)\n```", readme, re.S).group(1)
    argv = shlex.split(command)
    assert argv[:2] == ["accelerate", "launch"]
    meta = write_mmpr(tmp_path / "data", MIXED_ROWS)
    out = tmp_path / "out"
    argv[0] = str(Path(sys.executable).parent / "accelerate")
    argv[2:2] = ["--main_process_port", str(free_port())]  # over the config's fixed port
    argv += ["--model_name_or_path", str(tiny_model), "--meta_path", str(meta), "--output_dir", str(out),
             "--max_steps", "2", "--per_device_train_batch_size", "1", "--ref_cache_dir", str(tmp_path / "cache")]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert json.loads((out / "mpo_config.json").read_text())["world_size"] == 2
