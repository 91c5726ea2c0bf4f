"""`mpo env`: what this machine has, and which attention kernel ``auto`` picks here for each layout.

    mpo env

Read it before a launch: on a GPU ``auto`` is flash_attention_2 with flash-attn, else flash_attention_4
with flash-attn-4 on Hopper or newer, else torch_varlen (torch >= 2.9), in every layout; on the CPU it
is sdpa (:func:`mpo.attention.choose_kernels`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import torch

from mpo.attention import LAYOUTS, Platform, choose_kernels

PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "deepspeed",
    "flash-attn",
    "flash-attn-4",
    "triton",
    "vllm",
)


def versions() -> dict[str, str]:
    """Installed version of each package that decides what runs (``not installed`` where absent)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def auto_choices(platform: Platform | None = None) -> dict[str, dict[str, str]]:
    """For each token layout: the kernel ``auto`` gives the language model and the vision tower, and why."""
    platform = platform or Platform.detect()
    choices = {}
    for layout in LAYOUTS:
        choice = choose_kernels("auto", layout, platform)
        choices[layout] = {"text": choice.text, "vision": choice.vision, "reason": choice.reason}
    return choices
