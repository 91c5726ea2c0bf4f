"""PyTorch's own varlen FlashAttention-2 (``torch.nn.attention.varlen.varlen_attn``, torch >= 2.9, CUDA)
as a stand-in for the flash-attn package in the GPU check, where flash-attn cannot be installed (PyPI
has only its source distribution, and a lent machine reaches no network to build it).

It takes what ``flash_attention_2`` takes (:mod:`mpo.attention`): one flattened padding-free row and
``cu_seq_lens_q`` / ``cu_seq_lens_k``, no mask. So it runs the project's varlen path (flattening,
restarted position ids, sequence boundaries) through a real FlashAttention-2 kernel in bf16.
"""

from __future__ import annotations

import inspect

import torch

NAME = "torch_varlen"


def available() -> bool:
    """True on CUDA with a torch that ships ``varlen_attn``."""
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, H, N, D], key / value [1, H_kv, N, D] -> ([1, N, H, D], None), causal within each
    sequence of ``cu_seq_lens_q``."""
    from torch.nn.attention.varlen import varlen_attn

    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f"{NAME} takes one flattened row and no mask")
    groups = query.shape[1] // key.shape[1]
    q = query[0].transpose(0, 1)  # [N, H, D]
    k = key[0].repeat_interleave(groups, dim=0).transpose(0, 1)
    v = value[0].repeat_interleave(groups, dim=0).transpose(0, 1)
    cu_q = kwargs["cu_seq_lens_q"].to(torch.int32)
    cu_k = kwargs["cu_seq_lens_k"].to(torch.int32)
    params = inspect.signature(varlen_attn).parameters
    extra = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}  # torch 2.9-2.1x spelling
    if "scale" in params and scaling is not None:
        extra["scale"] = scaling
    out = varlen_attn(q, k, v, cu_q, cu_k, int(kwargs["max_length_q"]), int(kwargs["max_length_k"]), **extra)
    return out.unsqueeze(0), None


def register() -> str:
    """Register the kernel with transformers and make :mod:`mpo.attention` treat it like
    ``flash_attention_2`` (varlen: plain and packed rows); returns its name."""
    from transformers import AttentionInterface

    from mpo import attention

    if NAME in attention.KERNELS:
        return NAME
    AttentionInterface.register(NAME, _attention)
    attention.KERNELS = (*attention.KERNELS, NAME)
    attention.VARLEN_KERNELS = {*attention.VARLEN_KERNELS, NAME}
    attention.EXPRESSES = {**attention.EXPRESSES, NAME: attention.EXPRESSES["flash_attention_2"]}
    return NAME
