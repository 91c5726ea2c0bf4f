"""Shared fixtures: the tiny model (built once per session) and small MMPR datasets on disk."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPO_CACHE", tempfile.mkdtemp(prefix="mpo-cache-"))

REPO = Path(__file__).resolve().parents[1]
MODEL_FIXTURES = {"tiny_model", "perturbed_policy"}  # a test that takes one needs a model: not a unit test


def pytest_collection_modifyitems(items) -> None:
    """Mark every test that takes a model fixture ``model``: ``make test-unit`` runs the others."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from mpo.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def processor(tiny_model):
    """The tiny model's processor, one per test module (a module may change it: its own copy)."""
    from mpo.models.loading import load_processor

    return load_processor(tiny_model)


@pytest.fixture(scope="session")
def perturbed_policy(tiny_model, tmp_path_factory) -> Path:
    """A policy that differs from the reference (the tiny model), so rewards are not all zero."""
    import torch

    from mpo.models.loading import load_model, load_processor

    model = load_model(tiny_model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    out = tmp_path_factory.mktemp("policy") / "model"
    model.save_pretrained(out)
    load_processor(tiny_model).save_pretrained(out)
    return out


def write_mmpr(
    root: Path, rows: list[dict], *, repeat_time: float = 1.0, max_dynamic_patch: int = 6, name: str = "toy"
) -> Path:
    """Write images referenced by ``rows`` (as solid colours named in the file name) and an MMPR meta.json."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "wide": (120, 60, 200)}
    for row in rows:
        paths = row.get("video") or row.get("image") or []
        for p in [paths] if isinstance(paths, str) else paths:
            if not (root / "img" / p).exists():
                stem = Path(p).stem
                size = (128, 64) if stem.startswith("wide") else (64, 64)
                Image.new("RGB", size, colours.get(stem.split("_")[0], (90, 90, 90))).save(root / "img" / p)
    annotation = root / f"{name}.jsonl"
    annotation.write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {
        name: {
            "root": "img",
            "annotation": annotation.name,
            "repeat_time": repeat_time,
            "max_dynamic_patch": max_dynamic_patch,
            "data_augment": False,
            "length": len(rows),
        }
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root / "meta.json"


# One row of each input shape: single image, multi-image, text-only, video (frames).
MIXED_ROWS = [
    {"image": "red.png", "question": "What colour is the image?", "chosen": "red", "rejected": "blue"},
    {
        "image": ["green.png", "wide.png"],
        "question": "Image-1: <image>\nImage-2: <image>\nWhich one is green?",
        "chosen": "Image-1",
        "rejected": "Image-2",
    },
    {"question": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
    {
        "video": ["red.png", "green.png", "blue.png"],
        "question": "<video>\nWhat colour is the last frame?",
        "chosen": "blue",
        "rejected": "green",
    },
    {
        "image": "wide.png",
        "question": "<image>\nIs the image wider than tall?",
        "chosen": "Yes, it is wider.",
        "rejected": "No.",
    },
    {
        "image": "blue.png",
        "question": "Name the colour.",
        "chosen": "The colour is blue.",
        "rejected": "It is red.",
    },
]


@pytest.fixture
def mixed_meta(tmp_path) -> Path:
    return write_mmpr(tmp_path / "mmpr", MIXED_ROWS)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """An offline wandb writing under tmp_path; wandb's process-wide settings are reset after."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    yield tmp_path
    wandb.finish()
    wandb.teardown()


# Where a varlen sequence with fewer queries than keys puts its causal diagonal: flash-attention's
# bottom-right rule (query i of n sees key j of m when j <= i + m - n). A test sets "top-left" to show
# that the exactness tests catch the other alignment.
VARLEN_ALIGNMENT = {"causal": "bottom-right"}


def _varlen_reference_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    """A CPU stand-in for varlen flash-attention, written out from its definition: the flattened row's
    sequence s has queries cu_seq_lens_q[s]:cu_seq_lens_q[s+1] of ``query`` [1, H, N, D] and keys / values
    cu_seq_lens_k[s]:cu_seq_lens_k[s+1] of ``key`` / ``value`` [1, H_kv, K, D] (query head h reads key
    head h // (H / H_kv)); softmax(q k^T * scale) over the keys its causal diagonal allows, times v."""
    import torch

    assert attention_mask is None and query.shape[0] == 1, "varlen kernels take flattened rows and no mask"
    assert "kv_index" not in kwargs, "keys reach the kernel already gathered"
    cu_q, cu_k = kwargs["cu_seq_lens_q"].tolist(), kwargs["cu_seq_lens_k"].tolist()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    pieces = []
    for s in range(len(cu_q) - 1):
        q = query[0, :, cu_q[s] : cu_q[s + 1]]  # [H, n, D]
        k = key[0, :, cu_k[s] : cu_k[s + 1]].repeat_interleave(groups, dim=0)  # [H, m, D]
        v = value[0, :, cu_k[s] : cu_k[s + 1]].repeat_interleave(groups, dim=0)
        n, m = q.shape[1], k.shape[1]
        shift = m - n if VARLEN_ALIGNMENT["causal"] == "bottom-right" else 0
        allowed = torch.arange(m)[None, :] <= torch.arange(n)[:, None] + shift  # [n, m]
        scores = (q @ k.transpose(1, 2)) * scale
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        pieces.append(probs @ v)  # [H, n, D]
    return torch.cat(pieces, dim=1).transpose(0, 1)[None].contiguous(), None


@pytest.fixture
def varlen_kernel(monkeypatch) -> str:
    """The name of a registered CPU varlen kernel that mpo.attention treats like flash_attention_2: the
    hand-written stand-in above behind mpo's prefix-key gather, as flash_attention_2 is on a GPU."""
    from transformers import AttentionInterface

    from mpo import attention

    name = "varlen_reference"
    AttentionInterface.register(name, attention.with_prefix_keys(_varlen_reference_attention))
    monkeypatch.setattr(attention, "KERNELS", (*attention.KERNELS, name))
    monkeypatch.setattr(attention, "VARLEN_KERNELS", {*attention.VARLEN_KERNELS, name})
    monkeypatch.setattr(attention, "EXPRESSES", {**attention.EXPRESSES, name: set(attention.LAYOUTS)})
    return name


def write_tsv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """A TSV as pandas ``to_csv(sep="\\t", index=False)`` writes it (VLMEvalKit's benchmark files);
    ``columns`` default to the keys of the first row."""
    import csv

    columns = columns or list(rows[0])
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns])
    return path


def accelerate_launch(processes: int, *options: str, zero: str | None = None) -> list[str]:
    """``accelerate launch`` of ``mpo.cli`` on ``processes`` CPU ranks of one machine (a fresh rendezvous port,
    no mixed precision, no dynamo), under DeepSpeed ``zero`` when named ("zero2", "zero3": recipes/deepspeed/;
    or a config file's path); ``options`` go to accelerate before ``-m mpo.cli``. The mpo command follows."""
    import sys

    config = zero if zero is None or zero.endswith(".json") else f"recipes/deepspeed/{zero}.json"
    deepspeed = ["--use_deepspeed", "--deepspeed_config_file", config] if config else []
    return [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        *deepspeed,
        "--num_processes",
        str(processes),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *options,
        "-m",
        "mpo.cli",
    ]


def tiny_mpo(model: Path, meta: Path, out: Path, *options: str) -> list[str]:
    """The arguments of `mpo train` for recipes/tiny/mpo.yaml from ``model`` on the MMPR ``meta`` into ``out``;
    ``options`` override the recipe. For ``mpo.cli.train.main`` as they are; on a command line after
    ``train`` (``python -m mpo.cli`` or :func:`accelerate_launch`)."""
    return [
        "--config",
        "recipes/tiny/mpo.yaml",
        "--model_name_or_path",
        str(model),
        "--meta_path",
        str(meta),
        "--output_dir",
        str(out),
        *options,
    ]


def free_port() -> int:
    """A TCP port free on this machine now: the rendezvous of a multi-process test."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeBackend:
    """A generation backend with fixed responses, found by a key contained in the question: a string (one
    response) or a list (the first ``params.n`` samples). Records every request; raises after
    ``fail_after`` requests (a backend that dies mid-run)."""

    def __init__(self, responses: dict, fail_after: int | None = None) -> None:
        self.responses, self.fail_after, self.requests = responses, fail_after, []

    def generate(self, requests, params):
        out = []
        for req in requests:
            if self.fail_after is not None and len(self.requests) >= self.fail_after:
                raise RuntimeError("backend died")
            self.requests.append(req)
            [key] = [q for q in self.responses if q in req.question]
            value = self.responses[key]
            out.append(list(value[: params.n]) if isinstance(value, list) else [value])
        return out
