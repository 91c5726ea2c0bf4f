"""TRL's fused LM head, made to score only the labelled positions on every device.

``trl.trainer.utils.add_fused_lm_head`` (trl 1.16) projects hidden states through the LM head in tiles and
returns per-token log-probs. On Triton devices (CUDA, XPU) it projects only the positions that carry a label;
elsewhere it projects every position, to keep tile shapes static for compilers such as Neuron's. The CPU runs
eagerly and has no such need, and a preference row is mostly prompt and image tokens: at the real shape the
head projected 4531 positions through the 151k vocabulary for ~700 labels, the largest part of a CPU step
after the backward (benchmarks/results/real_profile.md). :func:`compact_lm_head` makes TRL take its own
compact path on the CPU too; the log-probs are the same numbers, only fewer rows are computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch
from trl.trainer import utils as trl_utils


@contextlib.contextmanager
def compact_lm_head() -> Iterator[None]:
    """Within the block, TRL's fused head scores only labelled positions on the CPU as well as on Triton
    devices (it reads ``trl.trainer.utils._use_triton`` to choose; trl 1.16)."""
    on_triton = trl_utils._use_triton

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or on_triton(device)

    with mock.patch.object(trl_utils, "_use_triton", compact):
        yield
