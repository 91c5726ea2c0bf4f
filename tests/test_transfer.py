"""`mpo transfer-vision`: FROM's vision tower and TARGET's LLM land in the output bit for bit; the projector is
kept or freshly initialised by the LLM widths; vision configs that differ are refused by field; the output
loads and runs; sharded inputs and outputs work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import InternVLForConditionalGeneration

from mpo.cli import main as cli
from mpo.errors import UserError
from mpo.models.loading import load_model, load_processor
from mpo.models.tiny import build_tiny_model, tiny_config, tiny_processor, train_tokenizer, wider_text
from mpo.models.transfer import transfer_vision

# The parts by the names transformers 5 writes for InternVL (written out here, not taken from mpo).
VISION, PROJECTOR = "vision_tower.", "multi_modal_projector."
LLM = ("language_model.",)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def build(
    out: Path,
    tokenizer,
    seed: int,
    *,
    text: dict | None = None,
    vision: dict | None = None,
    shard: str | None = None,
    **top,
) -> Path:
    """A tiny native checkpoint (random weights from ``seed``), optionally sharded."""
    config = tiny_config(tokenizer, text=text, vision=vision)
    for key, value in top.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    model.save_pretrained(out, **({"max_shard_size": shard} if shard else {}))
    tiny_processor(tokenizer).save_pretrained(out)
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in ``path``, by its name on disk."""
    found: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            found.update({name: f.get_tensor(name) for name in f.keys()})
    return found


def select(tensors: dict[str, torch.Tensor], prefix) -> dict[str, torch.Tensor]:
    return {name: t for name, t in tensors.items() if name.startswith(prefix)}


def assert_bitwise_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys() and got
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name


@pytest.fixture(scope="module")
def small(tokenizer, tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("small") / "m", tokenizer, seed=1)


@pytest.fixture(scope="module")
def wide(tokenizer, tmp_path_factory) -> Path:
    """A target with a 2x wider LLM, built the way `mpo tiny-model --text-hidden-size 256` builds it."""
    return build_tiny_model(tmp_path_factory.mktemp("wide") / "m", seed=2, text=wider_text(256))


def test_wider_tiny_model(wide, small) -> None:
    config = json.loads((wide / "config.json").read_text())
    assert (config["text_config"]["hidden_size"], config["text_config"]["intermediate_size"]) == (256, 512)
    assert config["vision_config"] == json.loads((small / "config.json").read_text())["vision_config"]
    with pytest.raises(ValueError, match="multiple of 4"):
        wider_text(130)


def test_tiny_model_width_option_refuses_bad_width(tmp_path, capsys) -> None:
    assert cli(["tiny-model", str(tmp_path / "m"), "--text-hidden-size", "130"]) == 1
    assert (
        "--text-hidden-size: text hidden size 130 is not a positive multiple of 4 heads"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "m").exists()


def test_wider_llm_gets_fresh_seeded_projector(small, wide, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert cli(["transfer-vision", "--vision", str(small), "--into", str(wide), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "projector initialised fresh (seed 0; text_config.hidden_size 128 in FROM, 256 in TARGET)" in said

    got, source, target = weights(out), weights(small), weights(wide)
    assert got.keys() == target.keys()
    assert_bitwise_equal(select(got, VISION), select(source, VISION))
    assert_bitwise_equal(select(got, LLM), select(target, LLM))
    # the fresh projector: TARGET's shapes, LayerNorm at identity, Linear layers from U(-1/sqrt(in), 1/sqrt(in))
    projector = select(got, PROJECTOR)
    assert {n: t.shape for n, t in projector.items()} == {
        n: t.shape for n, t in select(target, PROJECTOR).items()
    }
    assert torch.equal(projector["multi_modal_projector.layer_norm.weight"], torch.ones(256))
    assert torch.equal(projector["multi_modal_projector.layer_norm.bias"], torch.zeros(256))
    for layer, fan_in in (("linear_1", 64 * 4), ("linear_2", 256)):
        w = projector[f"multi_modal_projector.{layer}.weight"]
        bound = 1 / math.sqrt(fan_in)
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # the std of U(-b, b)
        assert not torch.equal(w, target[f"multi_modal_projector.{layer}.weight"])
        assert projector[f"multi_modal_projector.{layer}.bias"].abs().max() <= bound
    # config, processor and tokenizer files are TARGET's
    for name in ("config.json", "processor_config.json", "tokenizer.json", "generation_config.json"):
        assert (out / name).read_bytes() == (wide / name).read_bytes(), name
    provenance = json.loads((out / "transfer_vision.json").read_text())
    assert provenance["projector"] == "fresh" and provenance["seed"] == 0

    # the seed decides the fresh projector, and only it
    transfer_vision(small, wide, tmp_path / "again", seed=0)
    transfer_vision(small, wide, tmp_path / "other", seed=1)
    assert_bitwise_equal(weights(tmp_path / "again"), got)
    other = weights(tmp_path / "other")
    assert not torch.equal(
        other["multi_modal_projector.linear_1.weight"], projector["multi_modal_projector.linear_1.weight"]
    )
    assert_bitwise_equal(select(other, VISION), select(got, VISION))


def test_equal_widths_keep_projector(small, tokenizer, tmp_path) -> None:
    target = build(tmp_path / "target", tokenizer, seed=3)
    result = transfer_vision(small, target, tmp_path / "out")
    assert result.projector == "kept" and "projector kept from FROM" in result.summary(
        small, target, tmp_path
    )
    got, source = weights(tmp_path / "out"), weights(small)
    assert_bitwise_equal(select(got, (VISION, PROJECTOR)), select(source, (VISION, PROJECTOR)))
    assert_bitwise_equal(select(got, LLM), select(weights(target), LLM))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"vision": {"hidden_size": 128, "intermediate_size": 256}},
            "vision_config.hidden_size: 64 in FROM, 128 in TARGET",
        ),
        ({"vision": {"image_size": 128}}, "vision_config.image_size: [64, 64] in FROM, [128, 128] in TARGET"),
        ({"vision": {"use_qk_norm": True}}, "vision_config.use_qk_norm: false in FROM, true in TARGET"),
        ({"downsample_ratio": 0.25}, "downsample_ratio: 0.5 in FROM, 0.25 in TARGET"),
    ],
)
def test_vision_config_mismatch_refused(small, tokenizer, tmp_path, capsys, change, message) -> None:
    target = build(tmp_path / "target", tokenizer, seed=3, **change)
    with pytest.raises(UserError, match="differ: " + message.replace("[", r"\[").replace("]", r"\]")):
        transfer_vision(small, target, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # the command says it in one line
    capsys.readouterr()
    assert (
        cli(["transfer-vision", "--vision", str(small), "--into", str(target), "--out", str(tmp_path / "o")])
        == 1
    )
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_paths(small, tmp_path) -> None:
    with pytest.raises(UserError, match="no such checkpoint directory"):
        transfer_vision(tmp_path / "missing", small, tmp_path / "out")
    original = tmp_path / "orig"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"model_type": "internvl_chat", "llm_config": {}}))
    with pytest.raises(UserError, match="original OpenGVLab layout"):
        transfer_vision(small, original, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="not an empty directory"):
        transfer_vision(small, small, tmp_path / "full")


def test_output_loads_and_runs(small, wide, tmp_path) -> None:
    out = tmp_path / "out"
    transfer_vision(small, wide, out)
    model, processor = load_model(out, training=False).eval(), load_processor(out)
    image = Image.fromarray(torch.randint(0, 256, (70, 140, 3), dtype=torch.uint8).numpy())
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        features = model.model.vision_tower(pixel_values=inputs["pixel_values"]).last_hidden_state
        source = InternVLForConditionalGeneration.from_pretrained(small).eval()
        want = source.model.vision_tower(pixel_values=inputs["pixel_values"]).last_hidden_state
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    assert torch.equal(features, want)  # the transferred tower computes what it computed in FROM


def test_sharded_target_and_output(small, tokenizer, tmp_path) -> None:
    target = build(tmp_path / "target", tokenizer, seed=4, text=wider_text(256), shard="300KB")
    assert len(list(target.glob("*.safetensors"))) > 2 and (target / "model.safetensors.index.json").is_file()
    out = tmp_path / "out"
    transfer_vision(small, target, out, max_shard_size="300KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(list(out.glob("*.safetensors"))) > 2
    got = weights(out)
    assert set(index["weight_map"]) == got.keys() == weights(target).keys()
    assert_bitwise_equal(select(got, VISION), select(weights(small), VISION))
    assert_bitwise_equal(select(got, LLM), select(weights(target), LLM))
    assert load_model(out, training=False) is not None


def test_source_in_module_spelling(small, wide, tmp_path) -> None:
    """A FROM whose tensors carry the module names (``model.vision_tower.*``) is read as well."""
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    source = weights(small)
    spelled = {("model." + n if n.startswith((VISION, PROJECTOR)) else n): t for n, t in source.items()}
    save_file(spelled, str(renamed / "model.safetensors"), metadata={"format": "pt"})
    (renamed / "config.json").write_bytes((small / "config.json").read_bytes())
    transfer_vision(renamed, wide, tmp_path / "out")
    assert_bitwise_equal(select(weights(tmp_path / "out"), VISION), select(source, VISION))
