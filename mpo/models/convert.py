"""Convert InternVL checkpoints between the original OpenGVLab layout and native transformers.

The original layout (``InternVLChatModel``, loaded with ``trust_remote_code``) names the vision tower
``vision_model.*``, the projector ``mlp1.{0,1,3}`` and the LLM ``language_model.*`` with the LLM's own
names: Qwen2 names for Qwen2.5 LLMs, InternLM2 names (fused, group-interleaved ``wqkv``) for
InternLM2.5 LLMs, which map onto Llama. The native layout is transformers'
``InternVLForConditionalGeneration``. Which LLMs a checkpoint may hold, and the template and tokens its
converted files get, are its model family's (:mod:`mpo.models.families`, detected from config.json or
named with ``--family``); both layouts record the family under ``mpo_family``.

Nothing here runs remote code: config.json and the safetensors shards are read directly, one shard at
a time, and output shards are written as they fill, so peak memory is about one output shard.
Mapping works on module names (``model.vision_tower.*``, ``model.multi_modal_projector.*``,
``model.language_model.*``, ``lm_head``); native files are written with the names transformers'
own ``save_pretrained`` writes (``vision_tower.*``, ``language_model.model.*``,
``language_model.lm_head``, as in the published ``-hf`` checkpoints), and both spellings are read.
A native output is a complete checkpoint: besides weights and config, the tokenizer, processor, chat
template and generation config of ``mpo.models.native_files``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import InternVLConfig, InternVLProcessor, LlamaConfig, PreTrainedConfig, Qwen2Config

from mpo.errors import UserError
from mpo.models import families, native_files
from mpo.models.families.base import Family

ORIGINAL_ARCH = "InternVLChatModel"
ORIGINAL_MODEL_TYPE = "internvl_chat"
NATIVE_MODEL_TYPE = "internvl"
# LLM family (the key-mapping rules, named by a model family's Conversion.llm_architectures) -> its native
# text model.
NATIVE_TEXT_MODEL = {"qwen2": "qwen2", "internlm2": "llama"}
LM_HEAD = "lm_head.weight"

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)
# Module-name prefix -> the prefix transformers' save_pretrained writes for InternVL.
NATIVE_DISK_PREFIXES = (
    ("lm_head.", "language_model.lm_head."),
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)
# Fixed keys of InternVL's original config.json that the native config does not carry (the family adds
# its "template").
ORIGINAL_DEFAULTS = {
    "ps_version": "v2",
    "dynamic_image_size": True,
    "use_thumbnail": True,
    "use_backbone_lora": 0,
    "use_llm_lora": 0,
    "auto_map": {
        "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
        "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
    },
}


# ---------------------------------------------------------------------------------------------
# Layout detection


def is_original_layout(config: dict[str, Any]) -> bool:
    """Whether a config.json dict describes an original OpenGVLab ``InternVLChatModel`` checkpoint."""
    return (
        config.get("model_type") == ORIGINAL_MODEL_TYPE
        or ORIGINAL_ARCH in (config.get("architectures") or [])
        or "llm_config" in config
    )


def llm_family(config: dict[str, Any], where: Path | str) -> str:
    """The LLM family (``qwen2`` or ``internlm2``) of an original config, among those its model family
    converts (``Conversion.llm_architectures``); UserError if unsupported."""
    model_family = families.detect(config, where)
    allowed = model_family.conversion.llm_architectures
    archs = (config.get("llm_config") or {}).get("architectures") or ["<missing>"]
    if archs[0] not in allowed:
        expected = " or ".join(allowed)
        raise UserError(
            f"{where}: unsupported LLM architecture {archs[0]!r} for {model_family.title} (expected {expected})"
        )
    return allowed[archs[0]]


def native_family(config: InternVLConfig, where: Path | str) -> str:
    """The LLM family of a native config, from its text model type, among those its model family
    converts; UserError if unsupported."""
    model_family = families.detect(config.to_dict(), where)
    allowed = {NATIVE_TEXT_MODEL[kind]: kind for kind in model_family.conversion.llm_architectures.values()}
    if config.text_config.model_type in allowed:
        return allowed[config.text_config.model_type]
    expected = " or ".join(allowed)
    raise UserError(
        f"{where}: unsupported text model {config.text_config.model_type!r} for {model_family.title} "
        f"(expected {expected})"
    )


# ---------------------------------------------------------------------------------------------
# Key mapping: one rule table read in both directions


@dataclass(frozen=True)
class Rule:
    """An original name pattern and the native pattern(s) it corresponds to.

    Patterns use ``{i}`` (a layer index), ``{p}`` (``weight`` or ``bias``) and ``{rest}`` (anything).
    Several native patterns mean the original tensor fuses them along dim 0, as ``fuse`` says:
    ``qkv`` (plain concatenation) or ``wqkv`` (InternLM2's per-key-value-group interleaving).
    """

    original: str
    native: tuple[str, ...]
    fuse: str | None = None


def _rules(
    original_prefix: str, native_prefix: str, pairs: list[tuple[str, Any, str | None]]
) -> tuple[Rule, ...]:
    """Rules from (original, native or (q, k, v) natives, fuse) triples, under common name prefixes."""
    return tuple(
        Rule(
            original_prefix + o,
            tuple(native_prefix + n for n in ((ns,) if isinstance(ns, str) else ns)),
            fuse,
        )
        for o, ns, fuse in pairs
    )


VISION_RULES = _rules(
    "vision_model.",
    "model.vision_tower.",
    [
        ("embeddings.class_embedding", "embeddings.cls_token", None),
        ("embeddings.position_embedding", "embeddings.position_embeddings", None),
        ("embeddings.patch_embedding.{p}", "embeddings.patch_embeddings.projection.{p}", None),
        (
            "encoder.layers.{i}.attn.qkv.{p}",
            tuple(f"encoder.layer.{{i}}.attention.{x}_proj.{{p}}" for x in "qkv"),
            "qkv",
        ),
        ("encoder.layers.{i}.attn.proj.{p}", "encoder.layer.{i}.attention.projection_layer.{p}", None),
        ("encoder.layers.{i}.attn.q_norm.{p}", "encoder.layer.{i}.attention.q_norm.{p}", None),
        ("encoder.layers.{i}.attn.k_norm.{p}", "encoder.layer.{i}.attention.k_norm.{p}", None),
        ("encoder.layers.{i}.ls1", "encoder.layer.{i}.lambda_1", None),
        ("encoder.layers.{i}.ls2", "encoder.layer.{i}.lambda_2", None),
        ("encoder.layers.{i}.norm1.{p}", "encoder.layer.{i}.layernorm_before.{p}", None),
        ("encoder.layers.{i}.norm2.{p}", "encoder.layer.{i}.layernorm_after.{p}", None),
        ("encoder.layers.{i}.mlp.fc1.{p}", "encoder.layer.{i}.mlp.fc1.{p}", None),
        ("encoder.layers.{i}.mlp.fc2.{p}", "encoder.layer.{i}.mlp.fc2.{p}", None),
    ],
)
PROJECTOR_RULES = _rules(
    "mlp1.",
    "model.multi_modal_projector.",
    [
        ("0.{p}", "layer_norm.{p}", None),
        ("1.{p}", "linear_1.{p}", None),
        ("3.{p}", "linear_2.{p}", None),
    ],
)
QWEN2_RULES = _rules(
    "language_model.",
    "",
    [
        ("model.{rest}", "model.language_model.{rest}", None),
        ("lm_head.{p}", "lm_head.{p}", None),
    ],
)
INTERNLM2_RULES = _rules(
    "language_model.",
    "",
    [
        ("model.tok_embeddings.weight", "model.language_model.embed_tokens.weight", None),
        (
            "model.layers.{i}.attention.wqkv.{p}",
            tuple(f"model.language_model.layers.{{i}}.self_attn.{x}_proj.{{p}}" for x in "qkv"),
            "wqkv",
        ),
        ("model.layers.{i}.attention.wo.{p}", "model.language_model.layers.{i}.self_attn.o_proj.{p}", None),
        (
            "model.layers.{i}.feed_forward.w1.weight",
            "model.language_model.layers.{i}.mlp.gate_proj.weight",
            None,
        ),
        (
            "model.layers.{i}.feed_forward.w3.weight",
            "model.language_model.layers.{i}.mlp.up_proj.weight",
            None,
        ),
        (
            "model.layers.{i}.feed_forward.w2.weight",
            "model.language_model.layers.{i}.mlp.down_proj.weight",
            None,
        ),
        (
            "model.layers.{i}.attention_norm.weight",
            "model.language_model.layers.{i}.input_layernorm.weight",
            None,
        ),
        (
            "model.layers.{i}.ffn_norm.weight",
            "model.language_model.layers.{i}.post_attention_layernorm.weight",
            None,
        ),
        ("model.norm.weight", "model.language_model.norm.weight", None),
        ("output.weight", LM_HEAD, None),
    ],
)
LLM_RULES = {"qwen2": QWEN2_RULES, "internlm2": INTERNLM2_RULES}


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    groups = {"{i}": r"(?P<i>\d+)", "{p}": r"(?P<p>weight|bias)", "{rest}": r"(?P<rest>.+)"}
    parts = re.split(r"(\{i\}|\{p\}|\{rest\})", pattern)
    return re.compile("".join(groups.get(part, re.escape(part)) for part in parts))


def _match(name: str, side: str, family: str) -> Rule | None:
    """The concrete rule (patterns filled in) whose ``side`` (original or native) matches ``name``."""
    for rule in VISION_RULES + PROJECTOR_RULES + LLM_RULES[family]:
        for pattern in (rule.original,) if side == "original" else rule.native:
            found = _regex(pattern).fullmatch(name)
            if found:
                fill = found.groupdict()
                return Rule(
                    rule.original.format(**fill), tuple(n.format(**fill) for n in rule.native), rule.fuse
                )
    return None


def map_original_name(name: str, family: str) -> Rule | None:
    """The native name(s) of an original tensor name (None if it has no mapping)."""
    return _match(name, "original", family)


def map_native_name(name: str, family: str) -> Rule | None:
    """The original tensor that a native (module) name is, or is part of (None if no mapping)."""
    return _match(name, "native", family)


def native_disk_name(name: str) -> str:
    """The name transformers' ``save_pretrained`` writes for a native module name."""
    for module, disk in NATIVE_DISK_PREFIXES:
        if name.startswith(module):
            return disk + name[len(module) :]
    return name


def native_module_name(name: str) -> str:
    """The module name of a native tensor name as found on disk (either spelling)."""
    for module, disk in NATIVE_DISK_PREFIXES:
        if name.startswith(disk):
            return module + name[len(disk) :]
    return name


# ---------------------------------------------------------------------------------------------
# Tensor transforms


class Heads(NamedTuple):
    """Attention geometry of the LLM, needed to (un)interleave InternLM2's ``wqkv``."""

    num_heads: int
    num_kv_heads: int
    head_dim: int


def split_wqkv(
    w: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split InternLM2's fused ``wqkv`` (weight or bias) into q, k, v projections.

    Along dim 0, ``wqkv`` holds one block per key-value group g: the group's
    ``num_heads // num_kv_heads`` query heads, then its key head, then its value head, each
    ``head_dim`` rows. Returns new contiguous tensors (no shared storage).
    """
    groups, rest = _groups(w.shape[0], num_heads, num_kv_heads, head_dim), w.shape[1:]
    blocks = w.reshape(num_kv_heads, groups + 2, head_dim, *rest)
    q = blocks[:, :groups].reshape(num_heads * head_dim, *rest)
    k = blocks[:, groups].reshape(num_kv_heads * head_dim, *rest)
    v = blocks[:, groups + 1].reshape(num_kv_heads * head_dim, *rest)
    return q.clone(), k.clone(), v.clone()


def merge_wqkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> torch.Tensor:
    """Fuse q, k, v projections into InternLM2's interleaved ``wqkv``: the inverse of ``split_wqkv``."""
    rows = q.shape[0] + k.shape[0] + v.shape[0]
    groups, rest = _groups(rows, num_heads, num_kv_heads, head_dim), q.shape[1:]
    blocks = [
        q.reshape(num_kv_heads, groups, head_dim, *rest),
        k.reshape(num_kv_heads, 1, head_dim, *rest),
        v.reshape(num_kv_heads, 1, head_dim, *rest),
    ]
    return torch.cat(blocks, dim=1).reshape(rows, *rest)


def _groups(rows: int, num_heads: int, num_kv_heads: int, head_dim: int) -> int:
    if num_heads % num_kv_heads or rows != (num_heads + 2 * num_kv_heads) * head_dim:
        raise ValueError(
            f"wqkv with {rows} rows does not fit {num_heads} heads, {num_kv_heads} kv heads of dim {head_dim}"
        )
    return num_heads // num_kv_heads


def split_fused(tensor: torch.Tensor, fuse: str, heads: Heads) -> tuple[torch.Tensor, ...]:
    """The native q, k, v parts of a fused original tensor (``qkv`` or ``wqkv``)."""
    if fuse == "wqkv":
        return split_wqkv(tensor, *heads)
    return tuple(part.clone() for part in tensor.chunk(3, dim=0))


def merge_fused(parts: list[torch.Tensor], fuse: str, heads: Heads) -> torch.Tensor:
    """The fused original tensor of native q, k, v parts: the inverse of ``split_fused``."""
    if fuse == "wqkv":
        return merge_wqkv(*parts, *heads)
    return torch.cat(parts, dim=0)


@dataclass(frozen=True)
class LLMSpec:
    """What tensor conversion needs to know about the LLM."""

    family: str
    heads: Heads
    tie_word_embeddings: bool


def convert_tensors(
    tensors: Iterable[tuple[str, torch.Tensor]], to: str, spec: LLMSpec, where: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream-convert (name, tensor) pairs to the ``to`` layout (``native`` or ``original``).

    Native names are written as transformers saves them and read in either spelling. Parts of a
    fused tensor may arrive in any order (from different shards): they are held until complete.
    A tied ``lm_head`` is dropped. ``where`` (the source) is named in error messages.
    """
    pending: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in tensors:
        native = name if to == "native" else native_module_name(name)
        rule = (
            map_original_name(name, spec.family) if to == "native" else map_native_name(native, spec.family)
        )
        if rule is None:
            raise UserError(f"{where}: tensor {name!r} has no {to} counterpart ({spec.family} LLM)")
        if to == "native":
            parts = split_fused(tensor, rule.fuse, spec.heads) if rule.fuse else (tensor,)
            for out_name, part in zip(rule.native, parts, strict=True):
                if not (spec.tie_word_embeddings and out_name == LM_HEAD):
                    yield native_disk_name(out_name), part
        elif spec.tie_word_embeddings and native == LM_HEAD:
            continue
        elif rule.fuse is None:
            yield rule.original, tensor
        else:
            got = pending.setdefault(rule.original, {})
            got[rule.native.index(native)] = tensor
            if len(got) == len(rule.native):
                del pending[rule.original]
                yield rule.original, merge_fused([got[i] for i in range(len(got))], rule.fuse, spec.heads)
    if pending:
        raise UserError(f"{where}: incomplete checkpoint, parts missing for {', '.join(sorted(pending))}")


# ---------------------------------------------------------------------------------------------
# Configs


# native vision config key -> original vision config key
VISION_KEYS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "image_size": "image_size",
    "patch_size": "patch_size",
    "num_channels": "num_channels",
    "hidden_act": "hidden_act",
    "norm_type": "norm_type",
    "layer_norm_eps": "layer_norm_eps",
    "initializer_range": "initializer_range",
    "attention_dropout": "attention_dropout",
    "use_qk_norm": "qk_normalization",
    "attention_bias": "qkv_bias",
    "layer_scale_init_value": "initializer_factor",
    "hidden_dropout_prob": "dropout",
}
# What an original config must hold for conversion (the rest has InternVL2.5 defaults).
ORIGINAL_REQUIRED = {
    "vision_config": (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "image_size",
        "patch_size",
    ),
    "llm_config": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"),
}
# Llama config keys that InternLM2 configs spell the same; ``attention_bias`` is InternLM2's ``bias``.
INTERNLM2_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
)


def _own_fields(config_class: type[PreTrainedConfig]) -> list[str]:
    """The config fields a model config class declares (not the generic PreTrainedConfig ones)."""
    base = {f.name for f in fields(PreTrainedConfig)}
    return [f.name for f in fields(config_class) if f.name not in base]


def rope_parameters(llm: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``rope_parameters`` from an original LLM config's ``rope_theta``/``rope_scaling``."""
    if llm.get("rope_parameters"):
        return dict(llm["rope_parameters"])
    scaling = dict(llm.get("rope_scaling") or {})
    rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
    return {"rope_type": rope_type, "rope_theta": llm.get("rope_theta", 10000.0), **scaling}


def legacy_rope(params: dict[str, Any]) -> dict[str, Any]:
    """``rope_theta`` and ``rope_scaling`` (as the original remote code reads them) from ``rope_parameters``."""
    scaling = {k: v for k, v in params.items() if k not in ("rope_type", "rope_theta")}
    rope_type = params.get("rope_type", "default")
    return {
        "rope_theta": params.get("rope_theta", 10000.0),
        "rope_scaling": None if rope_type == "default" else {"type": rope_type, **scaling},
    }


def native_text_config(llm: dict[str, Any], family: str) -> PreTrainedConfig:
    """The native text config (Qwen2 or Llama) of an original ``llm_config``."""
    if family == "qwen2":
        kept = {k: llm[k] for k in _own_fields(Qwen2Config) if k in llm and k != "rope_parameters"}
        return Qwen2Config(**kept, rope_parameters=rope_parameters(llm))
    kept = {k: llm[k] for k in INTERNLM2_KEYS if k in llm}
    return LlamaConfig(
        **kept, attention_bias=bool(llm.get("bias", False)), rope_parameters=rope_parameters(llm)
    )


def original_llm_config(text: PreTrainedConfig, family: str, where: Path | str) -> dict[str, Any]:
    """The original ``llm_config`` of a native text config (Qwen2 kept, Llama written as InternLM2)."""
    values = text.to_dict()
    rope = legacy_rope(values.get("rope_parameters") or {})
    if family == "qwen2":
        kept = {k: values[k] for k in _own_fields(Qwen2Config) if k != "rope_parameters"}
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **kept, **rope}
    if values.get("mlp_bias") or text.head_dim != text.hidden_size // text.num_attention_heads:
        raise UserError(
            f"{where}: this Llama text model (mlp_bias or a custom head_dim) has no InternLM2 form"
        )
    kept = {k: values[k] for k in INTERNLM2_KEYS}
    arch = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2"}
    return {**arch, **kept, "bias": bool(values.get("attention_bias")), **rope}


def check_original_config(config: dict[str, Any], where: Path | str) -> str:
    """Check that an original config has what conversion reads; returns its LLM family."""
    family = llm_family(config, where)
    for section, keys in ORIGINAL_REQUIRED.items():
        missing = [key for key in keys if key not in (config.get(section) or {})]
        if missing:
            raise UserError(f"{where}: {section} lacks {', '.join(missing)}")
    return family


def tokens_per_tile(original: dict[str, Any]) -> int:
    """Image tokens per tile of an original config, as upstream computes them: (image size / patch
    size)^2 x downsample ratio^2, the image size being ``force_image_size`` or else the vision tower's
    (InternVL2.5: (448 / 14)^2 x 0.5^2 = 256)."""
    vision = original["vision_config"]
    side = original.get("force_image_size") or vision["image_size"]
    return int((side // vision["patch_size"]) ** 2 * original.get("downsample_ratio", 0.5) ** 2)


def native_config(original: dict[str, Any], image_token_id: int, where: Path | str) -> InternVLConfig:
    """The native ``InternVLConfig`` of an original config.json dict."""
    family = check_original_config(original, where)
    if original.get("ps_version", "v2") != "v2":
        raise UserError(f"{where}: ps_version {original['ps_version']!r} is not supported (only v2)")
    vision_in = original["vision_config"]
    vision = {native: vision_in[key] for native, key in VISION_KEYS.items() if key in vision_in}
    llm = original["llm_config"]
    tie = bool(llm.get("tie_word_embeddings", False))
    text = native_text_config({**llm, "tie_word_embeddings": tie}, family)
    config = InternVLConfig(
        vision_config=vision,
        text_config=text.to_dict(),
        image_token_id=image_token_id,
        image_seq_length=tokens_per_tile(original),
        **{families.FAMILY_KEY: families.detect(original, where).name},
        downsample_ratio=original.get("downsample_ratio", 0.5),
        vision_feature_layer=original.get("select_layer", -1),
        tie_word_embeddings=tie,
        dtype=original.get("torch_dtype") or llm.get("torch_dtype"),
    )
    config.architectures = ["InternVLForConditionalGeneration"]
    return config


def original_config(
    native: InternVLConfig, min_patches: int, max_patches: int, where: Path | str
) -> dict[str, Any]:
    """The original config.json dict of a native ``InternVLConfig``."""
    family = native_family(native, where)
    model_family = families.detect(native.to_dict(), where)
    values = native.vision_config.to_dict()
    if native.vision_feature_select_strategy != "default" or native.projector_hidden_act != "gelu":
        raise UserError(
            f"{where}: only the InternVL2.5 projector (gelu, CLS token dropped) has an original form"
        )
    vision = {key: values[native_key] for native_key, key in VISION_KEYS.items()}
    for key in ("image_size", "patch_size"):
        height, width = vision[key]
        if height != width:
            raise UserError(f"{where}: non-square vision {key} {vision[key]} has no original form")
        vision[key] = height
    vision.update(
        architectures=["InternVisionModel"],
        model_type="intern_vit_6b",
        drop_path_rate=0.0,
        use_flash_attn=True,
    )
    llm = original_llm_config(native.text_config, family, where)
    llm["tie_word_embeddings"] = bool(native.tie_word_embeddings)
    dtype = native.dtype or native.text_config.dtype
    return {
        "architectures": [ORIGINAL_ARCH],
        "model_type": ORIGINAL_MODEL_TYPE,
        "vision_config": vision,
        "llm_config": llm,
        "downsample_ratio": native.downsample_ratio,
        "force_image_size": vision["image_size"],
        "select_layer": native.vision_feature_layer,
        "min_dynamic_patch": min_patches,
        "max_dynamic_patch": max_patches,
        **ORIGINAL_DEFAULTS,
        "template": model_family.conversion.original_template,
        families.FAMILY_KEY: model_family.name,
        **({"torch_dtype": str(dtype).removeprefix("torch.")} if dtype else {}),
    }


def llm_spec(config: dict[str, Any] | InternVLConfig, where: Path | str) -> LLMSpec:
    """The ``LLMSpec`` of an original config.json dict or a native config."""
    if isinstance(config, InternVLConfig):
        text = config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        heads = Heads(
            text.num_attention_heads, text.num_key_value_heads or text.num_attention_heads, head_dim
        )
        return LLMSpec(native_family(config, where), heads, bool(config.tie_word_embeddings))
    llm = config["llm_config"]
    num_heads = llm["num_attention_heads"]
    heads = Heads(num_heads, llm.get("num_key_value_heads") or num_heads, llm["hidden_size"] // num_heads)
    return LLMSpec(llm_family(config, where), heads, bool(llm.get("tie_word_embeddings", False)))


# ---------------------------------------------------------------------------------------------
# Files


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; UserError naming the path when missing or malformed."""
    if not path.is_file():
        raise UserError(f"{path}: not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err


def read_config(src: Path) -> dict[str, Any]:
    """config.json of a checkpoint directory."""
    if not src.is_dir():
        raise UserError(f"{src}: checkpoint directory not found")
    return read_json(src / "config.json")


def source_shards(src: Path) -> list[Path]:
    """The safetensors files of a checkpoint: ``model.safetensors`` or the shards its index lists."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index}: no weight_map")
        shards = [src / name for name in sorted(set(weight_map.values()))]
        for shard in shards:
            if not shard.is_file():
                raise UserError(f"{shard}: listed in {index.name} but not found")
        return shards
    if (src / "model.safetensors").is_file():
        return [src / "model.safetensors"]
    raise UserError(f"{src}: no model.safetensors or model.safetensors.index.json")


def read_shards(shards: list[Path], desc: str = "converting") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of all shards, opening one shard at a time (``desc`` labels the progress bar)."""
    for shard in tqdm(shards, desc=desc, unit="shard"):
        try:
            with safe_open(str(shard), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except SafetensorError as err:
            raise UserError(f"{shard}: not a readable safetensors file ({_one_line(err)})") from err


def parse_size(size: int | str) -> int:
    """Bytes in a size such as ``5GB``, ``500MiB`` or ``1000000``."""
    units = {
        "": 1,
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
    }
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
    if not found or found.group(2).lower() not in units or float(found.group(1)) <= 0:
        raise UserError(f"invalid shard size {size!r}: expected e.g. 5GB, 500MB or a number of bytes")
    return int(float(found.group(1)) * units[found.group(2).lower()])


class ShardWriter:
    """Writes tensors into safetensors shards of at most ``max_bytes`` each, as they fill.

    One shard is written as ``model.safetensors``; several as ``model-0000i-of-0000n.safetensors``
    with ``model.safetensors.index.json``. A tensor larger than ``max_bytes`` gets a shard of its own.
    """

    def __init__(self, out: Path, max_bytes: int) -> None:
        self.out, self.max_bytes = out, max_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffered = self.total = 0
        self.files: list[Path] = []
        self.shard_of: dict[str, int] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor, writing the current shard first if the tensor would overflow it."""
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffered + size > self.max_bytes:
            self._flush()
        self.buffer[name] = tensor.contiguous()
        self.buffered += size
        self.total += size
        self.shard_of[name] = len(self.files)

    def _flush(self) -> None:
        path = self.out / f"model-{len(self.files) + 1:05d}.safetensors.part"
        save_file(self.buffer, str(path), metadata={"format": "pt"})
        self.files.append(path)
        self.buffer, self.buffered = {}, 0

    def close(self) -> list[Path]:
        """Write the last shard, give shards their final names, write the index; the shard paths."""
        if self.buffer:
            self._flush()
        if len(self.files) == 1:
            final = [self.out / "model.safetensors"]
        else:
            final = [
                self.out / f"model-{i:05d}-of-{len(self.files):05d}.safetensors"
                for i in range(1, len(self.files) + 1)
            ]
        for part, path in zip(self.files, final, strict=True):
            part.rename(path)
        if len(final) > 1:
            index = {
                "metadata": {"total_size": self.total},
                "weight_map": {name: final[i].name for name, i in sorted(self.shard_of.items())},
            }
            (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return final


def optional_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or {} when there is no such file."""
    return read_json(path) if path.is_file() else {}


def copy_files(src: Path, dst: Path, names: Iterable[str]) -> list[str]:
    """Copy those of ``names`` that exist in ``src`` to ``dst``; the names copied."""
    copied = [name for name in names if (src / name).is_file()]
    for name in copied:
        shutil.copy2(src / name, dst / name)
    return copied


def native_tiling(src: Path, family: Family) -> tuple[int, int]:
    """(min, max) tiles per image of a native checkpoint's image processor (the family's if none)."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (src / name).is_file():
            data = read_json(src / name)
            data = data.get("image_processor", data)
            if "max_patches" in data:
                return int(data.get("min_patches", family.tiling.min_tiles)), int(data["max_patches"])
    return family.tiling.min_tiles, family.tiling.max_tiles


def native_processor(src: Path, original: dict[str, Any], family: Family) -> InternVLProcessor:
    """The ``InternVLProcessor`` of a converted checkpoint: SRC's tokenizer made fast (every id inside the
    embedding), the family's chat template and tokens, and the tiling and tokens per tile of SRC's config."""
    source = native_files.source_tokenizer(src, optional_json(src / "tokenizer_config.json"))
    tokenizer = native_files.native_tokenizer(source, src, family)
    native_files.check_token_ids(tokenizer, original["llm_config"]["vocab_size"], src)
    tile, min_tiles, max_tiles = native_files.original_tiling(original, src / "config.json", family)
    return native_files.internvl_processor(
        tokenizer, tile, min_tiles, max_tiles, tokens_per_tile(original), family
    )


def remote_code_files(config: dict[str, Any]) -> list[str]:
    """The Python files an original config's ``auto_map`` names (what upstream loads with remote code)."""
    names = {ref.split(".")[0] + ".py" for ref in (config.get("auto_map") or {}).values()}
    return sorted(names)


# ---------------------------------------------------------------------------------------------
# Entry points


class Converted(list[Path]):
    """The weight files ``convert`` wrote, with ``notes`` for the user (empty when nothing is missing)."""

    def __init__(self, files: list[Path], notes: list[str]) -> None:
        super().__init__(files)
        self.notes = notes


def convert(
    src: str | Path,
    dst: str | Path,
    to: str = "native",
    max_shard_size: int | str = "5GB",
    code_from: str | Path | None = None,
    family: str | None = None,
) -> Converted:
    """Convert the checkpoint in ``src`` to the ``to`` layout in ``dst``.

    Native output is complete: weights, config, fast tokenizer, processor (tiling, chat template) and a
    generation config that stops at the end of a turn. A native source asked for native is left alone
    (no files, a note). Original output holds weights, config and SRC's tokenizer files; upstream also
    loads the remote-code files its ``auto_map`` names, copied from ``code_from`` (an original checkpoint,
    with its slow-tokenizer files) when given, else named in the notes. ``family`` names SRC's model
    family (:mod:`mpo.models.families`) when its config.json does not say it; the output records it.
    """
    src, dst = Path(src), Path(dst)
    if to not in ("native", "original"):
        raise UserError(f"unknown target layout {to!r}: expected native or original")
    config = read_config(src)
    if family is not None:
        config[families.FAMILY_KEY] = families.get(family).name
    max_bytes = parse_size(max_shard_size)
    original_in = is_original_layout(config)
    if not original_in and config.get("model_type") != NATIVE_MODEL_TYPE:
        raise UserError(f"{src / 'config.json'}: model_type {config.get('model_type')!r} is not InternVL")
    if not original_in and to == "native":
        return Converted(
            [], [f"{src} is already a native (-hf) checkpoint: nothing to convert, use it as it is"]
        )
    if original_in and to == "original":
        raise UserError(f"{src}: already in the original layout")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UserError(f"{dst}: exists and is not an empty directory")
    where = src / "config.json"

    if to == "native":
        check_original_config(config, where)
        processor = native_processor(src, config, families.detect(config, where))
        out_config: InternVLConfig | dict[str, Any] = native_config(config, processor.image_token_id, where)
        spec = llm_spec(config, where)
    else:
        try:
            native = InternVLConfig.from_dict(config)
        except (StrictDataclassError, TypeError, ValueError) as err:
            raise UserError(f"{where}: not a valid InternVL config ({_one_line(err)})") from err
        out_config = original_config(native, *native_tiling(src, families.detect(config, where)), where)
        spec = llm_spec(native, where)
        if code_from is not None:
            check_code_from(Path(code_from), remote_code_files(out_config))
    shards = source_shards(src)

    dst.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(dst, max_bytes)
    for name, tensor in convert_tensors(read_shards(shards), to, spec, str(src)):
        writer.add(name, tensor)
    files = writer.close()

    if isinstance(out_config, InternVLConfig):
        out_config.save_pretrained(dst)
        processor.save_pretrained(dst)
        generation = native_files.generation_config(
            optional_json(src / "generation_config.json"),
            processor.tokenizer,
            config["llm_config"].get("eos_token_id"),
            families.of_processor(processor),
        )
        generation.save_pretrained(dst)
        return Converted(files, [])
    (dst / "config.json").write_text(json.dumps(out_config, indent=2) + "\n")
    copy_files(src, dst, ["generation_config.json"])
    if code_from is None:
        copy_files(src, dst, TOKENIZER_FILES)
        return Converted(files, [missing_code_note(dst, remote_code_files(out_config))])
    code = Path(code_from)  # upstream's code and its slow tokenizer, which upstream's code loads
    copy_files(code, dst, [*(path.name for path in sorted(code.glob("*.py"))), *TOKENIZER_FILES])
    return Converted(files, [])


def check_code_from(code_from: Path, needed: list[str]) -> None:
    """``code_from`` must be a directory holding the remote-code files ``needed``."""
    if not code_from.is_dir():
        raise UserError(f"{code_from}: --code-from directory not found")
    missing = [name for name in needed if not (code_from / name).is_file()]
    if missing:
        raise UserError(f"{code_from}: not an original checkpoint with remote code (no {', '.join(missing)})")


def missing_code_note(dst: Path, needed: list[str]) -> str:
    """What an original-layout output without remote code lacks for upstream, said plainly."""
    return (
        f"{dst} has no remote code: upstream loads it (trust_remote_code) only with the files its config.json "
        f"auto_map names ({', '.join(needed)}) and what they import, plus the slow-tokenizer files; copy all "
        "*.py and tokenizer files of the original checkpoint (e.g. OpenGVLab/InternVL2_5-8B) into it, "
        "or pass --code-from ORIGINAL_CHECKPOINT"
    )
