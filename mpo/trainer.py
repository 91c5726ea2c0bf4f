"""MPOTrainer: trl.DPOTrainer with the Mixed Preference Optimization objective (see mpo.losses).

Why not TRL's own ``loss_type=["sigmoid", "bco_pair", "sft"]`` (trl 1.16), which names the same three
terms: its ``bco_pair`` has no reward shift (δ = 0, where MPO's quality term is centred on the running
mean of the rewards), its ``sft`` is a per-token mean (MPO's default averages per sequence), it refuses
precomputed reference log-probs for vision data, and it runs the vision tower and the prompt twice per
pair. What changes against the parent, and nothing else:

- the loss is :func:`mpo.losses.objective`, the weighted terms of ``loss_type`` from the table
  :data:`mpo.losses.TERMS` (MPO: DPO sigmoid + BCO with reward shift δ + SFT), every term logged
  unweighted as ``loss/<metric>`` (``loss/dpo``, ``loss/bco``, ``loss/sft``, ...) with ``bco/delta``;
- δ is held in one :class:`~mpo.losses.RewardShift`, fixed during an optimizer step, updated once
  after it from the rewards of all micro-batches on all ranks, saved in ``trainer_state.json`` of
  every checkpoint and restored on resume;
- batches come from :class:`~mpo.data.collator.PreferenceCollator` (the family's template, dynamic
  tiles, MMPR records, the token layouts of :mod:`mpo.data.layout`), so TRL's own tokenisation and
  truncation are bypassed;
- the reference log-probs are precomputed with images (:meth:`MPOTrainer._precompute_ref_logps`) and
  cached on disk. TRL (1.16) takes a dataset with an ``image`` / ``images`` column for vision data and
  then refuses the precompute; the records here name their files ``image_paths``, so that TRL's vision
  branches (its collator, its tokenisation, that refusal) stay off and this trainer's own run instead.
Log-probs are :func:`mpo.scoring.sequence_logps` (TRL's fused LM head: only response positions, in chunks,
no full logits tensor), public as :meth:`MPOTrainer.sequence_logps` and :meth:`MPOTrainer.reference_logps`.
DPOConfig fields this trainer does not implement are refused (:data:`REFUSED_DPO_FIELDS`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path

import torch
from accelerate.logging import get_logger
from peft import PeftModel
from tqdm import tqdm
from transformers import Trainer, TrainerCallback
from trl import DPOConfig, DPOTrainer
from trl.models import prepare_deepspeed
from trl.trainer.utils import use_adapter

from mpo import attention, ref_cache, runtime, scoring
from mpo.checkpointing import REWARD_SHIFT_KEY, NativeResumeMixin, write_run_config
from mpo.data.collator import DROPPED_SOURCES, PreferenceCollator, SkipBadRecords, take_skips
from mpo.data.meta import BadRows
from mpo.losses import MPO_TERMS, MPO_WEIGHTS, TERMS, RewardShift, objective
from mpo.models import families
from mpo.runtime import cpu_training_defaults

logger = get_logger(__name__)

# trl.DPOConfig (trl 1.16) fields that MPOTrainer does not implement, and why: setting one is an error,
# never a silent no-op. The other inherited fields (max_length, precompute_ref_batch_size,
# disable_dropout, activation_offloading, the TrainingArguments) work as in TRL.
REFUSED_DPO_FIELDS = {
    "label_smoothing": "the objective is mpo.losses; add a term there",
    "f_divergence_type": "the preference term is DPO's sigmoid",
    "f_alpha_divergence_coef": "the preference term is DPO's sigmoid",
    "use_weighting": "the objective is mpo.losses",
    "ld_alpha": "responses are scored whole",
    "discopop_tau": "loss_type has no discopop",
    "router_aux_loss_coef": "InternVL has no mixture of experts",
    "padding_free": "the token layout is set by prefix_sharing and max_packed_tokens, the kernel by "
    "attn_implementation",
    "pad_to_multiple_of": "batches come from mpo.data.collator",
    "truncation_mode": "samples are never truncated: over-long ones are bad rows (max_length)",
    "pad_token": "the processor's tokenizer pads",
    "dataset_num_proc": "records are prepared by mpo.data.mmpr",
    "model_init_kwargs": "the model is loaded by mpo.models.loading.load_model",
    "trust_remote_code": "no code from a checkpoint runs; convert original checkpoints with mpo convert",
    "sync_ref_model": "the reference is fixed (and cached on disk)",
}
DPO_DEFAULTS = {f.name: f.default for f in dataclass_fields(DPOConfig)}


@dataclass
class MPOConfig(DPOConfig):
    """Configuration of :class:`MPOTrainer`: a `trl.DPOConfig` with MPO defaults and fields.

    Defaults follow the InternVL2.5 MPO scripts (docs/design.md#reference-hyperparameters): lr 1e-6, one epoch, cosine,
    warmup ratio 0.03, weight decay 0.05, β 0.1, weights 0.8 / 0.2 / 1.0, max length 8192.
    """

    loss_type: list[str] = field(
        default_factory=lambda: list(MPO_TERMS),
        metadata={
            "help": "Terms of the objective, names of mpo.losses.TERMS: 'sigmoid' (preference, DPO), 'bco_pair' "
            "(quality, BCO with reward shift), 'sft' (generation), 'hinge' (preference, SLiC). ['sigmoid'] alone is "
            "plain DPO; ['sft'] alone is SFT on the chosen responses."
        },
    )
    loss_weights: list[float] | None = field(
        default_factory=lambda: list(MPO_WEIGHTS),
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
    prefix_sharing: bool = field(
        default=True,
        metadata={
            "help": "Run each pair as one sequence [prompt | chosen | rejected] in which rejected attends to the prompt "
            "but not to chosen (block mask, positions restarting after the prompt): the prompt and its image tokens, "
            "and the vision tower, run once per pair instead of twice. Exact."
        },
    )
    vision_once: bool = field(
        default=True,
        metadata={
            "help": "Without prefix sharing: run the vision tower once per pair and use its features in both "
            "the chosen and the rejected row. Exact."
        },
    )
    max_packed_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Pack several pairs per row, up to this many tokens, with block masks keeping them "
            "independent (padding-free). None: one pair (or sequence) per row."
        },
    )
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={
            "help": "Compute the reference log-probs in one pass before training (images included), cache them on "
            "disk and hold no reference model during training. The cache is keyed by the dataset's content, the "
            "reference weights and the processing settings, and is reused by later runs."
        },
    )
    ref_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the reference log-prob cache (default: $MPO_CACHE/ref_logps, "
            "~/.cache/internvl_mpo/ref_logps)."
        },
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate (reference: 1e-6)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (reference: 1)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Scheduler (reference: cosine)."})
    warmup_steps: float = field(
        default=0.03,
        metadata={
            "help": "Warmup: a count of steps, or below 1 a fraction of all steps (reference: ratio 0.03). "
            "transformers 5 (5.24) has no separate warmup_ratio."
        },
    )
    weight_decay: float = field(default=0.05, metadata={"help": "Weight decay (reference: 0.05)."})

    def __post_init__(self) -> None:
        for name, why in REFUSED_DPO_FIELDS.items():  # before the parent's set-up may convert them
            if getattr(self, name) != DPO_DEFAULTS[name]:
                raise ValueError(
                    f"{name}: a trl.DPOConfig field that MPOTrainer does not use ({why}); leave it unset"
                )
        cpu_training_defaults(self)  # fp32 and gloo multi-process on the CPU; before the parent's set-up
        super().__post_init__()
        unknown = set(self.loss_type) - set(TERMS)
        if unknown:
            raise ValueError(
                f"loss_type: unknown terms {sorted(unknown)}; the objective's terms are {list(TERMS)}"
            )
        if self.prefix_sharing and not self.vision_once:
            raise ValueError(
                "vision_once: false does nothing with prefix_sharing (one sequence per pair runs the "
                "vision tower once anyway); set prefix_sharing: false to run it twice"
            )
        if self.sft_normalization not in ("sequence", "token"):
            raise ValueError(
                f"sft_normalization must be 'sequence' or 'token', got {self.sft_normalization!r}"
            )

    def term_weights(self) -> dict[str, float]:
        """Each term of ``loss_type`` with its weight."""
        weights = self.loss_weights or [1.0] * len(self.loss_type)
        return {term: float(w) for term, w in zip(self.loss_type, weights, strict=True)}


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """The reference is deterministic: no dropout, no vision drop path, no gradient checkpointing, even
    when it is the policy itself (LoRA, adapter disabled) in the middle of training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _RewardShiftStep(TrainerCallback):
    """Folds the step's rewards into δ after every optimizer step."""

    def __init__(self, trainer: MPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.update_reward_shift()


def reference_note(precompute: bool, held_bytes: int, epochs: float) -> str:
    """How the reference log-probs are computed, and what that costs (logged once, when the trainer is built).

    Per pair over the run, precompute costs one reference forward and one more collation; in-step costs one
    reference forward per epoch and, unless the reference is the adapter-disabled policy (LoRA), a frozen
    copy of the weights. The extra collation is CPU work that DataLoader workers overlap with the GPU (at the
    real shape 21 ms for a 7-tile record, benchmarks/results/real_profile.md, against ~0.1 s of GPU per
    reference forward, gpu_check.md). So precompute costs the same GPU time at one epoch and less from two,
    and it is the only one that holds no second copy of the weights.
    """
    if precompute:
        return (
            f"reference log-probs: one pass before training, cached on disk, read by all {epochs:g} epoch(s); "
            "no reference weights are held during training"
        )
    held = (
        f"a frozen copy of the weights, {held_bytes / 2**30:.3g} GiB"
        if held_bytes
        else "the adapter-disabled policy"
    )
    return (
        f"reference log-probs: in every step ({epochs:g} reference forward(s) per pair over the run, against one "
        f"with precompute_ref_log_probs); the reference is {held}"
    )


class MPOTrainer(NativeResumeMixin, DPOTrainer):
    """Mixed Preference Optimization on InternVL (MMPR records), derived from `trl.DPOTrainer`."""

    _tag_names = ["trl", "mpo", "internvl"]
    _name = "MPO"

    def __init__(
        self,
        model,
        ref_model=None,
        args: MPOConfig | None = None,
        data_collator=None,
        *,
        processing_class=None,
        bad_rows: BadRows | None = None,
        **kwargs,
    ) -> None:
        """``bad_rows`` (the policy and skips of loading the data): under ``skip``, records whose files
        fail to decode later, in the reference pass or in a training batch, are skipped and counted
        there too (:class:`~mpo.data.collator.SkipBadRecords`); without it such a failure stops the run."""
        args = args or MPOConfig(output_dir="mpo_output")
        if data_collator is None and processing_class is not None:
            data_collator = PreferenceCollator(
                processing_class,
                prefix_sharing=args.prefix_sharing,
                max_packed_tokens=args.max_packed_tokens,
                vision_once=args.vision_once,
            )
        layout = attention.layout_of(
            prefix_sharing=args.prefix_sharing, packed=args.max_packed_tokens is not None
        )
        for module, training in ((model, True), (ref_model, False)):
            if isinstance(module, torch.nn.Module):  # refuse a kernel that cannot compute the layout exactly
                attention.choose_kernels(
                    attention.text_kernel(module), layout, attention.Platform.detect(), training=training
                )
        if bad_rows is not None and data_collator is not None:
            data_collator = SkipBadRecords(data_collator, bad_rows)
        self.bad_rows = bad_rows  # the data's skips, and those of later decode failures (skip policy)
        super().__init__(
            model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            processing_class=processing_class,
            **kwargs,
        )
        scoring.with_fused_head(self.model)  # the MPO loss and metrics need only the log-probs
        unwrapped = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        held = (
            sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in self.ref_model.parameters())
            if self.ref_model is not None
            else 0
        )
        logger.warning(reference_note(self.precompute_ref_logps, held, self.args.num_train_epochs))
        self.reward_shift = RewardShift()
        self.add_callback(_RewardShiftStep(self))
        # flex attention compiles per row-length bucket: its count of compilations is logged
        self._counts_compilations = attention.text_kernel(unwrapped) == "flex_attention"
        self.run_config: dict = {}  # extra sections of mpo_config.json (mpo train adds "model" and "data")

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
        self.state.stateful_callbacks[REWARD_SHIFT_KEY] = {
            "args": {},
            "attributes": self.reward_shift.state_dict(),
        }
        # TRL 1.16's DPOTrainer._save_checkpoint writes its DPO model card into output_dir, then calls
        # transformers'. We call transformers' directly: the MPO card is mpo.publishing.card's, written into
        # each checkpoint by its callback. Staged and renamed into place when complete (mpo.checkpointing).
        with self.staged_checkpoint():
            Trainer._save_checkpoint(self, model, trial)

    def save_state(self) -> None:
        self.state.stateful_callbacks[REWARD_SHIFT_KEY] = {
            "args": {},
            "attributes": self.reward_shift.state_dict(),
        }
        super().save_state()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Model, processor and ``mpo_config.json`` (the recipe, read by `mpo push` for the model card)."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            write_run_config(
                output_dir or self.args.output_dir,
                self.args,
                {"base_model": getattr(self.model, "name_or_path", None), **self.run_config},
            )

    def create_model_card(self, *args, **kwargs) -> None:
        """Writes nothing: TRL's card would call an MPO run DPO. The MPO card is :mod:`mpo.publishing.card`'s
        (`ModelCardCallback` at every save, `mpo push` with the evaluation)."""

    def _load_callback_state(self) -> None:
        saved = self.state.stateful_callbacks.pop(REWARD_SHIFT_KEY, None)
        if saved is not None:
            self.reward_shift.load_state_dict(saved["attributes"])
        super()._load_callback_state()

    # ---- data: our records are prepared by mpo.data.mmpr and the collator -------------------------
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset

    def _prepare_inputs(self, inputs: dict) -> dict:
        """The batch on the device, the skips it carries from the collator (a DataLoader worker's too)
        recorded in ``bad_rows``."""
        return super()._prepare_inputs(take_skips(inputs, self.bad_rows))

    # ---- log-probs -----------------------------------------------------------------------------
    def sequence_logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs ([2B]: chosen of pair i at 2i, rejected at 2i+1) and lengths ([2B]) of
        ``model`` (the policy, its wrapper, or the reference) on a collated batch: :func:`mpo.scoring.sequence_logps`
        with the InternVL model inside ``model``'s wrapper."""
        return scoring.sequence_logps(model, inputs, runtime.unwrapped(self.accelerator, model))

    def reference_logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """From the batch when precomputed, else a no-grad pass of the reference (the adapter-disabled
        model under LoRA)."""
        if "ref_chosen_logps" in inputs:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        with torch.no_grad(), self._as_reference(model) as ref, _eval_mode(ref):
            logps, _ = self.sequence_logps(ref, inputs)
        return logps[0::2], logps[1::2]

    @contextlib.contextmanager
    def _as_reference(self, model):
        if self.ref_model is not None:
            yield self.ref_model
            return
        unwrapped = runtime.unwrapped(self.accelerator, model)
        if not isinstance(unwrapped, PeftModel):  # before training: the policy is the reference
            yield model
            return
        with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
            yield model

    # ---- reference precompute with a disk cache ---------------------------------------------------
    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        reference = (
            self.model if self.ref_model is None else runtime.unwrapped(self.accelerator, self.ref_model)
        )
        settings = {
            "template": families.of_processor(self.processing_class).template.jinja(),
            "tokens_per_tile": self.processing_class.image_seq_length,
            "tile": [
                self.processing_class.image_processor.size["height"],
                self.processing_class.image_processor.size["width"],
            ],
            "dtype": str(reference.dtype),
            "attn": attention.text_kernel(reference),
        }
        model_fp = ref_cache.checkpoint_fingerprint(getattr(reference, "name_or_path", None))
        model_fp += self._precompute_model_hash or ""
        key = ref_cache.cache_key(ref_cache.dataset_fingerprint(dataset), model_fp, settings)
        path = Path(self.args.ref_cache_dir or ref_cache.default_cache_dir()) / f"{name}-{key}.safetensors"
        cached = ref_cache.read(path)
        if cached is None:
            start = time.perf_counter()
            chosen, rejected = self._compute_reference(dataset, name, batch_size)
            self.precompute_seconds = time.perf_counter() - start
            if self.accelerator.is_main_process:
                ref_cache.write(path, chosen, rejected)
            self.accelerator.wait_for_everyone()
            logger.warning(f"reference log-probs: computed for {len(dataset)} {name} pairs, cached at {path}")
        else:
            chosen, rejected = cached
            logger.warning(f"reference log-probs: reusing {path} ({len(chosen)} {name} pairs)")
        self.ref_cache_file = path
        dataset = dataset.add_column("ref_chosen_logps", chosen.tolist())
        dataset = dataset.add_column("ref_rejected_logps", rejected.tolist())
        failed = torch.isnan(chosen) | torch.isnan(rejected)
        if bool(failed.any()):  # records whose files failed to decode in the reference pass (skip policy)
            logger.warning(
                f"reference log-probs: {int(failed.sum())} {name} pairs failed to decode and are skipped"
            )
            dataset = dataset.select([i for i, bad in enumerate(failed.tolist()) if not bad])
        return dataset

    @torch.no_grad()
    def _compute_reference(self, dataset, name: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of the reference over ``dataset``, sharded over ranks, gathered on every rank."""
        acc = self.accelerator
        # batches of similar lengths pad little, and sharding the length order shares the work out evenly;
        # each row carries its dataset index back, so order is free
        processor = self.processing_class
        lengths = ref_cache.approximate_lengths(
            dataset, processor.image_processor.size["height"], processor.image_seq_length
        )
        by_length = sorted(range(len(dataset)), key=lengths.__getitem__)
        mine = ref_cache.shard_indices(by_length, acc.process_index, acc.num_processes)
        if self.is_deepspeed_enabled:  # parameters are still on the CPU (ZeRO-1/2) or sharded (ZeRO-3)
            self._precompute_engine = self._precompute_engine or prepare_deepspeed(self.model, acc)
            model = self._precompute_engine
        else:
            model = self.model
        model.eval()
        rows = []
        sources = dataset["source"]
        # batches decoded in DataLoader workers (dataloader_num_workers), in order; the skips travel in them
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, mine),
            batch_size=batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        starts = range(0, len(mine), batch_size)
        for start, batch in zip(
            starts,
            tqdm(loader, desc=f"reference log-probs ({name})", disable=not acc.is_local_main_process),
            strict=True,
        ):
            idx = mine[start : start + batch_size]
            dropped = set(batch.get(DROPPED_SOURCES, ()))
            batch = self._prepare_inputs(batch)
            with self._as_reference(model) as ref, acc.autocast():  # the precision training runs in, as TRL's
                logps, _ = self.sequence_logps(ref, batch)
            rows.append(self._reference_rows(idx, [sources[i] for i in idx], logps, dropped))
        gathered = acc.gather(torch.cat(rows)).cpu()
        gathered = gathered[gathered[:, 0] >= 0]
        chosen = torch.full((len(dataset),), float("nan"), dtype=torch.float32)  # NaN: failed to decode
        rejected = torch.full((len(dataset),), float("nan"), dtype=torch.float32)
        chosen[gathered[:, 0].long()] = gathered[:, 1].float()
        rejected[gathered[:, 0].long()] = gathered[:, 2].float()
        return chosen, rejected

    @staticmethod
    def _reference_rows(
        idx: list[int], sources: list[str], logps: torch.Tensor, dropped: set[str]
    ) -> torch.Tensor:
        """[len(idx), 3] rows (dataset index, chosen, rejected log-prob) of one reference batch.

        Under the skip policy a record that failed to decode is left out of the batch, which then holds
        the other records in order (or, when none is left, an earlier batch run again): its row, and
        every row of a batch of failed records, is (-1, nan, nan). Every rank gathers as many rows.
        """
        out = logps.new_full((len(idx), 3), float("nan"))
        out[:, 0] = -1
        kept = [k for k, source in enumerate(sources) if source not in dropped]
        if kept:
            out[kept, 0] = torch.tensor([float(idx[k]) for k in kept], dtype=logps.dtype, device=logps.device)
            out[kept, 1], out[kept, 2] = logps[0::2], logps[1::2]
        return out

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        logps, lengths = self.sequence_logps(model, inputs)
        chosen_logps, rejected_logps = logps[0::2], logps[1::2]
        ref_chosen, ref_rejected = self.reference_logps(model, inputs)
        delta = self.reward_shift.value
        out = objective(
            chosen_logps,
            rejected_logps,
            ref_chosen.to(logps.dtype),
            ref_rejected.to(logps.dtype),
            lengths[0::2],
            beta=self.beta,
            delta=delta,
            weights=self.args.term_weights(),
            sft_normalization=self.args.sft_normalization,
        )
        if mode == "train":
            self.reward_shift.accumulate(out.chosen_rewards, out.rejected_rewards)
        self._log_metrics(mode, out, chosen_logps.detach(), rejected_logps.detach(), delta)
        return (out.loss, out) if return_outputs else out.loss

    def _log_metrics(self, mode: str, out, chosen_logps, rejected_logps, delta: float) -> None:
        gather = (
            self.accelerator.gather
        )  # not gather_for_metrics: its end-of-dataloader truncation is global state
        metrics = self._metrics[mode]
        values = torch.stack([value.detach() for value in out.terms.values()])
        for name, value in zip(out.terms, gather(values.unsqueeze(0)).mean(dim=0).tolist(), strict=True):
            metrics[f"loss/{TERMS[name].metric}"].append(value)
        metrics["bco/delta"].append(delta)
        if self._counts_compilations:
            metrics["attention/compilations"].append(attention.compilations())
        r_c, r_r = gather(out.chosen_rewards), gather(out.rejected_rewards)
        metrics["rewards/chosen"].append(r_c.mean().item())
        metrics["rewards/rejected"].append(r_r.mean().item())
        metrics["rewards/margins"].append((r_c - r_r).mean().item())
        metrics["rewards/accuracies"].append((r_c > r_r).float().mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps).mean().item())
