"""The seven published InternVL2.5 sizes at their real widths, and the training settings of each.

One row per size: the vision tower (InternViT-300M-448px-V2_5 or InternViT-6B-448px-V2_5), the LLM
(Qwen2.5 or InternLM2.5, with InternVL's vocabulary: the LLM's tokens plus InternVL's special ones),
the image settings, and what the reference training scripts use (drop path, ZeRO stage, global batch,
learning rates). :func:`original_config` writes a row as the original-layout ``config.json`` that
``mpo convert`` reads, so a size can be built on the meta device or at random with its real shapes.

Sources (each row names its own ``config.json``):

- widths, layers, heads, kv heads, vocab, norm type, qk-norm: ``https://huggingface.co/OpenGVLab/
  InternVL2_5-<N>B/blob/main/config.json`` (``vision_config`` and ``llm_config``);
- ``tie_word_embeddings`` False for every size: OpenGVLab/InternVL
  ``internvl_chat/internvl/model/internvl_chat/configuration_internvl_chat.py`` ("tie_word_embeddings=False
  for models of all sizes");
- drop path, ZeRO stage, global batch, MPO lr: ``internvl_chat/shell/internvl2.5_mpo/preference_optimization/
  internvl2_5_<N>b_*_dynamic_res_mpo.sh``; SFT stage-2 lr: ``internvl_chat/shell/internvl2.5/stage2/*.sh``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

IMAGE_SIZE = 448
PATCH_SIZE = 14
QWEN2 = "Qwen2ForCausalLM"
INTERNLM2 = "InternLM2ForCausalLM"
HF = "https://huggingface.co/OpenGVLab/InternVL2_5-{}/blob/main/config.json"


@dataclass(frozen=True)
class Vision:
    """An InternViT vision tower (``vision_config`` of the original layout)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    norm_type: str  # "layer_norm" or "rms_norm"
    qk_normalization: bool
    qkv_bias: bool


@dataclass(frozen=True)
class LLM:
    """The language model (``llm_config`` of the original layout)."""

    name: str
    architecture: str  # QWEN2 or INTERNLM2
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float


@dataclass(frozen=True)
class Size:
    """One published InternVL2.5 checkpoint and the reference training settings for it."""

    name: str  # "1B", ..., "78B"
    vision: Vision
    llm: LLM
    source: str  # the config.json the widths come from
    tie_word_embeddings: bool = False
    downsample_ratio: float = 0.5
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    use_thumbnail: bool = True
    drop_path_rate: float = 0.1  # vision stochastic depth in SFT stage 2 and MPO
    zero_stage: int = 1
    global_batch: int = 256  # MPO pairs per optimizer step
    mpo_learning_rate: float = 1e-6
    sft_stage2_learning_rate: float = 4e-5

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens per 448 px tile: (448 / 14)^2 patches, times downsample_ratio^2 (pixel unshuffle)."""
        return int((IMAGE_SIZE // PATCH_SIZE) ** 2 * self.downsample_ratio**2)


VIT_300M = Vision("InternViT-300M-448px-V2_5", 1024, 24, 16, 4096, "layer_norm", False, True)
VIT_6B = Vision("InternViT-6B-448px-V2_5", 3200, 45, 25, 12800, "rms_norm", True, False)

QWEN_VOCAB, INTERNLM_VOCAB = 151674, 92553
QWEN2_5_0_5B = LLM("Qwen2.5-0.5B-Instruct", QWEN2, 896, 24, 14, 2, 4864, QWEN_VOCAB, 1e-6)
QWEN2_5_3B = LLM("Qwen2.5-3B-Instruct", QWEN2, 2048, 36, 16, 2, 11008, QWEN_VOCAB, 1e-6)
QWEN2_5_32B = LLM("Qwen2.5-32B-Instruct", QWEN2, 5120, 64, 40, 8, 27648, QWEN_VOCAB, 1e-6)
QWEN2_5_72B = LLM("Qwen2.5-72B-Instruct", QWEN2, 8192, 80, 64, 8, 29568, QWEN_VOCAB, 1e-6)
INTERNLM2_5_1_8B = LLM("internlm2_5-1_8b-chat", INTERNLM2, 2048, 24, 16, 8, 8192, INTERNLM_VOCAB, 1e-5)
INTERNLM2_5_7B = LLM("internlm2_5-7b-chat", INTERNLM2, 4096, 32, 32, 8, 14336, INTERNLM_VOCAB, 1e-5)
INTERNLM2_5_20B = LLM("internlm2_5-20b-chat", INTERNLM2, 6144, 48, 48, 8, 16384, INTERNLM_VOCAB, 1e-5)

_LARGE = dict(drop_path_rate=0.4, zero_stage=3, sft_stage2_learning_rate=2e-5)
SIZES: dict[str, Size] = {
    "1b": Size("1B", VIT_300M, QWEN2_5_0_5B, HF.format("1B")),
    "2b": Size("2B", VIT_300M, INTERNLM2_5_1_8B, HF.format("2B")),
    "4b": Size("4B", VIT_300M, QWEN2_5_3B, HF.format("4B")),
    "8b": Size("8B", VIT_300M, INTERNLM2_5_7B, HF.format("8B")),
    "26b": Size("26B", VIT_6B, INTERNLM2_5_20B, HF.format("26B"), **_LARGE),
    "38b": Size("38B", VIT_6B, QWEN2_5_32B, HF.format("38B"), global_batch=512, **_LARGE),
    "78b": Size("78B", VIT_6B, QWEN2_5_72B, HF.format("78B"), global_batch=512, **_LARGE),
}


def original_config(size: Size) -> dict[str, Any]:
    """The original-layout ``config.json`` of a size: its shapes and image settings (what conversion reads)."""
    vision, llm = size.vision, size.llm
    llm_config: dict[str, Any] = {
        "architectures": [llm.architecture],
        "model_type": "qwen2" if llm.architecture == QWEN2 else "internlm2",
        "hidden_size": llm.hidden_size,
        "num_hidden_layers": llm.num_hidden_layers,
        "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_key_value_heads,
        "intermediate_size": llm.intermediate_size,
        "vocab_size": llm.vocab_size,
        "hidden_act": "silu",
        "rms_norm_eps": llm.rms_norm_eps,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": size.tie_word_embeddings,
    }
    if llm.architecture == INTERNLM2:
        llm_config["bias"] = False
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_size": vision.hidden_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "intermediate_size": vision.intermediate_size,
            "norm_type": vision.norm_type,
            "qk_normalization": vision.qk_normalization,
            "qkv_bias": vision.qkv_bias,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-6,
            "initializer_factor": 0.1,
        },
        "llm_config": llm_config,
        "downsample_ratio": size.downsample_ratio,
        "force_image_size": IMAGE_SIZE,
        "select_layer": -1,
        "ps_version": "v2",
        "template": "internvl2_5",
        "dynamic_image_size": True,
        "use_thumbnail": size.use_thumbnail,
        "min_dynamic_patch": size.min_dynamic_patch,
        "max_dynamic_patch": size.max_dynamic_patch,
        "tie_word_embeddings": size.tie_word_embeddings,
    }


def build_random_native(
    key: str,
    out: str | Path,
    *,
    layers: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> Path:
    """Random weights at the real widths of ``SIZES[key]`` in the native layout, with a tokenizer padded
    to the real vocabulary (:func:`mpo.models.tiny.widen_vocabulary`) and the size's 448 px processor.

    ``layers`` cuts both towers to that depth (widths, heads and vocabulary stay real). Built on
    ``device`` and saved in ``dtype`` (default: fp32).
    """
    from transformers import InternVLForConditionalGeneration

    from mpo.models.convert import native_config
    from mpo.models.families.internvl2_5 import FAMILY
    from mpo.models.tiny import tiny_processor, train_tokenizer, widen_vocabulary

    size = SIZES[key]
    tokenizer = widen_vocabulary(train_tokenizer(family=FAMILY), size.llm.vocab_size)
    eos, pad = (
        tokenizer.convert_tokens_to_ids(FAMILY.tokens.turn_end),
        tokenizer.convert_tokens_to_ids(FAMILY.tokens.pad),
    )
    original = original_config(size)
    original["llm_config"].update(eos_token_id=eos, pad_token_id=pad)
    if layers is not None:
        original["llm_config"]["num_hidden_layers"] = original["vision_config"]["num_hidden_layers"] = layers
    config = native_config(
        original, tokenizer.convert_tokens_to_ids(FAMILY.tokens.img_context), f"InternVL2.5-{size.name}"
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = InternVLForConditionalGeneration(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos, pad
    model.to(dtype or torch.float32).save_pretrained(out)
    tiny_processor(
        tokenizer, tile=IMAGE_SIZE, patch=PATCH_SIZE, max_tiles=size.max_dynamic_patch, family=FAMILY
    ).save_pretrained(out)
    return Path(out)
