"""Reference log-probs computed once, before training, and cached on disk.

The cache file is keyed by what changes the numbers: the dataset's content (records and image
files), the reference weights, and the processing settings (template, tiles, dtype, attention).
The token layout (plain / prefix sharing / packing) is not part of the key: all layouts give the
same log-probs. A later run with the same key reads the file instead of running the reference.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file

from mpo.data.images import count_tiles
from mpo.data.records import PreferenceRecord, model_input_keys

RECORD_KEYS = model_input_keys(PreferenceRecord)  # what the model sees of a record, hashed into the key


def default_cache_dir() -> Path:
    return Path(os.environ.get("MPO_CACHE", Path.home() / ".cache" / "internvl_mpo")) / "ref_logps"


def dataset_fingerprint(dataset: Dataset) -> str:
    """Hash of every record's model-visible fields and of each image file's size and mtime."""
    h = hashlib.sha256()
    images: set[str] = set()
    for row in dataset.select_columns(list(RECORD_KEYS)):
        h.update(json.dumps([row[k] for k in RECORD_KEYS], ensure_ascii=False).encode())
        images.update(row["image_paths"])
    for path in sorted(images):
        st = os.stat(path)
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def checkpoint_fingerprint(path: str | None) -> str:
    """Hash of a checkpoint directory's config.json and its weight files' names, sizes and mtimes."""
    if not path or not Path(path).is_dir():
        return "in-memory"
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.name == "config.json":
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cache_key(dataset_fp: str, model_fp: str, settings: dict) -> str:
    """Hash of the data, the reference and the processing ``settings`` (the template's text among them)."""
    blob = json.dumps({"data": dataset_fp, "model": model_fp, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def read(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    tensors = load_file(path)
    return tensors["ref_chosen_logps"], tensors["ref_rejected_logps"]


def write(path: Path, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    """Atomic write: a crash never leaves a half-written cache file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"ref_chosen_logps": chosen.contiguous(), "ref_rejected_logps": rejected.contiguous()}, tmp)
    os.replace(tmp, path)


def approximate_lengths(dataset: Dataset, tile_size: int, tokens_per_tile: int) -> list[int]:
    """Each record's tokens, about: its tiles' image tokens plus a quarter of its characters. Only to put
    records of similar lengths into one reference batch, so nothing is tokenised or decoded for it."""
    lengths = []
    texts = ("question", "chosen", "rejected")
    for row in dataset.select_columns(["image_sizes", "max_dynamic_patch", *texts]):
        tiles = sum(count_tiles(w, h, tile_size, row["max_dynamic_patch"]) for w, h in row["image_sizes"])
        lengths.append(tiles * tokens_per_tile + sum(len(row[k]) for k in texts) // 4)
    return lengths


def shard_indices(order: list[int], rank: int, world: int) -> list[int]:
    """This rank's items, ``order[rank::world]``, padded by repeating its last item so every rank runs the
    same number of forwards (ZeRO-3 gathers parameters collectively). Given the items sorted by length,
    every rank gets a share of each length (the ranks' work differs by at most one longest item per
    rank) and its items come sorted, ready to batch."""
    mine = order[rank::world]
    per_rank = -(-len(order) // world)
    return mine + [mine[-1] if mine else 0] * (per_rank - len(mine))
