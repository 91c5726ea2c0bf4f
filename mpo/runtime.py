"""Process-level settings shared by the trainers' configs, and the trainers' model unwrapping."""

from __future__ import annotations

import os
import weakref
from datetime import timedelta

import torch
from accelerate.state import PartialState

_UNWRAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cpu_training_defaults(args) -> None:
    """Adjust a ``TrainingArguments`` *before* its ``__post_init__`` for CPU-only machines.

    - bf16 autocast only by default on GPUs (``bf16=None`` becomes ``False`` on the CPU);
    - several processes on the CPU (``WORLD_SIZE`` > 1, e.g. ``torchrun`` or ``accelerate launch``):
      accelerate treats the ranks as one job (MULTI_CPU) only with ``use_cpu``, and nccl needs GPUs,
      so ``use_cpu=True`` and ``ddp_backend="gloo"`` unless another backend is named. Without this,
      each rank would train alone. The process group is set up here, with ``ddp_timeout``.
    """
    if getattr(args, "bf16", None) is None and not torch.cuda.is_available():
        args.bf16 = False
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not torch.cuda.is_available():
        args.use_cpu = True
        args.ddp_backend = args.ddp_backend or "gloo"
        # transformers 5.24 gives the process group ddp_timeout only off the CPU (TrainingArguments.
        # _setup_devices), so gloo ranks waited 30 minutes for a lost one: set the group up first, with it
        # (accelerate's PartialState is set up once per process, and the Trainer's then reuses it).
        PartialState(cpu=True, backend=args.ddp_backend, timeout=timedelta(seconds=args.ddp_timeout))


def unwrapped(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """``accelerator.unwrap_model(model)``, looked up once per wrapper object.

    A wrapper (DDP, a DeepSpeed engine) holds the same inner module for its whole life, so the answer
    never changes; accelerate's lookup (1.15) reads package metadata from disk on every call (about 2 ms), which
    the trainers paid once per step and per reference batch. The cache holds neither object alive.
    """
    ref = _UNWRAPPED.get(model)
    inner = ref() if ref is not None else None
    if inner is None:
        inner = accelerator.unwrap_model(model)
        _UNWRAPPED[model] = weakref.ref(inner)
    return inner
