"""The Mixed Preference Optimization objective, as plain functions, plus the BCO reward-shift state.

MPO (Wang et al., 2024, "Enhancing the Reasoning Ability of Multimodal Large Language Models via
Mixed Preference Optimization", Eq. 2-6) trains on (x, y_c, y_r) with three terms. With
sequence log-probs summed over response tokens and the implicit rewards

    r_c = β (log π(y_c|x) − log π_ref(y_c|x)),    r_r = β (log π(y_r|x) − log π_ref(y_r|x)):

- preference, DPO sigmoid (Rafailov et al., 2023, Eq. 7):   L_p = −log σ(r_c − r_r)
- quality, BCO (Jung et al., 2024, Eq. 9, paired form):     L_q = −log σ(r_c − δ) − log σ(−(r_r − δ))
- generation, SFT on the chosen response:                   L_g = −log π(y_c|x) / |y_c|
- total:                                                    L = w_p L_p + w_q L_q + w_g L_g

The terms are one table, :data:`TERMS`, keyed by their ``loss_type`` names (TRL's); the trainer's
objective is any weighted subset of it (:func:`objective`).

δ, the reward shift, is the running mean of all rewards (chosen and rejected) seen so far on all
ranks. It is held in :class:`RewardShift`: fixed during one optimizer step, updated once after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """r = β (log π(y|x) − log π_ref(y|x)), per sequence. Shapes: [B] -> [B]."""
    return beta * (policy_logps - ref_logps)


def dpo_sigmoid_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Preference loss, per pair: −log σ(r_c − r_r). [B], [B] -> [B]."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


def bco_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, delta: float) -> torch.Tensor:
    """Quality loss with reward shift, per pair: −log σ(r_c − δ) − log σ(−(r_r − δ)). [B], [B] -> [B]."""
    return -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))


def sft_loss(
    chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor, normalization: str = "sequence"
) -> torch.Tensor:
    """Generation loss on the chosen responses, a scalar.

    ``sequence`` (the paper): mean over sequences of −log π(y_c|x) / |y_c|.
    ``token`` (the reference code): −Σ log π(y_c|x) / Σ |y_c|, a mean over all chosen tokens of the batch.
    """
    lengths = chosen_lengths.to(chosen_logps.dtype).clamp(min=1)
    if normalization == "sequence":
        return (-chosen_logps / lengths).mean()
    if normalization == "token":
        return -chosen_logps.sum() / lengths.sum()
    raise ValueError(f"sft_normalization must be 'sequence' or 'token', got {normalization!r}")


def hinge_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Preference loss of SLiC (Zhao et al., 2023, Eq. 5, with the rewards' β as its scale), per pair:
    max(0, 1 − (r_c − r_r)). [B], [B] -> [B]."""
    return torch.relu(1 - (chosen_rewards - rejected_rewards))


@dataclass
class Batch:
    """What a term sees of one micro-batch of B pairs (all [B])."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_lengths: torch.Tensor
    delta: float
    sft_normalization: str


@dataclass(frozen=True)
class Term:
    """One term of the objective: its ``loss_type`` name (TRL's, where TRL has the term), the name it is
    logged under (``loss/<metric>``), how the model card names it, and its batch mean."""

    metric: str
    title: str
    value: Callable[[Batch], torch.Tensor]


# The objective's terms. MPO is sigmoid + bco_pair + sft; a new term is one entry here (and its test).
TERMS: dict[str, Term] = {
    "sigmoid": Term(
        "dpo",
        "preference (DPO, sigmoid)",
        lambda b: dpo_sigmoid_loss(b.chosen_rewards, b.rejected_rewards).mean(),
    ),
    "bco_pair": Term(
        "bco",
        "quality (BCO, reward shift δ)",
        lambda b: bco_loss(b.chosen_rewards, b.rejected_rewards, b.delta).mean(),
    ),
    "sft": Term(
        "sft", "generation (SFT)", lambda b: sft_loss(b.chosen_logps, b.chosen_lengths, b.sft_normalization)
    ),
    "hinge": Term(
        "hinge", "preference (SLiC hinge)", lambda b: hinge_loss(b.chosen_rewards, b.rejected_rewards).mean()
    ),
}
MPO_TERMS = ("sigmoid", "bco_pair", "sft")  # the MPO paper's objective, weights 0.8 / 0.2 / 1.0
MPO_WEIGHTS = (0.8, 0.2, 1.0)


@dataclass
class ObjectiveOutput:
    """The weighted total, the terms unweighted (batch means: MPO's three, logged whether weighted or
    not, and any other term of the objective), and the rewards that produced them."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]  # loss_type name -> batch mean
    chosen_rewards: torch.Tensor  # [B], detached
    rejected_rewards: torch.Tensor  # [B], detached


def objective(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    *,
    beta: float,
    delta: float,
    weights: dict[str, float],
    sft_normalization: str = "sequence",
) -> ObjectiveOutput:
    """L = Σ_t w_t L_t over the terms named in ``weights`` (MPO: w_p L_p + w_q L_q + w_g L_g), one
    micro-batch of B pairs (all inputs [B])."""
    r_c = implicit_rewards(chosen_logps, ref_chosen_logps, beta)
    r_r = implicit_rewards(rejected_logps, ref_rejected_logps, beta)
    batch = Batch(chosen_logps, rejected_logps, r_c, r_r, chosen_lengths, delta, sft_normalization)
    terms = {name: term.value(batch) for name, term in TERMS.items() if name in MPO_TERMS or name in weights}
    loss = sum(weight * terms[name] for name, weight in weights.items())
    return ObjectiveOutput(loss, terms, r_c.detach(), r_r.detach())


class RewardShift:
    """δ for the BCO term: the running mean of every reward seen so far (chosen and rejected, all ranks).

    ``value`` is what the losses of the current optimizer step use. :meth:`accumulate` collects the
    step's detached rewards; :meth:`step` folds them in once the optimizer step is done, with the sums
    and counts already reduced over ranks. Saved to and restored from checkpoints as a dict.
    """

    def __init__(self) -> None:
        self.value = 0.0
        self.total = 0.0  # sum of all rewards folded in so far
        self.count = 0  # number of rewards folded in so far
        self._pending_sum = 0.0
        self._pending_count = 0

    def accumulate(self, *rewards: torch.Tensor) -> None:
        for r in rewards:
            self._pending_sum += float(r.detach().float().sum())
            self._pending_count += r.numel()

    def pending(self) -> tuple[float, int]:
        """This rank's (sum, count) of rewards since the last step."""
        return self._pending_sum, self._pending_count

    def step(self, global_sum: float, global_count: int) -> None:
        """Fold in one optimizer step's rewards (summed over all ranks) and clear the pending ones."""
        self.total += global_sum
        self.count += int(global_count)
        if self.count:
            self.value = self.total / self.count
        self._pending_sum, self._pending_count = 0.0, 0

    def state_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.value, self.total, self.count = float(state["value"]), float(state["total"]), int(state["count"])
        self._pending_sum, self._pending_count = 0.0, 0
