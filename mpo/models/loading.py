"""Load a native InternVL checkpoint for training or inference.

One entry point, :func:`load_model`, decides the attention kernels (:mod:`mpo.attention`) and the dtype
(bf16 on GPU, fp32 on CPU), applies the freeze policy and vision drop path, and turns the usual
ways a path can be wrong into one-line errors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import torch
from transformers import AutoProcessor, InternVLForConditionalGeneration, PreTrainedModel, ProcessorMixin
from trl import ModelConfig

from mpo import attention
from mpo.attention import Platform, bound_flex_compilations, choose_kernels, register_kernels
from mpo.errors import UserError
from mpo.models import families
from mpo.models.convert import is_original_layout
from mpo.models.families.base import Family, Parts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreezePolicy:
    """Which of the three parts (vision, projector, LLM) train. The SFT stages and MPO differ only in this."""

    vision: bool = True
    projector: bool = True
    llm: bool = True

    @classmethod
    def from_flags(cls, freeze_vision: bool, freeze_projector: bool, freeze_llm: bool) -> FreezePolicy:
        return cls(vision=not freeze_vision, projector=not freeze_projector, llm=not freeze_llm)


def apply_freeze_policy(model: torch.nn.Module, policy: FreezePolicy, parts: Parts) -> dict[str, int]:
    """Set ``requires_grad`` per part (``parts``: the family's names); returns the number of trainable
    parameters per part."""
    trainable = {"vision": 0, "projector": 0, "llm": 0}
    for name, param in model.named_parameters():
        part = parts.part_of(name)
        param.requires_grad_(getattr(policy, part))
        trainable[part] += param.numel() if param.requires_grad else 0
    return trainable


def vision_drop_path_field():
    """The ``vision_drop_path_rate`` field of the model arguments of `mpo train` and `mpo sft`."""
    return field(
        default=0.0,
        metadata={
            "help": "Stochastic depth of the vision tower, rising linearly to this rate at the last layer "
            "(reference: 0.1 for 1B-8B, 0.4 for 26B+, in SFT stage 2 and MPO)."
        },
    )


@dataclass
class InternVLModelConfig(ModelConfig):
    """TRL's `ModelConfig` (checkpoint, dtype, attention, LoRA / QLoRA) plus the InternVL freeze policy: the
    model arguments of `mpo train` and `mpo rl`."""

    dtype: str | None = field(
        default="auto",
        metadata={
            "help": "Weights dtype: 'auto' = bf16 on a GPU, fp32 on the CPU.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    attn_implementation: str | None = field(default="auto", metadata={"help": attention.kernel_help()})
    freeze_vision: bool = field(default=False, metadata={"help": "Freeze the vision tower (InternViT)."})
    freeze_projector: bool = field(default=False, metadata={"help": "Freeze the MLP projector."})
    freeze_llm: bool = field(default=False, metadata={"help": "Freeze the language model (and lm_head)."})
    vision_drop_path_rate: float = vision_drop_path_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_revision != "main":
            raise ValueError(
                "model_revision: checkpoints are local directories (nothing is downloaded); "
                "point model_name_or_path at the revision's folder"
            )

    @property
    def freeze(self) -> FreezePolicy:
        return FreezePolicy.from_flags(self.freeze_vision, self.freeze_projector, self.freeze_llm)


def add_vision_drop_path(model: torch.nn.Module, rate: float, parts: Parts) -> int:
    """Stochastic depth on the vision tower, as InternViT trains with (``drop_path_rate``).

    transformers' native InternVL vision layers have no drop path, so each layer's two residual
    branches (attention, MLP) get a forward hook that, in training mode, zeroes the branch of a random
    subset of tiles and rescales the rest by 1 / (1 − p). p rises linearly from 0 at the first layer
    to ``rate`` at the last. The branch is linear in the hooked output (λ-scaled, then added), so
    this equals DropPath on the branch. The layers are the family's ``parts.vision_layers``. Returns the
    number of hooked layers.
    """
    if rate <= 0:
        return 0
    layers = attrgetter(parts.vision_layers)(model)
    rates = torch.linspace(0, rate, len(layers)).tolist()

    def hook(p: float):
        def drop(module, args, output):
            if not module.training or p == 0:
                return output
            out = output[0] if isinstance(output, tuple) else output
            keep = out.new_empty((out.shape[0],) + (1,) * (out.dim() - 1)).bernoulli_(1 - p) / (1 - p)
            return (out * keep, *output[1:]) if isinstance(output, tuple) else out * keep

        return drop

    for layer, p in zip(layers, rates, strict=True):
        layer.attention.register_forward_hook(hook(p))
        layer.mlp.register_forward_hook(hook(p))
    return len(layers)


def pick_dtype(requested: str = "auto") -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 on the CPU, or the dtype named."""
    if requested == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    return {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }[requested]


def read_checkpoint_config(path: str | Path) -> dict:
    """config.json of a native InternVL checkpoint, with one-line errors for every other case."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path}: not a checkpoint (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{config_file}: invalid JSON: {err}") from None
    model_type = config.get("model_type")
    if is_original_layout(config):
        raise UserError(
            f"{path}: original OpenGVLab layout (InternVLChatModel); convert it first: mpo convert {path} DST"
        )
    if model_type != "internvl":
        raise UserError(f"{path}: model_type {model_type!r} is not InternVL (expected 'internvl')")
    return config


def checkpoint_family(path: str | Path) -> Family:
    """The model family of a native checkpoint, from its config.json (:func:`mpo.models.families.detect`)."""
    return families.detect(read_checkpoint_config(path), Path(path) / "config.json")


def load_model(
    path: str | Path,
    *,
    freeze: FreezePolicy = FreezePolicy(),
    attn_implementation: str = "auto",
    layout: str = "plain",
    training: bool = True,
    dtype: str = "auto",
    vision_drop_path: float = 0.0,
    quantization_config=None,
) -> PreTrainedModel:
    """Load a native InternVL checkpoint with the chosen attention, dtype, freeze policy and drop path.

    The attention kernels are :func:`mpo.attention.choose_kernels` of ``attn_implementation`` for the
    token ``layout`` the model will see (one line logged saying which and why); a kernel that cannot
    compute the layout exactly, or cannot run (or train) here, is an error.
    """
    family = checkpoint_family(path)
    kernels = choose_kernels(attn_implementation, layout, Platform.detect(), training=training)
    register_kernels()
    if kernels.text == "flex_attention":
        bound_flex_compilations()
    logger.warning(kernels.describe(layout))
    model = InternVLForConditionalGeneration.from_pretrained(
        str(path),
        attn_implementation=kernels.for_transformers(),
        dtype=pick_dtype(dtype),
        quantization_config=quantization_config,  # QLoRA: bitsandbytes 4-bit (GPU)
    )
    apply_freeze_policy(model, freeze, family.parts)
    add_vision_drop_path(model, vision_drop_path, family.parts)
    return model


def load_processor(path: str | Path) -> ProcessorMixin:
    """The InternVLProcessor saved with a checkpoint (tokenizer, tiling image processor, template), with
    the checkpoint's family attached (:func:`mpo.models.families.of_processor` reads it)."""
    family = checkpoint_family(path)
    if not any(
        (Path(path) / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")
    ):
        raise UserError(
            f"{path}: no processor (processor_config.json); if an older mpo convert wrote this checkpoint, "
            "convert the original checkpoint again"
        )
    try:
        processor = AutoProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot load the processor: {err}") from None
    return families.attach(processor, family)
