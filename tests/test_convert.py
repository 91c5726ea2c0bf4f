"""Checkpoint conversion between the original OpenGVLab layout and native transformers.

Tiny checkpoints are built in both layouts: natively (from ``tiny_config``, then converted to the
original layout and back) and by hand in the original layout (random tensors with the published
names and shapes), which is also checked against a forward pass written from the OpenGVLab code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, InternVLForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM

from mpo import cli
from mpo.errors import UserError
from mpo.models import convert as conv
from mpo.models import native_files
from mpo.models.families.internvl2_5 import FAMILY as INTERNVL2_5
from mpo.models.tiny import TOKENS_PER_TILE, tiny_config, tiny_processor, train_tokenizer

# ---------------------------------------------------------------------------------------------
# Builders


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, whatever its sharding."""
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def build_native(out: Path, tokenizer, llm: str, vit: str, tie: bool, seed: int = 0) -> Path:
    """A tiny native checkpoint: ``vit`` 300m (LayerNorm, qkv bias) or 6b (RMSNorm, qk-norm)."""
    config = tiny_config(tokenizer, llm)
    vision = config.vision_config
    vision.norm_type, vision.use_qk_norm = ("layer_norm", False) if vit == "300m" else ("rms_norm", True)
    vision.attention_bias = vit == "300m"
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = tie
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    with torch.no_grad():  # no two tensors alike (norms, layer scales), so a swap cannot go unseen
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(out)
    tiny_processor(tokenizer).save_pretrained(out)
    return out


def original_config_dict(vocab_size: int, llm: str, vit: str, tie: bool = False) -> dict:
    """A small config.json in the original layout, InternVL2.5-style."""
    vision = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "image_size": 64,
        "patch_size": 8,
        "num_channels": 3,
        "hidden_act": "gelu",
        "norm_type": "layer_norm" if vit == "300m" else "rms_norm",
        "qk_normalization": vit == "6b",
        "qkv_bias": vit == "300m",
        "layer_norm_eps": 1e-6,
        "initializer_factor": 0.1,
        "initializer_range": 0.02,
        "drop_path_rate": 0.0,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "use_flash_attn": True,
    }
    shared = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
    }
    if llm == "qwen2":
        text = {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            **shared,
            "use_sliding_window": False,
            "max_window_layers": 2,
        }
    else:
        text = {
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            **shared,
            "bias": False,
            "rope_scaling": {"type": "dynamic", "factor": 2.0},
        }
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "vision_config": vision,
        "llm_config": text,
        "downsample_ratio": 0.5,
        "force_image_size": 64,
        "template": "internvl2_5",
        "ps_version": "v2",
        "select_layer": -1,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "max_dynamic_patch": 6,
        "min_dynamic_patch": 1,
        "torch_dtype": "float32",
    }


def original_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes of an original InternVLChatModel checkpoint."""
    gen = torch.Generator().manual_seed(seed)
    v, t = config["vision_config"], config["llm_config"]
    c, ci, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    h, hi, vocab = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    kv = t["num_key_value_heads"] * h // t["num_attention_heads"]
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, c),
        "vision_model.embeddings.patch_embedding.weight": (c, 3, p, p),
        "vision_model.embeddings.patch_embedding.bias": (c,),
        "vision_model.embeddings.position_embedding": (1, (v["image_size"] // p) ** 2 + 1, c),
        "mlp1.0.weight": (4 * c,),
        "mlp1.0.bias": (4 * c,),
        "mlp1.1.weight": (h, 4 * c),
        "mlp1.1.bias": (h,),
        "mlp1.3.weight": (h, h),
        "mlp1.3.bias": (h,),
    }
    for i in range(v["num_hidden_layers"]):
        x = f"vision_model.encoder.layers.{i}."
        shapes.update(
            {
                x + "attn.qkv.weight": (3 * c, c),
                x + "attn.proj.weight": (c, c),
                x + "attn.proj.bias": (c,),
                x + "ls1": (c,),
                x + "ls2": (c,),
                x + "norm1.weight": (c,),
                x + "norm2.weight": (c,),
                x + "mlp.fc1.weight": (ci, c),
                x + "mlp.fc1.bias": (ci,),
                x + "mlp.fc2.weight": (c, ci),
                x + "mlp.fc2.bias": (c,),
            }
        )
        if v["qkv_bias"]:
            shapes[x + "attn.qkv.bias"] = (3 * c,)
        if v["norm_type"] == "layer_norm":
            shapes.update({x + "norm1.bias": (c,), x + "norm2.bias": (c,)})
        if v["qk_normalization"]:
            shapes.update({x + "attn.q_norm.weight": (c,), x + "attn.k_norm.weight": (c,)})
    m = "language_model.model."
    if t["architectures"] == ["Qwen2ForCausalLM"]:
        shapes.update({m + "embed_tokens.weight": (vocab, h), m + "norm.weight": (h,)})
        for i in range(t["num_hidden_layers"]):
            x = f"{m}layers.{i}."
            shapes.update(
                {
                    x + "self_attn.q_proj.weight": (h, h),
                    x + "self_attn.q_proj.bias": (h,),
                    x + "self_attn.k_proj.weight": (kv, h),
                    x + "self_attn.k_proj.bias": (kv,),
                    x + "self_attn.v_proj.weight": (kv, h),
                    x + "self_attn.v_proj.bias": (kv,),
                    x + "self_attn.o_proj.weight": (h, h),
                    x + "mlp.gate_proj.weight": (hi, h),
                    x + "mlp.up_proj.weight": (hi, h),
                    x + "mlp.down_proj.weight": (h, hi),
                    x + "input_layernorm.weight": (h,),
                    x + "post_attention_layernorm.weight": (h,),
                }
            )
        head = "language_model.lm_head.weight"
    else:
        shapes.update({m + "tok_embeddings.weight": (vocab, h), m + "norm.weight": (h,)})
        for i in range(t["num_hidden_layers"]):
            x = f"{m}layers.{i}."
            shapes.update(
                {
                    x + "attention.wqkv.weight": (h + 2 * kv, h),
                    x + "attention.wo.weight": (h, h),
                    x + "feed_forward.w1.weight": (hi, h),
                    x + "feed_forward.w3.weight": (hi, h),
                    x + "feed_forward.w2.weight": (h, hi),
                    x + "attention_norm.weight": (h,),
                    x + "ffn_norm.weight": (h,),
                }
            )
        head = "language_model.output.weight"
    if not t["tie_word_embeddings"]:
        shapes[head] = (vocab, h)
    tensors = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "mlp1.0.weight")):
            tensors[name] = 1 + 0.1 * noise
        elif name.endswith((".ls1", ".ls2")):
            tensors[name] = 0.1 + 0.05 * noise
        else:
            tensors[name] = 0.1 * noise
    return tensors


def build_original(out: Path, tokenizer, llm: str, vit: str, shards: int = 1) -> Path:
    """A hand-built original-layout checkpoint with the InternLM2-style tokenizer config."""
    config = original_config_dict(len(tokenizer), llm, vit)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(out)
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    for key in native_files.image_tokens(
        {}, INTERNVL2_5
    ):  # the published tokenizers do not name the image tokens
        tok_config.pop(key)
    tok_config["auto_map"] = {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config))
    tensors = original_state_dict(config)
    names = list(tensors)
    if shards == 1:
        save_file(tensors, out / "model.safetensors")
        return out
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = names[k * len(names) // shards : (k + 1) * len(names) // shards]
        save_file({n: tensors[n] for n in part}, out / file)
        weight_map.update(dict.fromkeys(part, file))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


# ---------------------------------------------------------------------------------------------
# Reference forward passes, written from the OpenGVLab InternVLChatModel / InternLM2 code


def _norm(x: torch.Tensor, sd: dict, name: str, norm_type: str, eps: float) -> torch.Tensor:
    if norm_type == "layer_norm":
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)
    return sd[name + ".weight"] * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def reference_image_features(sd: dict, config: dict, pixels: torch.Tensor) -> torch.Tensor:
    """``InternVLChatModel.extract_feature``: InternViT (naive attention), pixel shuffle v2, mlp1."""
    v = config["vision_config"]
    c, heads, eps, norm = v["hidden_size"], v["num_attention_heads"], v["layer_norm_eps"], v["norm_type"]
    d = c // heads
    e = "vision_model.embeddings."
    x = F.conv2d(
        pixels, sd[e + "patch_embedding.weight"], sd[e + "patch_embedding.bias"], stride=v["patch_size"]
    )
    x = x.flatten(2).transpose(1, 2)
    x = (
        torch.cat([sd[e + "class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
        + sd[e + "position_embedding"]
    )
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        y = _norm(x, sd, p + "norm1", norm, eps)
        b, n, _ = y.shape
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd.get(p + "attn.qkv.bias"))
        q, k, val = qkv.reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        if v["qk_normalization"]:
            q = _norm(q.transpose(1, 2).flatten(-2), sd, p + "attn.q_norm", "rms_norm", eps)
            k = _norm(k.transpose(1, 2).flatten(-2), sd, p + "attn.k_norm", "rms_norm", eps)
            q, k = (z.view(b, n, heads, d).transpose(1, 2) for z in (q, k))
        attn = ((q * d**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = F.linear(
            (attn @ val).transpose(1, 2).reshape(b, n, c),
            sd[p + "attn.proj.weight"],
            sd[p + "attn.proj.bias"],
        )
        x = x + y * sd[p + "ls1"]
        y = _norm(x, sd, p + "norm2", norm, eps)
        y = F.linear(
            F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
            sd[p + "mlp.fc2.weight"],
            sd[p + "mlp.fc2.bias"],
        )
        x = x + y * sd[p + "ls2"]
    x = x[:, 1:]
    n, side = x.shape[0], int(x.shape[1] ** 0.5)
    x = x.reshape(n, side, side, c)  # pixel_shuffle(scale 0.5), ps_version v2:
    x = x.view(n, side, side // 2, c * 2).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, side // 2, side // 2, c * 4).permute(0, 2, 1, 3).reshape(n, -1, c * 4)
    x = F.layer_norm(x, x.shape[-1:], sd["mlp1.0.weight"], sd["mlp1.0.bias"])
    return F.linear(
        F.gelu(F.linear(x, sd["mlp1.1.weight"], sd["mlp1.1.bias"])), sd["mlp1.3.weight"], sd["mlp1.3.bias"]
    )


def reference_internlm2_logits(sd: dict, llm: dict, ids: torch.Tensor) -> torch.Tensor:
    """InternLM2ForCausalLM's forward (eager attention, no cache) from the original tensors."""
    h, heads, kv = llm["hidden_size"], llm["num_attention_heads"], llm["num_key_value_heads"]
    d, groups, eps = h // heads, heads // kv, llm["rms_norm_eps"]
    b, n = ids.shape
    m = "language_model.model."

    def rms(x: torch.Tensor, name: str) -> torch.Tensor:
        return sd[name] * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def rope(x: torch.Tensor) -> torch.Tensor:
        freqs = torch.outer(
            torch.arange(n).float(), 1.0 / llm["rope_theta"] ** (torch.arange(0, d, 2).float() / d)
        )
        emb = torch.cat([freqs, freqs], dim=-1)
        return x * emb.cos() + torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1) * emb.sin()

    x = sd[m + "tok_embeddings.weight"][ids]
    causal = torch.full((n, n), float("-inf")).triu(1)
    for i in range(llm["num_hidden_layers"]):
        p = f"{m}layers.{i}."
        qkv = F.linear(rms(x, p + "attention_norm.weight"), sd[p + "attention.wqkv.weight"])
        qkv = qkv.view(b, n, kv, groups + 2, d)  # rearrange "b q (h gs d) -> b q h gs d"
        q = rope(qkv[..., :groups, :].reshape(b, n, heads, d).transpose(1, 2))
        k = rope(qkv[..., -2, :].transpose(1, 2)).repeat_interleave(groups, dim=1)
        val = qkv[..., -1, :].transpose(1, 2).repeat_interleave(groups, dim=1)
        attn = ((q @ k.transpose(-2, -1)) * d**-0.5 + causal).softmax(dim=-1) @ val
        x = x + F.linear(attn.transpose(1, 2).reshape(b, n, h), sd[p + "attention.wo.weight"])
        y = rms(x, p + "ffn_norm.weight")
        w = {k: sd[f"{p}feed_forward.{k}.weight"] for k in ("w1", "w2", "w3")}
        x = x + F.linear(F.silu(F.linear(y, w["w1"])) * F.linear(y, w["w3"]), w["w2"])
    return F.linear(rms(x, m + "norm.weight"), sd["language_model.output.weight"])


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_split_wqkv_hand_example() -> None:
    # 4 query heads, 2 kv heads (2 query heads per group), head_dim 2: 16 rows; one input feature.
    w = torch.arange(16.0).reshape(16, 1)
    # group 0 = rows 0-7: q heads 0, 1 (rows 0-3), k (4, 5), v (6, 7); group 1 = rows 8-15 likewise
    q, k, v = conv.split_wqkv(w, num_heads=4, num_kv_heads=2, head_dim=2)
    assert q.flatten().tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert k.flatten().tolist() == [4, 5, 12, 13]
    assert v.flatten().tolist() == [6, 7, 14, 15]
    assert torch.equal(conv.merge_wqkv(q, k, v, 4, 2, 2), w)
    # head_dim 1, a bias vector: per group [q, q, k, v]
    q, k, v = conv.split_wqkv(torch.arange(8.0), num_heads=4, num_kv_heads=2, head_dim=1)
    assert (q.tolist(), k.tolist(), v.tolist()) == ([0, 1, 4, 5], [2, 6], [3, 7])
    # multi-query (one kv head), 2-column weight
    w = torch.arange(10.0).reshape(5, 2)
    q, k, v = conv.split_wqkv(w, num_heads=3, num_kv_heads=1, head_dim=1)
    assert torch.equal(q, torch.tensor([[0.0, 1], [2, 3], [4, 5]]))
    assert torch.equal(k, torch.tensor([[6.0, 7]])) and torch.equal(v, torch.tensor([[8.0, 9]]))
    with pytest.raises(ValueError, match="does not fit"):
        conv.split_wqkv(torch.zeros(7, 1), 4, 2, 1)


def test_key_mapping() -> None:
    rule = conv.map_original_name("vision_model.encoder.layers.3.attn.qkv.bias", "qwen2")
    assert rule.fuse == "qkv" and rule.native == tuple(
        f"model.vision_tower.encoder.layer.3.attention.{x}_proj.bias" for x in "qkv"
    )
    pairs = {
        "vision_model.embeddings.class_embedding": "model.vision_tower.embeddings.cls_token",
        "vision_model.embeddings.patch_embedding.weight": "model.vision_tower.embeddings.patch_embeddings.projection.weight",
        "vision_model.encoder.layers.0.ls2": "model.vision_tower.encoder.layer.0.lambda_2",
        "vision_model.encoder.layers.1.norm1.bias": "model.vision_tower.encoder.layer.1.layernorm_before.bias",
        "vision_model.encoder.layers.1.attn.proj.weight": "model.vision_tower.encoder.layer.1.attention.projection_layer.weight",
        "vision_model.encoder.layers.1.attn.k_norm.weight": "model.vision_tower.encoder.layer.1.attention.k_norm.weight",
        "mlp1.3.bias": "model.multi_modal_projector.linear_2.bias",
        "language_model.model.layers.7.feed_forward.w3.weight": "model.language_model.layers.7.mlp.up_proj.weight",
        "language_model.model.layers.7.attention_norm.weight": "model.language_model.layers.7.input_layernorm.weight",
        "language_model.output.weight": "lm_head.weight",
    }
    for original, native in pairs.items():
        assert conv.map_original_name(original, "internlm2").native == (native,)
        assert conv.map_native_name(native, "internlm2").original == original
    rule = conv.map_native_name("model.language_model.layers.2.self_attn.k_proj.weight", "internlm2")
    assert (rule.original, rule.fuse) == ("language_model.model.layers.2.attention.wqkv.weight", "wqkv")
    assert conv.map_original_name("language_model.lm_head.weight", "qwen2").native == ("lm_head.weight",)
    assert conv.map_original_name("language_model.lm_head.weight", "internlm2") is None
    assert conv.native_disk_name("model.language_model.norm.weight") == "language_model.model.norm.weight"
    for name in ("lm_head.weight", "model.vision_tower.embeddings.cls_token"):
        assert conv.native_module_name(conv.native_disk_name(name)) == conv.native_module_name(name) == name
    assert conv.parse_size("2KB") == 2000 and conv.parse_size("1MiB") == 2**20 and conv.parse_size(12) == 12


def test_is_original_layout() -> None:
    assert conv.is_original_layout(original_config_dict(100, "qwen2", "300m"))
    assert not conv.is_original_layout({"model_type": "internvl", "text_config": {}, "vision_config": {}})


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    ("llm", "vit", "tie"),
    [("qwen2", "300m", False), ("llama", "6b", False), ("qwen2", "6b", True), ("llama", "300m", True)],
)
def test_native_round_trip(tmp_path: Path, tokenizer, llm: str, vit: str, tie: bool) -> None:
    native = build_native(tmp_path / "native", tokenizer, llm, vit, tie)
    conv.convert(native, tmp_path / "orig", to="original")
    original = json.loads((tmp_path / "orig" / "config.json").read_text())
    weights = load_weights(tmp_path / "orig")
    family = "InternLM2ForCausalLM" if llm == "llama" else "Qwen2ForCausalLM"
    assert original["llm_config"]["architectures"] == [family]
    assert original["llm_config"]["tie_word_embeddings"] is tie
    assert original["vision_config"]["norm_type"] == ("layer_norm" if vit == "300m" else "rms_norm")
    assert original["vision_config"]["qk_normalization"] is (vit == "6b")
    assert original["vision_config"]["qkv_bias"] is (vit == "300m")
    assert original["max_dynamic_patch"] == 6 and original["force_image_size"] == 64
    assert all(n.startswith(("vision_model.", "mlp1.", "language_model.")) for n in weights)
    assert ("vision_model.encoder.layers.1.attn.qkv.bias" in weights) is (vit == "300m")
    assert ("language_model.model.layers.0.attention.wqkv.weight" in weights) is (llm == "llama")
    assert any(n.endswith(("lm_head.weight", "output.weight")) for n in weights) is not tie

    conv.convert(tmp_path / "orig", tmp_path / "back")
    assert_same_tensors(load_weights(native), load_weights(tmp_path / "back"))
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == json.loads(
        (native / "config.json").read_text()
    )


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_logits_identical_after_round_trip(tmp_path: Path, tokenizer, llm: str) -> None:
    native = build_native(tmp_path / "native", tokenizer, llm, "300m", tie=False)
    conv.convert(native, tmp_path / "orig", to="original")
    conv.convert(tmp_path / "orig", tmp_path / "back")
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(tmp_path / "back")
    image = Image.fromarray(torch.randint(0, 256, (90, 150, 3), dtype=torch.uint8).numpy())
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    num_tiles = inputs["pixel_values"].shape[0]
    assert (inputs["input_ids"] == processor.image_token_id).sum() == num_tiles * TOKENS_PER_TILE
    with torch.no_grad():
        before = InternVLForConditionalGeneration.from_pretrained(native).eval()(**inputs).logits
        after = InternVLForConditionalGeneration.from_pretrained(tmp_path / "back").eval()(**inputs).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize(("llm", "vit"), [("qwen2", "300m"), ("internlm2", "6b")])
def test_hand_built_original(tmp_path: Path, tokenizer, llm: str, vit: str) -> None:
    src = build_original(tmp_path / "orig", tokenizer, llm, vit)
    start = json.loads((src / "config.json").read_text())
    conv.convert(src, tmp_path / "native")

    model, info = InternVLForConditionalGeneration.from_pretrained(
        tmp_path / "native", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert model.config.image_seq_length == TOKENS_PER_TILE
    assert model.config.text_config.model_type == ("qwen2" if llm == "qwen2" else "llama")
    assert model.config.vision_config.use_qk_norm is (vit == "6b")
    processor = AutoProcessor.from_pretrained(tmp_path / "native")
    assert processor.image_processor.max_patches == 6 and processor.image_processor.size.height == 64
    assert "auto_map" not in json.loads((tmp_path / "native" / "tokenizer_config.json").read_text())
    if llm == "internlm2":
        assert model.config.text_config.rope_parameters["rope_type"] == "dynamic"

    # the native model computes what the original code computes
    sd = load_weights(src)
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 64, 64)
    ids = torch.randint(20, len(tokenizer), (2, 9))
    with torch.no_grad():
        features = model.get_image_features(
            pixels, vision_feature_layer=-1, vision_feature_select_strategy="default"
        )
        logits = model(input_ids=ids).logits
        torch.testing.assert_close(
            features.pooler_output, reference_image_features(sd, start, pixels), atol=1e-5, rtol=1e-4
        )
        if llm == "qwen2":
            reference = Qwen2ForCausalLM(Qwen2Config(**start["llm_config"])).eval()
            llm_weights = {
                n.removeprefix("language_model."): t for n, t in sd.items() if "language_model." in n
            }
            reference.load_state_dict(llm_weights)
            expected = reference(input_ids=ids).logits
        else:
            expected = reference_internlm2_logits(sd, start["llm_config"], ids)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)

    conv.convert(tmp_path / "native", tmp_path / "back", to="original")
    assert_same_tensors(sd, load_weights(tmp_path / "back"))
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    for key, value in start.items():
        if key not in ("vision_config", "llm_config"):
            assert back[key] == value, key
    assert start["vision_config"].items() <= back["vision_config"].items()
    assert start["llm_config"].items() <= back["llm_config"].items()


def test_sharded_input_read_one_shard_at_a_time(tmp_path: Path, tokenizer, monkeypatch) -> None:
    src = build_original(tmp_path / "orig", tokenizer, "internlm2", "6b", shards=3)
    opened, state = [], {"open": 0, "most": 0}
    real_safe_open = conv.safe_open

    class TrackedSafeOpen:
        def __init__(self, path: str, framework: str) -> None:
            opened.append(Path(path).name)
            self.inner = real_safe_open(path, framework=framework)

        def __enter__(self):
            state["open"] += 1
            state["most"] = max(state["most"], state["open"])
            return self.inner.__enter__()

        def __exit__(self, *exc) -> None:
            state["open"] -= 1
            self.inner.__exit__(*exc)

    monkeypatch.setattr(conv, "safe_open", TrackedSafeOpen)
    files = conv.convert(src, tmp_path / "native", max_shard_size="40KB")
    assert opened == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)] and state["most"] == 1
    index = json.loads((tmp_path / "native" / "model.safetensors.index.json").read_text())
    assert len(files) > 2 and sorted({f.name for f in files}) == sorted(set(index["weight_map"].values()))
    for file in files:  # at most 40 kB of tensors, or one tensor larger than that
        shard = load_file(file)
        assert len(shard) == 1 or sum(t.numel() * t.element_size() for t in shard.values()) <= 40_000
    weights = load_weights(tmp_path / "native")
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in weights.values())
    assert set(index["weight_map"]) == set(weights)

    # native shards split q/k/v of one layer across files: merged back all the same
    opened.clear()
    conv.convert(tmp_path / "native", tmp_path / "back", to="original", max_shard_size="1GB")
    assert len(opened) == len(files) and state["most"] == 1
    assert [p.name for p in (tmp_path / "back").glob("*.safetensors")] == ["model.safetensors"]
    assert_same_tensors(load_weights(src), load_weights(tmp_path / "back"))


# ---------------------------------------------------------------------------------------------
# Bad input


def raises_naming(path: Path, message: str):
    """Expect a UserError whose message starts by naming ``path``."""
    return pytest.raises(UserError, match="^" + re.escape(f"{path}: {message}"))


def test_bad_inputs(tmp_path: Path, tokenizer) -> None:
    missing = tmp_path / "nope"
    with raises_naming(missing, "checkpoint directory not found"):
        conv.convert(missing, tmp_path / "out")

    (tmp_path / "empty").mkdir()
    with raises_naming(tmp_path / "empty" / "config.json", "not found"):
        conv.convert(tmp_path / "empty", tmp_path / "out")

    corrupt = build_original(tmp_path / "corrupt", tokenizer, "qwen2", "300m")
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 10)
    with raises_naming(corrupt / "model.safetensors", "not a readable safetensors file"):
        conv.convert(corrupt, tmp_path / "out1")

    unknown = build_original(tmp_path / "unknown", tokenizer, "qwen2", "300m")
    config = json.loads((unknown / "config.json").read_text())
    good_llm = dict(config["llm_config"])
    config["llm_config"]["architectures"] = ["MistralForCausalLM"]
    (unknown / "config.json").write_text(json.dumps(config))
    with raises_naming(unknown / "config.json", "unsupported LLM architecture 'MistralForCausalLM'"):
        conv.convert(unknown, tmp_path / "out2")

    del config["vision_config"]["image_size"]
    (unknown / "config.json").write_text(json.dumps(config | {"llm_config": good_llm}))
    with raises_naming(unknown / "config.json", "vision_config lacks image_size"):
        conv.convert(unknown, tmp_path / "out2")

    good = build_original(tmp_path / "good", tokenizer, "qwen2", "300m")
    with pytest.raises(UserError, match="already in the original layout"):
        conv.convert(good, tmp_path / "out3", to="original")
    with pytest.raises(UserError, match="exists and is not an empty directory"):
        conv.convert(good, unknown)


def test_cli_error_is_one_line(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing"
    assert cli.main(["convert", str(missing), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "Traceback" not in err
