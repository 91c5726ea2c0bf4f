"""`mpo transfer-vision`: move a vision tower trained with a small LLM into a checkpoint with a larger LLM.

Progressive scaling (InternVL2.5): InternViT is trained with a small LLM (stage 1.5, ViT incremental
learning) and reused, unchanged, with a larger LLM, which then runs only stage 1 (MLP warmup) and
stage 2 (full instruction tuning).

    mpo transfer-vision --vision FROM --into TARGET --out OUT

FROM and TARGET are native InternVL checkpoints whose vision configs must agree on every structural
field (:data:`VISION_FIELDS`, :data:`TOP_LEVEL_FIELDS`). OUT gets:

- the vision tower (``model.vision_tower.*``) of FROM, bit for bit (its dtype too);
- the LLM (``model.language_model.*``, ``lm_head``) of TARGET, bit for bit;
- the projector (``model.multi_modal_projector.*``) of FROM when it fits TARGET's LLM (equal
  ``text_config.hidden_size`` and ``projector_hidden_act``), else a fresh one (:func:`fresh_projector`);
- TARGET's other files: config, processor, tokenizer, chat template, generation config.

Tensors stream shard by shard (the writer holds at most one output shard), so a 78B target needs no
more memory than converting it.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import InternVLConfig

from mpo.errors import UserError
from mpo.models.convert import (
    ShardWriter,
    _one_line,
    native_disk_name,
    native_module_name,
    parse_size,
    read_shards,
    source_shards,
)
from mpo.models.families.base import Parts
from mpo.models.loading import checkpoint_family, read_checkpoint_config

# Fields of vision_config that decide the tower's shapes or what it computes.
VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "attention_bias",
    "image_size",
    "patch_size",
    "num_channels",
    "norm_type",
    "use_qk_norm",
    "layer_norm_eps",
    "hidden_act",
    "use_mean_pooling",
    "use_absolute_position_embeddings",
    "use_mask_token",
)
# Top-level fields that decide what the LLM receives from the tower: pixel shuffle, which layer's features,
# and the image tokens per tile.
TOP_LEVEL_FIELDS = (
    "downsample_ratio",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "image_seq_length",
)
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth", ".ckpt")
TRAINING_FILES = ("trainer_state.json",)  # a run's state, not the checkpoint's
PROVENANCE = "transfer_vision.json"


def parse_config(config: dict[str, Any], where: Path) -> InternVLConfig:
    """The InternVLConfig of a config.json dict (defaults filled in); UserError if it is not one."""
    try:
        return InternVLConfig.from_dict(config)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: not a valid InternVL config ({_one_line(err)})") from None


def vision_differences(source: InternVLConfig, target: InternVLConfig) -> list[str]:
    """Every structural vision field on which the two configs differ, as ``field: A in FROM, B in TARGET``."""
    pairs = [
        (f"vision_config.{name}", getattr(source.vision_config, name), getattr(target.vision_config, name))
        for name in VISION_FIELDS
    ]
    pairs += [(name, getattr(source, name), getattr(target, name)) for name in TOP_LEVEL_FIELDS]
    return [
        f"{name}: {_show(a)} in FROM, {_show(b)} in TARGET" for name, a, b in pairs if _norm(a) != _norm(b)
    ]


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    return json.dumps(_norm(value))


def projector_mismatch(source: InternVLConfig, target: InternVLConfig) -> str | None:
    """Why FROM's projector cannot serve TARGET's LLM (None when it can): another LLM width or activation."""
    a, b = source.text_config.hidden_size, target.text_config.hidden_size
    if a != b:
        return f"text_config.hidden_size {a} in FROM, {b} in TARGET"
    if source.projector_hidden_act != target.projector_hidden_act:
        return f"projector_hidden_act {source.projector_hidden_act} in FROM, {target.projector_hidden_act} in TARGET"
    return None


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of a stored tensor, as its safetensors header gives them."""

    shape: tuple[int, ...]
    dtype: str


def tensor_infos(shards: list[Path]) -> dict[str, TensorInfo]:
    """Module name -> shape and dtype of every tensor in ``shards``, from the headers only (no tensor data)."""
    infos = {}
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    infos[native_module_name(name)] = TensorInfo(tuple(piece.get_shape()), piece.get_dtype())
        except SafetensorError as err:
            raise UserError(f"{shard}: not a readable safetensors file ({_one_line(err)})") from None
    return infos


def by_part(infos: dict[str, TensorInfo], where: Path, names: Parts) -> dict[str, dict[str, TensorInfo]]:
    """The tensors of each part (vision, projector, llm; ``names``: the family's); UserError for a tensor
    of no part."""
    parts: dict[str, dict[str, TensorInfo]] = {"vision": {}, "projector": {}, "llm": {}}
    for name, info in infos.items():
        try:
            parts[names.part_of(name)][name] = info
        except ValueError:
            raise UserError(f"{where}: tensor {name!r} is not part of an InternVL model") from None
    return parts


def check_same_tensors(source: dict[str, TensorInfo], target: dict[str, TensorInfo], what: str) -> None:
    """FROM and TARGET must hold the same ``what`` tensors with the same shapes (the first difference named)."""
    for name in sorted(source.keys() | target.keys()):
        if name not in target or name not in source:
            side = "FROM" if name in source else "TARGET"
            raise UserError(f"{what} tensor {name} is only in {side}")
        if source[name].shape != target[name].shape:
            raise UserError(
                f"{what} tensor {name}: shape {list(source[name].shape)} in FROM, {list(target[name].shape)} in TARGET"
            )


@dataclass(frozen=True)
class Transferred:
    """What :func:`transfer_vision` wrote."""

    files: list[Path]
    vision_tensors: int
    llm_tensors: int
    projector: str  # "kept" or "fresh"
    reason: str | None  # why the projector is fresh
    seed: int

    def summary(self, source: Path, target: Path, out: Path) -> str:
        projector = (
            "projector kept from FROM"
            if self.projector == "kept"
            else f"projector initialised fresh (seed {self.seed}; {self.reason}): run stage 1 (MLP warmup) next"
        )
        return (
            f"{out}: vision tower of {source} ({self.vision_tensors} tensors) + LLM of {target} "
            f"({self.llm_tensors} tensors), {projector}; {len(self.files)} weight file(s)"
        )


def _stream(shards: list[Path], keep: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(module name, tensor) of the tensors in ``keep``, one shard at a time."""
    for name, tensor in read_shards(shards, desc=f"reading {shards[0].parent.name}"):
        module = native_module_name(name)
        if module in keep:
            yield module, tensor


def transfer_vision(
    source: str | Path, target: str | Path, out: str | Path, seed: int = 0, max_shard_size: int | str = "5GB"
) -> Transferred:
    """Write OUT: FROM's vision tower (and projector when it fits), TARGET's LLM and files (module docstring)."""
    source, target, out = Path(source), Path(target), Path(out)
    configs = [parse_config(read_checkpoint_config(p), p / "config.json") for p in (source, target)]
    differences = vision_differences(*configs)
    if differences:
        raise UserError(
            f"the vision towers of {source} (FROM) and {target} (TARGET) differ: {'; '.join(differences)}"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty directory")
    if out.resolve() in (source.resolve(), target.resolve()):
        raise UserError(f"{out}: the output must be a new directory")
    max_bytes = parse_size(max_shard_size)
    shards = {p: source_shards(p) for p in (source, target)}
    parts = {p: by_part(tensor_infos(shards[p]), p, checkpoint_family(p).parts) for p in (source, target)}
    check_same_tensors(parts[source]["vision"], parts[target]["vision"], "vision")
    reason = projector_mismatch(*configs)
    if reason is None:
        check_same_tensors(parts[source]["projector"], parts[target]["projector"], "projector")

    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, max_bytes)
    from_source = set(parts[source]["vision"]) | (
        set(parts[source]["projector"]) if reason is None else set()
    )
    for name, tensor in _stream(shards[source], from_source):
        writer.add(native_disk_name(name), tensor)
    if reason is not None:
        for name, tensor in fresh_projector(parts[target]["projector"], seed):
            writer.add(native_disk_name(name), tensor)
    for name, tensor in _stream(shards[target], set(parts[target]["llm"])):
        writer.add(native_disk_name(name), tensor)
    files = writer.close()
    copy_non_weight_files(target, out)
    result = Transferred(
        files,
        len(parts[source]["vision"]),
        len(parts[target]["llm"]),
        "kept" if reason is None else "fresh",
        reason,
        seed,
    )
    provenance = {
        "vision_from": str(source),
        "into": str(target),
        "projector": result.projector,
        "projector_reason": reason,
        "seed": seed,
    }
    (out / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return result


def fresh_projector(shapes: dict[str, TensorInfo], seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """A freshly initialised projector of the given shapes and dtypes, as upstream InternVL builds ``mlp1``.

    PyTorch's defaults: LayerNorm weight 1, bias 0; a Linear ``y = x Wᵀ + b`` with W of shape (out, in)
    draws W and b from U(−1/√in, 1/√in) (``nn.Linear``'s kaiming-uniform(a=√5)). Each tensor has its own
    generator, seeded by the CRC32 of ``"{seed}:{name}"``, so the result does not depend on order.
    """
    for name in sorted(shapes):
        info, (layer, kind) = shapes[name], name.rsplit(".", 1)
        if ".layer_norm" in layer:
            tensor = (torch.ones if kind == "weight" else torch.zeros)(info.shape)
        else:
            bound = 1 / math.sqrt(shapes[f"{layer}.weight"].shape[1])
            generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
            tensor = torch.empty(info.shape).uniform_(-bound, bound, generator=generator)
        yield name, tensor.to(_DTYPES[info.dtype])


_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def copy_non_weight_files(src: Path, dst: Path) -> list[str]:
    """Copy SRC's top-level files except weights and training state (config, processor, tokenizer, ...)."""
    names = sorted(
        p.name
        for p in src.iterdir()
        if p.is_file()
        and not p.name.endswith(WEIGHT_SUFFIXES)
        and p.name not in (*TRAINING_FILES, PROVENANCE)
    )
    for name in names:
        shutil.copy2(src / name, dst / name)
    return names
