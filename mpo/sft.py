"""`mpo sft`: the three-stage InternVL2.5 SFT recipe, one stage per run.

    mpo sft --config recipes/tiny/sft_stage1.yaml [--key value ...]
    accelerate launch [--use_deepspeed --deepspeed_config_file recipes/deepspeed/zero1.json] \\
        --num_processes N -m mpo.cli sft --config ...

==========  ==========================  =====  =================  (docs/design.md#reference-hyperparameters)
stage       trains                      lr     warmup
==========  ==========================  =====  =================
1           MLP projector               2e-4   100 steps
1.5         ViT + projector             1e-5   100 steps
2           ViT + projector + LLM       4e-5   ratio 0.03 (2e-5 for models of 20B+ parameters)
==========  ==========================  =====  =================

All stages: cosine schedule, weight decay 0.05, dynamic tiles + thumbnail, packing up to
``max_packed_tokens``, square loss averaging. Each stage starts from the previous stage's output
(``model_name_or_path``). The YAML holds the fields of :class:`SFTModelConfig`,
:class:`SFTDataConfig` and :class:`SFTStageConfig`; any of them can be overridden as ``--key value``.

:class:`SFTStageTrainer` is a ``transformers.Trainer`` that changes only: the batches
(:class:`~mpo.data.sft_collator.SFTCollator`; JPEG augmentation in training only), the loss
(:mod:`mpo.sft_loss`, normalised over the whole optimizer step on all ranks), packed attention and
resume (:class:`~mpo.checkpointing.NativeResumeMixin`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from mpo import attention, runtime
from mpo.attention import layout_of
from mpo.checkpointing import NativeResumeMixin
from mpo.data.collator import SkipBadRecords, take_skips
from mpo.data.meta import BadRows, DataConfig
from mpo.data.packing import pack_samples
from mpo.data.sft_collator import SFTCollator
from mpo.data.sft_data import IGNORE_INDEX, SFTDataset
from mpo.models.loading import FreezePolicy, vision_drop_path_field
from mpo.runtime import cpu_training_defaults
from mpo.sft_loss import LOSS_REDUCTIONS, token_losses, weight_sum, weighted_loss_sum


@dataclass(frozen=True)
class StageSpec:
    """What a stage trains and its reference learning rate and warmup (steps, or a ratio if < 1)."""

    freeze: FreezePolicy
    learning_rate: float
    warmup_steps: float


STAGES: dict[str, StageSpec] = {
    "1": StageSpec(FreezePolicy(vision=False, projector=True, llm=False), 2e-4, 100),
    "1.5": StageSpec(FreezePolicy(vision=True, projector=True, llm=False), 1e-5, 100),
    "2": StageSpec(FreezePolicy(vision=True, projector=True, llm=True), 4e-5, 0.03),
}
# Stage 2 of the 26B, 38B and 78B models uses 2e-5 (docs/design.md#reference-hyperparameters).
LARGE_MODEL_PARAMS = 20e9
LARGE_MODEL_STAGE2_LR = 2e-5


def _normalise_stage(stage) -> str | None:
    """YAML reads `stage: 1.5` as a float and `stage: 1` as an int; accept both spellings."""
    if stage is None:
        return None
    try:
        value = float(stage)
    except (TypeError, ValueError):
        return str(stage)
    return {1.0: "1", 1.5: "1.5", 2.0: "2"}.get(value, str(stage))


@dataclass
class SFTStageConfig(TrainingArguments):
    """Configuration of :class:`SFTStageTrainer`: ``transformers.TrainingArguments`` plus the stage.

    ``stage`` picks the freeze policy and the reference learning rate and warmup; every other
    default follows the InternVL2.5 SFT scripts (cosine, weight decay 0.05, one epoch, packing to
    16384 tokens, samples up to 8192 tokens, square loss averaging). Values given in the recipe or
    on the command line win.
    """

    stage: str | None = field(
        default=None,
        metadata={
            "help": "SFT stage: '1' (MLP warmup: projector only), '1.5' (ViT incremental: vision tower + "
            "projector) or '2' (full: everything). Sets the freeze policy and the default lr / warmup.",
            "choices": list(STAGES),
        },
    )
    loss_reduction: str = field(
        default="square",
        metadata={
            "help": "Per-sample weighting of the token losses (mpo.sft_loss): 'token' (w=1), 'sample' "
            "(w=1/x) or 'square' (w=1/sqrt(x), the InternVL2.5 default), x = the sample's supervised "
            "tokens; normalised by the sum of token weights over the optimizer step on all ranks.",
            "choices": list(LOSS_REDUCTIONS),
        },
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "Pack several samples per row (never splitting one), kept independent by restarting "
            "position ids and a block-diagonal mask (sdpa / eager) or varlen flash-attention."
        },
    )
    max_packed_tokens: int = field(
        default=16384,
        metadata={
            "help": "Most tokens (image tokens included) in one packed row (reference: 16384). Rows are "
            "the per-device batch items when packing."
        },
    )
    max_length: int | None = field(
        default=8192,
        metadata={
            "help": "Longest sample in tokens, image tokens included (reference: 8192). Longer samples are "
            "dropped and counted in the data report, never truncated. At most max_packed_tokens when "
            "packing; None = max_packed_tokens when packing, no limit otherwise."
        },
    )
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate. Default per stage: 2e-4 (1), 1e-5 (1.5), 4e-5 (2; 2e-5 for models "
            "of 20B+ parameters)."
        },
    )
    warmup_steps: float | None = field(
        default=None,
        metadata={
            "help": "Linear warmup: steps if >= 1, a fraction of the training steps if < 1. Default per "
            "stage: 100 steps (1, 1.5), ratio 0.03 (2)."
        },
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Scheduler (reference: cosine)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (reference: 0.05)."})
    num_train_epochs: float = field(
        default=1.0, metadata={"help": "Epochs over the (repeated) data (reference: 1)."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Kept False: the collator reads whole SFT records, not model columns."},
    )
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Evaluation computes the SFT loss only (no logits are gathered)."}
    )

    def __post_init__(self) -> None:
        self.stage = _normalise_stage(self.stage)
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # nothing to pin to on the CPU
        if self.stage not in STAGES:
            raise ValueError(
                f"stage must be one of {list(STAGES)} (1: projector, 1.5: ViT + projector, 2: all), "
                f"got {self.stage!r}"
            )
        spec = STAGES[self.stage]
        self._lr_from_stage = self.learning_rate is None
        if self.learning_rate is None:
            self.learning_rate = spec.learning_rate
        if self.warmup_steps is None:
            self.warmup_steps = spec.warmup_steps
        if self.gradient_checkpointing and self.gradient_checkpointing_kwargs is None:
            # non-reentrant: gradients reach trainable parts behind frozen ones (stage 1, stage 1.5)
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        cpu_training_defaults(self)
        if self.dataloader_num_workers > 0:
            # The collator draws JPEG qualities and video frames from its own seeded stream. A worker that
            # lived for one epoch only would restart that stream from the seed every epoch; one that lives on
            # continues it, so one worker gives exactly the batches of the training process.
            self.dataloader_persistent_workers = True
        super().__post_init__()
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        if self.max_packed_tokens < 1:
            raise ValueError(f"max_packed_tokens must be positive, got {self.max_packed_tokens}")
        if self.packing:
            if self.max_length is None:
                self.max_length = self.max_packed_tokens
            if self.max_length > self.max_packed_tokens:
                raise ValueError(
                    f"max_length ({self.max_length}) must not exceed max_packed_tokens "
                    f"({self.max_packed_tokens}) when packing"
                )

    @property
    def freeze_policy(self) -> FreezePolicy:
        return STAGES[self.stage].freeze

    def apply_model_size(self, num_parameters: int) -> None:
        """Stage 2 of a 20B+ model defaults to lr 2e-5 (unless the learning rate was given)."""
        if self._lr_from_stage and self.stage == "2" and num_parameters >= LARGE_MODEL_PARAMS:
            self.learning_rate = LARGE_MODEL_STAGE2_LR


@dataclass
class SFTModelConfig:
    """The checkpoint a stage starts from (a native InternVL directory: the base model or the
    previous stage's output) and how to load it. What trains is set by ``stage``."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Native InternVL checkpoint directory (with its processor)."}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Weights dtype: 'auto' = bf16 on a GPU, fp32 on the CPU.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    attn_implementation: str = field(default="auto", metadata={"help": attention.kernel_help()})
    vision_drop_path_rate: float = vision_drop_path_field()


@dataclass
class SFTDataConfig(DataConfig):
    """The SFT data (InternVL meta.json + conversations jsonl) and its filters."""

    max_repetition_ratio: float | None = field(
        default=0.5,
        metadata={
            "help": "Drop training samples whose assistant replies have a word n-gram repetition ratio "
            "(1 - distinct/total n-grams, mpo.data.repetition) above this; counted in the data report. "
            "None disables the filter."
        },
    )
    repetition_ngram: int = field(default=4, metadata={"help": "n of the n-grams of the repetition filter."})


class SFTStageTrainer(NativeResumeMixin, Trainer):
    """One SFT stage on InternVL, derived from ``transformers.Trainer``.

    Loss (see :mod:`mpo.sft_loss`): L = Σ w_i Σ_t l_it / W with W = Σ w_i x_i over the *global*
    batch. W is known before the step's first forward: :meth:`get_batch_samples` (which the
    Trainer already uses to pre-fetch the gradient-accumulation window, like ``num_items_in_batch``)
    sums the collated ``loss_weights`` of the window's micro-batches and all-reduces the sum over
    ranks. Each micro-batch then back-propagates Σ_mb w l / W × R (R ranks: undoes the data-parallel
    gradient mean), and the Trainer does not divide by the accumulation steps again. The logged
    ``loss`` is the exact global L. Evaluation batches are normalised on their own.

    Logits are computed only at the positions that predict a supervised token.
    """

    def __init__(
        self,
        model,
        args: SFTStageConfig,
        train_dataset=None,
        eval_dataset=None,
        *,
        processing_class=None,
        data_collator=None,
        bad_rows: BadRows | None = None,
        **kwargs,
    ) -> None:
        """``bad_rows``: under ``skip``, samples whose files fail to decode in a batch are skipped and
        counted there (:class:`~mpo.data.collator.SkipBadRecords`); without it such a failure stops the run."""
        if data_collator is None:
            if processing_class is None:
                raise ValueError(
                    "SFTStageTrainer needs processing_class (the InternVL processor) or a data_collator"
                )
            data_collator = SFTCollator(
                processing_class,
                loss_reduction=args.loss_reduction,
                train=True,
                seed=args.seed + args.process_index,
            )
        # refuse a kernel that cannot compute the layout exactly, or cannot train here
        attention.choose_kernels(
            attention.text_kernel(model), layout_of(packed=args.packing), attention.Platform.detect()
        )
        if bad_rows is not None:
            data_collator = SkipBadRecords(data_collator, bad_rows)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.loss_is_scaled_for_ga = True
        self.bad_rows = bad_rows

    def _prepare_inputs(self, inputs: dict) -> dict:
        """The batch on the device, the skips it carries from the collator (a DataLoader worker's too)
        recorded in ``bad_rows``."""
        return super()._prepare_inputs(take_skips(inputs, self.bad_rows))

    # ---- data -------------------------------------------------------------------------------------
    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation batches without augmentation (the collator's ``train`` flag off)."""
        train_collator = self.data_collator
        if isinstance(train_collator, SkipBadRecords) and isinstance(train_collator.collate, SFTCollator):
            self.data_collator = dataclasses.replace(
                train_collator, collate=dataclasses.replace(train_collator.collate, train=False)
            )
        elif isinstance(train_collator, SFTCollator):
            self.data_collator = dataclasses.replace(train_collator, train=False)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """The step's micro-batches and W = Σ w_i x_i over them and over all ranks."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        total = torch.zeros((), dtype=torch.float32, device=device)
        for batch in batches:
            total = total + weight_sum(batch["loss_weights"]).to(device)
        if self.args.world_size > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        return batches, total

    # ---- the model call ---------------------------------------------------------------------------
    def token_losses(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, weight, sample id) of every supervised target token of the batch, flattened.

        Labels are shifted inside each sample first (position t predicts token t+1 of the same sample),
        so the rows may then take any kernel's form (:func:`mpo.attention.model_inputs`), flattened or not.
        """
        labels, samples = inputs["labels"], inputs["sample_ids"]
        shifted = torch.full_like(labels, IGNORE_INDEX)
        same = samples[:, 1:] == samples[:, :-1]
        shifted[:, :-1] = labels[:, 1:].masked_fill(~same, IGNORE_INDEX)
        weights = torch.zeros_like(inputs["loss_weights"])
        weights[:, :-1] = inputs["loss_weights"][:, 1:]
        unwrapped = runtime.unwrapped(self.accelerator, model)
        batch, kwargs = attention.model_inputs(
            {**inputs, "shift_labels": shifted, "shift_weights": weights},
            attention.text_kernel(unwrapped),
            unwrapped.dtype,
        )
        keep = batch["shift_labels"] != IGNORE_INDEX
        outputs = model(**kwargs, pixel_values=batch["pixel_values"], logits_to_keep=keep, use_cache=False)
        losses = token_losses(outputs.logits, batch["shift_labels"][keep])
        return losses, batch["shift_weights"][keep], batch["sample_ids"][keep]

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        losses, weights, _ = self.token_losses(model, inputs)
        numerator = weighted_loss_sum(losses, weights)
        if num_items_in_batch is None:  # evaluation, or a direct call: this batch alone
            loss = numerator / weight_sum(weights).clamp_min(1e-12)
        else:
            loss = numerator / num_items_in_batch.clamp_min(1e-12) * self.accelerator.num_processes
        return (loss, {"loss": loss.detach()}) if return_outputs else loss


# ---------------------------------------------------------------------------------------- building


def make_dataset(records: list[dict], args: SFTStageConfig) -> SFTDataset:
    """Records as rows: packed to ``max_packed_tokens`` (seeded) or one per row."""
    if not args.packing:
        return SFTDataset(records)
    rows = pack_samples([r["length"] for r in records], args.max_packed_tokens, seed=args.seed)
    return SFTDataset(records, rows)
