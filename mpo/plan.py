"""`mpo plan`: will a recipe fit the cluster? Per-GPU memory of the model states and the activations.

    mpo plan --config internvl2_5/78b/mpo --gpus 64 --gpu-memory 80 [--gpus-per-node 8]

The size comes from the recipe's folder (``recipes/internvl2_5/<size>/``) or ``--size``; its parameter
count from :data:`mpo.models.sizes.SIZES` built on the meta device (nothing is allocated).

Model states (bf16 weights, fp32 Adam), per GPU, at the recipe's ZeRO stage (the size's, see
``mpo.models.sizes``; ``--zero`` overrides), P parameters that train, N GPUs:

- ZeRO-2 and ZeRO-3: DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs``,
  ``estimate_zero3_model_states_mem_needs``, no offload);
- ZeRO-1 (DeepSpeed has no estimator for it): 2P (bf16 weights) + 2P (bf16 gradients) + 16P/N (fp32
  weights, gradients and the two Adam moments, partitioned), i.e. ZeRO-2's formula with the bf16
  gradients kept whole.

Activations of one micro-batch, bf16, with T tokens in the language model and V vision tokens (tiles x
1025 patches), upper bounds: an MPO pair is at most 2 x ``max_length`` tokens (two rows or one
prefix-shared row) with its image's tiles once; an SFT row is ``max_length`` packed tokens, at most all
of them image tokens:

- without gradient checkpointing: 34 bytes x hidden per token and layer (Korthikanti et al., 2022,
  "Reducing Activation Recomputation in Large Transformer Models", Table 2, without the s²-term of the
  attention matrix, which sdpa / flash-attention never store), for the LLM and the ViT;
- with gradient checkpointing: each layer keeps only its input (2 bytes x hidden per token), plus one
  layer's full activations while it is recomputed.

Log-probs come from TRL's fused head in chunks, so no [T, vocabulary] logits tensor is counted. It fits
when states + activations + 10 % (allocator fragmentation, buffers) stay within the GPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpo import markdown
from mpo.errors import UserError

GiB = 2**30
PATCHES_PER_TILE = (448 // 14) ** 2 + 1  # InternViT: 32 x 32 patches and the class token
ACTIVATION_BYTES_PER_HIDDEN = 34  # per token and layer, bf16 (Korthikanti et al., 2022)
OVERHEAD = 0.10


@dataclass(frozen=True)
class Counts:
    """Parameter counts of one size, from its meta-device model."""

    total: int
    trainable: int
    largest_layer: int  # the largest module's own parameters (what ZeRO-3 gathers at once)


def parameter_counts(size_key: str, freeze: dict[str, bool] | None = None) -> Counts:
    """Total, trainable (after the freeze flags) and largest-module parameters of ``SIZES[size_key]``."""
    import torch
    from transformers import InternVLForConditionalGeneration

    from mpo.models.convert import native_config
    from mpo.models.families.internvl2_5 import FAMILY
    from mpo.models.sizes import SIZES, original_config

    size = SIZES[size_key]
    config = native_config(original_config(size), 0, size.name)
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    frozen = {part for part, flag in (freeze or {}).items() if flag}
    total = trainable = 0
    for name, p in model.named_parameters():
        total += p.numel()
        trainable += 0 if FAMILY.parts.part_of(name) in frozen else p.numel()
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return Counts(total, trainable, largest)


def model_states_bytes(counts: Counts, zero: int, gpus: int, gpus_per_node: int) -> int:
    """Per-GPU bytes of weights, gradients and Adam states at ZeRO stage ``zero`` (module docstring)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    nodes = max(1, gpus // gpus_per_node)
    frozen = 2 * (
        counts.total - counts.trainable
    )  # bf16 weights of frozen parts, never partitioned below ZeRO-3
    if zero == 3:
        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            counts.total,
            counts.largest_layer,
            gpus_per_node,
            nodes,
            cpu_offload=False,
            cpu_offload_params=False,
        )
        return int(gpu)
    if zero == 2:
        _, gpu = estimate_zero2_model_states_mem_needs(
            counts.trainable, gpus_per_node, nodes, cpu_offload=False
        )
        return int(gpu) + frozen
    if zero in (0, 1):
        shards = gpus if zero == 1 else 1
        return 2 * counts.trainable + 2 * counts.trainable + 16 * counts.trainable // shards + frozen
    raise UserError(f"zero stage {zero}: expected 0, 1, 2 or 3")


def activation_bytes(
    size_key: str, tokens: int, tiles: int, checkpointing: bool, layers: int | None = None
) -> int:
    """Activations of one micro-batch (module docstring): LLM over ``tokens``, ViT over ``tiles``;
    ``layers`` cuts both towers to that depth (the benchmarks' cut models)."""
    from mpo.models.sizes import SIZES

    size = SIZES[size_key]
    towers = (
        (size.llm.hidden_size, layers or size.llm.num_hidden_layers, tokens),
        (size.vision.hidden_size, layers or size.vision.num_hidden_layers, tiles * PATCHES_PER_TILE),
    )
    total = 0
    for hidden, layers, n in towers:
        full_layer = ACTIVATION_BYTES_PER_HIDDEN * hidden * n
        total += (layers * 2 * hidden * n + full_layer) if checkpointing else layers * full_layer
    return total


@dataclass(frozen=True)
class Plan:
    size: str
    zero: int
    gpus: int
    gpu_memory_gib: float
    counts: Counts
    states: int
    activations: int
    activations_without_checkpointing: int
    checkpointing: bool

    @property
    def needed(self) -> float:
        return (self.states + self.activations) * (1 + OVERHEAD)

    @property
    def fits(self) -> bool:
        return self.needed <= self.gpu_memory_gib * GiB

    def table(self) -> str:
        rows = [
            (
                "parameters (trainable)",
                f"{self.counts.total / 1e9:.2f}B ({self.counts.trainable / 1e9:.2f}B)",
            ),
            (f"model states, ZeRO-{self.zero} over {self.gpus} GPUs", f"{self.states / GiB:.1f} GiB"),
            (
                f"activations, gradient checkpointing {'on' if self.checkpointing else 'off'}",
                f"{self.activations / GiB:.1f} GiB",
            ),
            ("activations with checkpointing off", f"{self.activations_without_checkpointing / GiB:.1f} GiB"),
            (f"needed per GPU (+{OVERHEAD:.0%})", f"{self.needed / GiB:.1f} GiB of {self.gpu_memory_gib:g}"),
            ("fits", "yes" if self.fits else "NO"),
        ]
        return (
            "\n".join([f"InternVL2.5-{self.size.upper()}", "", *markdown.table(["", "per GPU"], rows)]) + "\n"
        )


def plan(
    recipe: dict,
    size_key: str,
    gpus: int,
    gpu_memory_gib: float,
    *,
    gpus_per_node: int = 8,
    zero: int | None = None,
) -> Plan:
    """The memory plan of ``recipe`` (a recipe YAML's keys) for ``size_key`` on ``gpus`` GPUs."""
    from mpo.models.sizes import SIZES

    if size_key not in SIZES:
        raise UserError(f"unknown size {size_key!r}; expected one of {', '.join(SIZES)}")
    size = SIZES[size_key]
    freeze = {part: bool(recipe.get(f"freeze_{part}", False)) for part in ("vision", "projector", "llm")}
    counts = parameter_counts(size_key, freeze)
    stage = size.zero_stage if zero is None else zero
    batch = int(recipe.get("per_device_train_batch_size", 1))
    if "stage" in recipe:  # an SFT recipe: packed rows of max_length tokens, image tokens at most all of them
        tokens = int(recipe.get("max_length") or 16384) * batch
        tiles = tokens // size.tokens_per_tile
    else:  # a pair: at most 2 x max_length tokens, its image's tiles once
        tokens = 2 * int(recipe.get("max_length") or 8192) * batch
        tiles = (size.max_dynamic_patch + 1) * batch
    checkpointing = bool(recipe.get("gradient_checkpointing", True))
    return Plan(
        size_key,
        stage,
        gpus,
        gpu_memory_gib,
        counts,
        model_states_bytes(counts, stage, gpus, gpus_per_node),
        activation_bytes(size_key, tokens, tiles, checkpointing),
        activation_bytes(size_key, tokens, tiles, False),
        checkpointing,
    )
