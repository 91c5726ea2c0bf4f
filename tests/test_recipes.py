"""Recipes: every YAML loads into its config classes, per-size values equal the reference table,
the progressive-scaling recipes keep their size's values and chain their commands, unknown keys fail,
and the CPU launch line of recipes/README.md runs on 2 ranks."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from mpo.cli.rl import parse_rl_args
from mpo.cli.sft import parse_sft_args
from mpo.cli.train import parse_train_args
from mpo.errors import UserError
from mpo.models.sizes import SIZES as TABLE
from mpo.models.tiny import TINY_TEXT

RECIPES = REPO / "recipes"
SIZES = list(TABLE)  # the seven published sizes
STAGES = {"sft_stage1": ("1", 2e-4, 100), "sft_stage1_5": ("1.5", 1e-5, 100), "sft_stage2": ("2", None, 0.03)}
# Progressive scaling: target size -> the size whose stage-1.5 vision tower it receives (the same InternViT).
PROGRESSIVE = {"2b": "1b", "4b": "1b", "8b": "1b", "38b": "26b", "78b": "26b"}
PROGRESSIVE_STAGES = ["sft_stage1", "sft_stage2"]
SFT_RECIPES = [
    (size, name, RECIPES / "internvl2_5" / size / f"{name}.yaml") for size in SIZES for name in STAGES
]
SFT_RECIPES += [
    (size, name, RECIPES / "internvl2_5" / "progressive" / size / f"{name}.yaml")
    for size in PROGRESSIVE
    for name in PROGRESSIVE_STAGES
]
CPU = ["--bf16", "false"]  # the recipes ask for bf16, which needs a GPU to validate


def _gpus(path: Path) -> int:
    return int(re.search(r"\((\d+) GPUs", path.read_text()).group(1))


@pytest.mark.parametrize("size", SIZES)
def test_mpo_recipe_per_size(size):
    path = RECIPES / "internvl2_5" / size / "mpo.yaml"
    model, data, args = parse_train_args(["--config", str(path), *CPU])
    ref = TABLE[size]  # mpo.models.sizes: the published sizes and their reference training settings
    assert (args.learning_rate, args.num_train_epochs, args.lr_scheduler_type) == (
        ref.mpo_learning_rate,
        1,
        "cosine",
    )
    assert (args.warmup_steps, args.weight_decay, args.beta) == (0.03, 0.05, 0.1)
    assert args.loss_type == ["sigmoid", "bco_pair", "sft"] and args.loss_weights == [0.8, 0.2, 1.0]
    assert args.per_device_train_batch_size == 1 and args.max_length == 8192
    assert (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * _gpus(path) == ref.global_batch
    )
    assert yaml.safe_load(path.read_text())["bf16"] is True and args.gradient_checkpointing
    assert model.vision_drop_path_rate == ref.drop_path_rate
    assert not (model.freeze_vision or model.freeze_projector or model.freeze_llm)
    assert f"ZeRO-{ref.zero_stage}" in path.read_text().splitlines()[1]
    # A single image at the most tiles (max_dynamic_patch + thumbnail) fits in max_length, never truncated.
    assert (ref.max_dynamic_patch + ref.use_thumbnail) * ref.tokens_per_tile < args.max_length
    assert f"max_dynamic_patch {ref.max_dynamic_patch} + thumbnail" in path.read_text()
    assert path.read_text().startswith(
        f"# InternVL2.5-{ref.name} ({ref.vision.name.split('-448px')[0]} + {ref.llm.name})"
    )


@pytest.mark.parametrize(
    ("size", "name", "path"),
    SFT_RECIPES,
    ids=lambda v: str(v.relative_to(RECIPES)) if isinstance(v, Path) else "",
)
def test_sft_recipe_per_size(size, name, path):
    model, _, args = parse_sft_args(["--config", str(path), *CPU])
    stage, lr, warmup = STAGES[name]
    assert model.vision_drop_path_rate == (TABLE[size].drop_path_rate if stage == "2" else 0.0)
    assert args.stage == stage
    assert args.learning_rate == (lr if lr is not None else TABLE[size].sft_stage2_learning_rate)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"ZeRO-{TABLE[size].zero_stage}" in line for line in header)
    assert args.warmup_steps == warmup
    assert (args.lr_scheduler_type, args.weight_decay, args.loss_reduction) == ("cosine", 0.05, "square")
    assert args.packing and args.max_packed_tokens == 16384


def _comment_command(path: Path, program: str) -> list[str]:
    """The argv of the ``program ...`` command a recipe's header comments give."""
    found = re.search(rf"^#\s+({re.escape(program)} .*)$", path.read_text(), re.M)
    assert found, f"{path}: no '{program}' line in the header"
    return shlex.split(found.group(1))


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _check_progressive(path: Path, own: Path, vision_from: Path, into: str | None = None) -> None:
    """A progressive recipe: its own size's YAML but for model_name_or_path / output_dir; stage 1 starts from
    the output of the transfer-vision line in its header, whose --vision is the source run's stage-1.5 output
    and whose --into is ``into`` (default: what its own size's stage 1 starts from); stage 2 starts from
    stage 1's output."""
    got, want = yaml.safe_load(path.read_text()), yaml.safe_load(own.read_text())
    paths = ("model_name_or_path", "output_dir")
    assert {k: v for k, v in got.items() if k not in paths} == {
        k: v for k, v in want.items() if k not in paths
    }
    assert got["output_dir"] not in (
        want["output_dir"],
        yaml.safe_load(vision_from.read_text())["output_dir"],
    )
    if path.name == "sft_stage1.yaml":
        transfer = _comment_command(path, "mpo transfer-vision")
        assert _option(transfer, "--vision") == yaml.safe_load(vision_from.read_text())["output_dir"]
        assert _option(transfer, "--into") == (into or want["model_name_or_path"])
        assert _option(transfer, "--out") == got["model_name_or_path"]
    else:
        assert (
            got["model_name_or_path"]
            == yaml.safe_load(path.with_name("sft_stage1.yaml").read_text())["output_dir"]
        )


@pytest.mark.parametrize("size", list(PROGRESSIVE))
@pytest.mark.parametrize("name", PROGRESSIVE_STAGES)
def test_progressive_recipes_chain(size, name):
    path = RECIPES / "internvl2_5" / "progressive" / size / f"{name}.yaml"
    source = RECIPES / "internvl2_5" / PROGRESSIVE[size]
    _check_progressive(path, RECIPES / "internvl2_5" / size / f"{name}.yaml", source / "sft_stage1_5.yaml")
    vit = re.compile(r"InternViT-\w+")  # the tower moves only between models built on the same InternViT
    assert vit.search(path.read_text()).group(0) == vit.search(
        (source / "sft_stage1.yaml").read_text()
    ).group(0)
    # the header's launch line is the one recipes/README.md gives for it, as is the transfer line
    launch = _comment_command(path, "accelerate launch")
    assert _option(launch, "--config") == str(path.relative_to(REPO))
    readme = (RECIPES / "README.md").read_text()
    assert f"`{shlex.join(launch)}`" in readme.replace("$NODE_RANK", "'$NODE_RANK'").replace(
        "$MASTER_ADDR", "'$MASTER_ADDR'"
    )
    if name == "sft_stage1":
        assert f"`{shlex.join(_comment_command(path, 'mpo transfer-vision'))}`" in readme


@pytest.mark.parametrize("name", PROGRESSIVE_STAGES)
def test_tiny_progressive_recipes_chain(name):
    """The tiny path moves the tower into a tiny model with a wider LLM, built by the header's tiny-model line."""
    stage1 = RECIPES / "tiny" / "progressive" / "sft_stage1.yaml"
    build = _comment_command(stage1, "mpo tiny-model")
    assert int(_option(build, "--text-hidden-size")) > TINY_TEXT["hidden_size"]
    _check_progressive(
        RECIPES / "tiny" / "progressive" / f"{name}.yaml",
        RECIPES / "tiny" / f"{name}.yaml",
        RECIPES / "tiny" / "sft_stage1_5.yaml",
        into=build[2],
    )


@pytest.mark.parametrize(
    "path", sorted((RECIPES / "tiny").rglob("*.yaml")), ids=lambda p: str(p.relative_to(RECIPES))
)
def test_tiny_recipes_load(path):
    parse = {"mpo.yaml": parse_train_args, "gspo.yaml": parse_rl_args}.get(path.name, parse_sft_args)
    parse(["--config", str(path)])


def test_recipes_by_name_from_any_directory(tmp_path, monkeypatch):
    """``--config tiny/mpo`` (or ``recipes/tiny/mpo.yaml``) finds the shipped recipe outside the checkout;
    a file of that name in the working directory wins; an unknown name lists the shipped ones."""
    monkeypatch.chdir(tmp_path)
    shipped = yaml.safe_load((RECIPES / "tiny" / "mpo.yaml").read_text())
    for name in ("tiny/mpo", "recipes/tiny/mpo.yaml", "tiny/mpo.yaml"):
        _, _, args = parse_train_args(["--config", name])
        assert (args.beta, args.learning_rate) == (shipped["beta"], shipped["learning_rate"])
    _, _, args = parse_train_args(["--config=internvl2_5/8b/mpo", *CPU])
    assert (
        args.learning_rate
        == yaml.safe_load((RECIPES / "internvl2_5/8b/mpo.yaml").read_text())["learning_rate"]
    )
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "mpo").write_text(yaml.safe_dump({**shipped, "beta": 0.37}))  # a local file wins
    assert parse_train_args(["--config", "tiny/mpo"])[2].beta == 0.37
    with pytest.raises(UserError, match=r"--config tiny/mpx: no such file.*shipped: (tiny/\S+, )?tiny/mpo, "):
        parse_train_args(["--config", "tiny/mpx"])


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
