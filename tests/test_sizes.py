"""Every published InternVL2.5 size at its real widths, on the meta device (nothing materialised).

The original-layout key set of a size is written here from OpenGVLab's modeling code
(``modeling_intern_vit.py``: InternVisionEmbeddings / InternAttention / InternMLP /
InternVisionEncoderLayer; ``modeling_internvl_chat.py``: ``mlp1``; Qwen2 and InternLM2 causal LMs), not
from the converter's rules. The native key set is transformers' own ``InternVLForConditionalGeneration``
built on the meta device. The converter must turn the one into the other exactly, both ways.
"""

from __future__ import annotations

import pytest
import torch
from transformers import InternVLForConditionalGeneration

from mpo.errors import UserError
from mpo.models import convert
from mpo.models.sizes import IMAGE_SIZE, INTERNLM2, PATCH_SIZE, SIZES, Size, original_config

# Parameter counts of the published checkpoints (Hugging Face "Model size" of OpenGVLab/InternVL2_5-<N>B).
PUBLISHED_PARAMS = {
    "1b": 0.938e9,
    "2b": 2.21e9,
    "4b": 3.71e9,
    "8b": 8.08e9,
    "26b": 25.5e9,
    "38b": 38.4e9,
    "78b": 78.4e9,
}
IMAGE_TOKEN_ID = 7  # any id inside the vocabulary


def upstream_shapes(size: Size) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of an original-layout checkpoint, as OpenGVLab's modules define them."""
    v, llm = size.vision, size.llm
    d, ffn = v.hidden_size, v.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, d),
        "vision_model.embeddings.patch_embedding.weight": (d, 3, PATCH_SIZE, PATCH_SIZE),
        "vision_model.embeddings.patch_embedding.bias": (d,),
        "vision_model.embeddings.position_embedding": (1, (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1, d),
    }
    norm_params = ("weight", "bias") if v.norm_type == "layer_norm" else ("weight",)
    for i in range(v.num_hidden_layers):
        p = f"vision_model.encoder.layers.{i}."
        shapes[p + "attn.qkv.weight"] = (3 * d, d)
        if v.qkv_bias:
            shapes[p + "attn.qkv.bias"] = (3 * d,)
        if v.qk_normalization:  # InternRMSNorm: weight only
            shapes[p + "attn.q_norm.weight"] = shapes[p + "attn.k_norm.weight"] = (d,)
        shapes[p + "attn.proj.weight"], shapes[p + "attn.proj.bias"] = (d, d), (d,)
        shapes[p + "ls1"] = shapes[p + "ls2"] = (d,)
        for norm in ("norm1", "norm2"):
            for param in norm_params:
                shapes[f"{p}{norm}.{param}"] = (d,)
        shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (ffn, d), (ffn,)
        shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (d, ffn), (d,)
    unshuffled = d * int(1 / size.downsample_ratio) ** 2
    h, vocab = llm.hidden_size, llm.vocab_size
    shapes |= {
        "mlp1.0.weight": (unshuffled,),
        "mlp1.0.bias": (unshuffled,),
        "mlp1.1.weight": (h, unshuffled),
        "mlp1.1.bias": (h,),
        "mlp1.3.weight": (h, h),
        "mlp1.3.bias": (h,),
    }
    head_dim = h // llm.num_attention_heads
    q, kv, inter = (
        llm.num_attention_heads * head_dim,
        llm.num_key_value_heads * head_dim,
        llm.intermediate_size,
    )
    if llm.architecture == INTERNLM2:
        shapes["language_model.model.tok_embeddings.weight"] = (vocab, h)
        for i in range(llm.num_hidden_layers):
            p = f"language_model.model.layers.{i}."
            shapes[p + "attention.wqkv.weight"] = (q + 2 * kv, h)
            shapes[p + "attention.wo.weight"] = (h, q)
            shapes[p + "feed_forward.w1.weight"] = shapes[p + "feed_forward.w3.weight"] = (inter, h)
            shapes[p + "feed_forward.w2.weight"] = (h, inter)
            shapes[p + "attention_norm.weight"] = shapes[p + "ffn_norm.weight"] = (h,)
        shapes["language_model.model.norm.weight"] = (h,)
        shapes["language_model.output.weight"] = (vocab, h)
    else:  # Qwen2: q, k, v with bias, o without
        shapes["language_model.model.embed_tokens.weight"] = (vocab, h)
        for i in range(llm.num_hidden_layers):
            p = f"language_model.model.layers.{i}."
            for name, rows in (("q", q), ("k", kv), ("v", kv)):
                shapes[f"{p}self_attn.{name}_proj.weight"], shapes[f"{p}self_attn.{name}_proj.bias"] = (
                    (rows, h),
                    (rows,),
                )
            shapes[p + "self_attn.o_proj.weight"] = (h, q)
            shapes[p + "mlp.gate_proj.weight"] = shapes[p + "mlp.up_proj.weight"] = (inter, h)
            shapes[p + "mlp.down_proj.weight"] = (h, inter)
            shapes[p + "input_layernorm.weight"] = shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes["language_model.model.norm.weight"] = (h,)
        shapes["language_model.lm_head.weight"] = (vocab, h)
    return shapes


def meta_tensors(shapes: dict[str, tuple[int, ...]]):
    return ((name, torch.empty(shape, device="meta")) for name, shape in shapes.items())


def converted(
    shapes: dict[str, tuple[int, ...]], to: str, spec: convert.LLMSpec
) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, tensor in convert.convert_tensors(meta_tensors(shapes), to, spec, "meta checkpoint"):
        assert tensor.is_meta, f"{name} was materialised"
        assert name not in out, f"{name} written twice"
        out[name] = tuple(tensor.shape)
    return out


def native_model_shapes(size: Size) -> tuple[dict[str, tuple[int, ...]], convert.LLMSpec]:
    """Name (as save_pretrained writes it) -> shape of transformers' InternVL built from the size's config."""
    config = convert.native_config(original_config(size), IMAGE_TOKEN_ID, f"InternVL2.5-{size.name}")
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    shapes = {convert.native_disk_name(k): tuple(t.shape) for k, t in model.state_dict().items()}
    return shapes, convert.llm_spec(config, size.name)


@pytest.mark.parametrize("key", list(SIZES))
def test_every_key_maps_at_full_shape_both_ways(key):
    size = SIZES[key]
    original = upstream_shapes(size)
    native, native_spec = native_model_shapes(size)
    assert sum(torch.Size(s).numel() for s in original.values()) == pytest.approx(
        PUBLISHED_PARAMS[key], rel=5e-3
    )
    original_spec = convert.llm_spec(original_config(size), size.name)
    assert native_spec == original_spec
    assert converted(original, "native", original_spec) == native
    assert converted(native, "original", native_spec) == original


@pytest.mark.parametrize(
    ("key", "family", "rule_prefix", "unmapped"),
    [
        (
            "78b",
            None,
            "vision_model.encoder.layers.{i}.attn.q_norm",
            "vision_model.encoder.layers.0.attn.q_norm.weight",
        ),
        (
            "8b",
            "internlm2",
            "language_model.model.layers.{i}.ffn_norm",
            "language_model.model.layers.0.ffn_norm.weight",
        ),
        ("1b", "qwen2", "language_model.lm_head", "language_model.lm_head.weight"),
    ],
)
def test_a_deleted_rule_fails_naming_the_key(monkeypatch, key, family, rule_prefix, unmapped):
    def without(rules):
        kept = tuple(r for r in rules if not r.original.startswith(rule_prefix))
        assert len(kept) == len(rules) - 1
        return kept

    if family is None:
        monkeypatch.setattr(convert, "VISION_RULES", without(convert.VISION_RULES))
    else:
        monkeypatch.setitem(convert.LLM_RULES, family, without(convert.LLM_RULES[family]))
    size = SIZES[key]
    with pytest.raises(UserError, match=f"tensor '{unmapped}' has no native counterpart"):
        converted(upstream_shapes(size), "native", convert.llm_spec(original_config(size), key))


def test_table_matches_the_llm_families():
    """Each size's LLM family and vision tower, as the InternVL2.5 model card lists them."""
    listed = {
        "1b": ("InternViT-300M-448px-V2_5", "Qwen2.5-0.5B-Instruct"),
        "2b": ("InternViT-300M-448px-V2_5", "internlm2_5-1_8b-chat"),
        "4b": ("InternViT-300M-448px-V2_5", "Qwen2.5-3B-Instruct"),
        "8b": ("InternViT-300M-448px-V2_5", "internlm2_5-7b-chat"),
        "26b": ("InternViT-6B-448px-V2_5", "internlm2_5-20b-chat"),
        "38b": ("InternViT-6B-448px-V2_5", "Qwen2.5-32B-Instruct"),
        "78b": ("InternViT-6B-448px-V2_5", "Qwen2.5-72B-Instruct"),
    }
    assert {k: (s.vision.name, s.llm.name) for k, s in SIZES.items()} == listed
    assert all(s.tokens_per_tile == 256 for s in SIZES.values())
