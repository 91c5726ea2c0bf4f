"""Loss reweighting of the SFT stages (InternVL2.5 "square averaging"), as plain functions.

Sample i of a global batch B has x_i supervised tokens (assistant replies and their ``<|im_end|>``)
with token losses l_i1 .. l_ix_i (cross-entropy of the next token). Every token of sample i carries
the weight

    w_i = 1              (``token``)
    w_i = 1 / x_i        (``sample``)
    w_i = 1 / sqrt(x_i)  (``square``, the InternVL2.5 default)

and the loss of the batch is normalised by the sum of the token weights:

    L = ( Σ_{i∈B} w_i Σ_{t=1..x_i} l_it ) / ( Σ_{i∈B} w_i x_i )

so ``token`` is the mean over all supervised tokens, ``sample`` the mean over samples of each
sample's mean token loss, and ``square`` lies in between. B is the *global* batch of one optimizer
step: every micro-batch of the gradient-accumulation window on every rank. A trainer computes the
denominator W = Σ_{i∈B} w_i x_i once per step (:class:`mpo.sft.SFTStageTrainer` pre-fetches the
window's micro-batches and all-reduces their weight sums), then each micro-batch contributes
``weighted_loss_sum(...) / W``; data-parallel gradient averaging over R ranks is undone by
multiplying by R.
"""

from __future__ import annotations

import math

import torch

LOSS_REDUCTIONS = ("token", "sample", "square")


def sample_weight(num_tokens: int, reduction: str = "square") -> float:
    """w_i of a sample with ``num_tokens`` supervised tokens (0 for a sample without any)."""
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
    if num_tokens <= 0:
        return 0.0
    if reduction == "token":
        return 1.0
    if reduction == "sample":
        return 1.0 / num_tokens
    return 1.0 / math.sqrt(num_tokens)


def weight_sum(token_weights: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i x_i of a batch: the sum of its per-token weights (0 at unsupervised positions)."""
    return token_weights.float().sum()


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each target token, in fp32: ``logits`` [N, V], ``targets`` [N] -> [N]."""
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")


def weighted_loss_sum(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w · l over the tokens of a micro-batch (the numerator of L)."""
    return (losses * weights.to(losses.dtype)).sum()


def per_sample_sums(values: torch.Tensor, sample_ids: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Σ over the tokens of each sample: ``values`` and ``sample_ids`` [N] -> [num_samples]."""
    out = torch.zeros(num_samples, dtype=values.dtype, device=values.device)
    return out.index_add(0, sample_ids, values)
