"""MPOTrainer: trl.DPOTrainer with the Mixed Preference Optimization objective (see mpo.losses).

What changes against the parent, and nothing else:
- the loss is :func:`mpo.losses.mpo_loss` (DPO sigmoid + BCO with reward shift δ + SFT), with the
  unweighted terms logged as ``loss/dpo``, ``loss/bco``, ``loss/sft`` and ``bco/delta``;
- δ is held in one :class:`~mpo.losses.RewardShift`, fixed during an optimizer step, updated once
  after it from the rewards of all micro-batches on all ranks, saved in ``trainer_state.json`` of
  every checkpoint and restored on resume;
- batches come from :class:`~mpo.data.collator.PreferenceCollator` (InternVL2.5 template, dynamic
  tiles, MMPR records), so TRL's own tokenisation and truncation are bypassed.
Log-probs use TRL's fused LM head: only response positions, in chunks, no full logits tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from peft import PeftModel
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from mpo.data.collator import PreferenceCollator
from mpo.losses import RewardShift, mpo_loss

# TRL loss-type names of the three MPO terms, in the order of `mpo_loss(weights=...)`.
MPO_TERMS = ("sigmoid", "bco_pair", "sft")
REWARD_SHIFT_KEY = "MPORewardShift"  # entry in TrainerState.stateful_callbacks


@dataclass
class MPOConfig(DPOConfig):
    """Configuration of :class:`MPOTrainer`: a `trl.DPOConfig` with MPO defaults and fields.

    Defaults follow the InternVL2.5 MPO scripts (DESIGN section 6): lr 1e-6, one epoch, cosine,
    warmup ratio 0.03, weight decay 0.05, β 0.1, weights 0.8 / 0.2 / 1.0, max length 8192.
    """

    loss_type: list[str] = field(
        default_factory=lambda: list(MPO_TERMS),
        metadata={
            "help": "Terms of the objective, a subset of 'sigmoid' (preference, DPO), 'bco_pair' (quality, BCO "
            "with reward shift) and 'sft' (generation). ['sigmoid'] alone is plain DPO; ['sft'] alone is SFT on "
            "the chosen responses."
        },
    )
    loss_weights: list[float] | None = field(
        default_factory=lambda: [0.8, 0.2, 1.0],
        metadata={"help": "Weight of each entry of `loss_type` (w_p, w_q, w_g in the MPO paper)."},
    )
    beta: float = field(default=0.1, metadata={"help": "β of the implicit reward r = β log(π/π_ref)."})
    sft_normalization: str = field(
        default="sequence",
        metadata={
            "help": "Normalisation of the generation loss: 'sequence' (the paper: −log π(y_c|x)/|y_c| averaged over "
            "sequences) or 'token' (the reference code: mean over all chosen tokens of the micro-batch)."
        },
    )
    max_length: int | None = field(
        default=8192,
        metadata={
            "help": "Longest [prompt + response] in tokens, image tokens included. Longer samples are never "
            "truncated (that would separate image tokens from their features): they are bad rows, dropped and "
            "counted or reported as errors per `on_bad_row`."
        },
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate (reference: 1e-6)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (reference: 1)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Scheduler (reference: cosine)."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Warmup fraction (reference: 0.03)."})
    weight_decay: float = field(default=0.05, metadata={"help": "Weight decay (reference: 0.05)."})
    ddp_backend: str | None = field(
        default=None,
        metadata={"help": "torch.distributed backend; 'gloo' is chosen on the CPU, where nccl is unavailable."},
    )

    def __post_init__(self) -> None:
        if self.bf16 is None and not torch.cuda.is_available():
            self.bf16 = False  # bf16 autocast by default on GPUs only; fp32 on the CPU
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if distributed and not torch.cuda.is_available():
            # Multi-process on the CPU: accelerate treats the ranks as one job (MULTI_CPU) only with
            # use_cpu, and nccl needs GPUs. Set before the parent sets up torch.distributed.
            self.use_cpu = True
            self.ddp_backend = self.ddp_backend or "gloo"
        super().__post_init__()
        unknown = set(self.loss_type) - set(MPO_TERMS)
        if unknown:
            raise ValueError(f"loss_type: unknown terms {sorted(unknown)}; MPO supports {list(MPO_TERMS)}")
        if self.sft_normalization not in ("sequence", "token"):
            raise ValueError(f"sft_normalization must be 'sequence' or 'token', got {self.sft_normalization!r}")

    def term_weights(self) -> tuple[float, float, float]:
        """(w_p, w_q, w_g), zero for the terms not in `loss_type`."""
        weights = dict(zip(self.loss_type, self.loss_weights or [1.0] * len(self.loss_type), strict=True))
        return tuple(float(weights.get(term, 0.0)) for term in MPO_TERMS)  # type: ignore[return-value]


class _RewardShiftStep(TrainerCallback):
    """Folds the step's rewards into δ after every optimizer step."""

    def __init__(self, trainer: MPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.update_reward_shift()


class MPOTrainer(DPOTrainer):
    """Mixed Preference Optimization on InternVL (MMPR records), derived from `trl.DPOTrainer`."""

    _tag_names = ["trl", "mpo", "internvl"]
    _name = "MPO"

    def __init__(self, model, ref_model=None, args: MPOConfig | None = None, data_collator=None, *,
                 processing_class=None, **kwargs) -> None:  # fmt: skip
        if data_collator is None and processing_class is not None:
            data_collator = PreferenceCollator(processing_class)
        super().__init__(
            model, ref_model=ref_model, args=args, data_collator=data_collator, processing_class=processing_class,
            **kwargs,
        )  # fmt: skip
        self.reward_shift = RewardShift()
        self.add_callback(_RewardShiftStep(self))

    def _set_signature_columns_if_needed(self) -> None:
        # The collator reads the MMPR record columns; keep them all.
        if self._signature_columns is None:
            self._signature_columns = list(self.train_dataset.column_names)

    # ---- δ: one place for its update, save and restore -------------------------------------------
    def update_reward_shift(self) -> None:
        """Reduce this step's reward sums over ranks and fold them into δ (same value on every rank)."""
        total, count = self.reward_shift.pending()
        t = torch.tensor([total, float(count)], dtype=torch.float64, device=self.accelerator.device)
        t = self.accelerator.reduce(t, reduction="sum")
        self.reward_shift.step(t[0].item(), int(t[1].item()))

    def _save_checkpoint(self, model, trial) -> None:
        self.state.stateful_callbacks[REWARD_SHIFT_KEY] = {"args": {}, "attributes": self.reward_shift.state_dict()}
        super()._save_checkpoint(model, trial)

    def save_state(self) -> None:
        self.state.stateful_callbacks[REWARD_SHIFT_KEY] = {"args": {}, "attributes": self.reward_shift.state_dict()}
        super().save_state()

    def _load_callback_state(self) -> None:
        saved = self.state.stateful_callbacks.pop(REWARD_SHIFT_KEY, None)
        if saved is not None:
            self.reward_shift.load_state_dict(saved["attributes"])
        super()._load_callback_state()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume full-model weights through ``from_pretrained``.

        transformers 5 saves InternVL under its legacy key names (``language_model.model.*``) and maps
        them back only in ``from_pretrained``; the parent's raw ``load_state_dict(strict=False)`` would
        match no key and silently resume from the initial weights.
        """
        target = self.model if model is None else model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or isinstance(target, PeftModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = type(target).from_pretrained(resume_from_checkpoint, dtype=target.dtype)
        target.load_state_dict(saved.state_dict(), strict=True)

    # ---- the loss ---------------------------------------------------------------------------------
    def _sequence_logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs of every row ([2B]) and the response lengths ([2B])."""
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        model_kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values") if k in inputs}
        outputs = model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)
        shift_mask = completion_mask[:, 1:]
        per_token = outputs.log_probs[:, -shift_mask.size(1) :]  # [2B, L-1], 0 outside responses
        return per_token.sum(dim=1), shift_mask.sum(dim=1)

    def _reference_logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen_logps" in inputs:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        return self.compute_ref_log_probs(self.ref_model if self.ref_model is not None else model, inputs)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        logps, lengths = self._sequence_logps(model, inputs)
        chosen_logps, rejected_logps = logps.chunk(2)
        ref_chosen, ref_rejected = self._reference_logps(model, inputs)
        delta = self.reward_shift.value
        out = mpo_loss(
            chosen_logps, rejected_logps, ref_chosen.to(logps.dtype), ref_rejected.to(logps.dtype),
            lengths.chunk(2)[0], beta=self.beta, delta=delta, weights=self.args.term_weights(),
            sft_normalization=self.args.sft_normalization,
        )  # fmt: skip
        if mode == "train":
            self.reward_shift.accumulate(out.chosen_rewards, out.rejected_rewards)
        self._log_metrics(mode, out, chosen_logps.detach(), rejected_logps.detach(), delta)
        return (out.loss, out) if return_outputs else out.loss

    def _log_metrics(self, mode: str, out, chosen_logps, rejected_logps, delta: float) -> None:
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        terms = torch.stack([out.dpo.detach(), out.bco.detach(), out.sft.detach()])
        dpo, bco, sft = gather(terms.unsqueeze(0)).mean(dim=0).tolist()
        metrics["loss/dpo"].append(dpo)
        metrics["loss/bco"].append(bco)
        metrics["loss/sft"].append(sft)
        metrics["bco/delta"].append(delta)
        r_c, r_r = gather(out.chosen_rewards), gather(out.rejected_rewards)
        metrics["rewards/chosen"].append(r_c.mean().item())
        metrics["rewards/rejected"].append(r_r.mean().item())
        metrics["rewards/margins"].append((r_c - r_r).mean().item())
        metrics["rewards/accuracies"].append((r_c > r_r).float().mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps).mean().item())
