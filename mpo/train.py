"""`mpo train`: MPO training from a recipe YAML plus command-line overrides.

    mpo train --config recipes/tiny/mpo.yaml [--key value ...]
    accelerate launch [--use_deepspeed --deepspeed_config_file recipes/deepspeed/zero3.json] \\
        --num_processes N -m mpo.cli train --config ...

On SIGTERM or SIGUSR1 it saves a checkpoint after the step under way and exits 75 (mpo.cluster);
``--resume_from_checkpoint True`` continues it, on this or another number of ranks.

The YAML holds the fields of three dataclasses: :class:`InternVLModelConfig` (the checkpoint, its
freeze policy, LoRA), :class:`PreferenceDataConfig` (the MMPR meta.json) and
:class:`mpo.trainer.MPOConfig` (the trainer). Unknown keys are errors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trl import ModelConfig, get_peft_config, get_quantization_config

from mpo import attention
from mpo.attention import layout_of
from mpo.checkpointing import resolve_resume
from mpo.cluster import PreemptionCallback, finish_preempted, plan_resume, train_with_faults
from mpo.dashboards import FullConfigCallback, name_and_group_run, wandb_enabled
from mpo.data.meta import DataConfig, skip_summary
from mpo.data.mmpr import load_mmpr
from mpo.errors import UserError
from mpo.models.loading import FreezePolicy, load_model, load_processor, vision_drop_path_field
from mpo.recipe import parse_recipe
from mpo.trainer import MPOConfig, MPOTrainer

# LoRA on the LLM's linear layers when the recipe names no target modules.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class InternVLModelConfig(ModelConfig):
    """TRL's `ModelConfig` (checkpoint, dtype, attention, LoRA / QLoRA) plus the InternVL freeze policy."""

    dtype: str | None = field(
        default="auto",
        metadata={
            "help": "Weights dtype: 'auto' = bf16 on a GPU, fp32 on the CPU.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    attn_implementation: str | None = field(default="auto", metadata={"help": attention.kernel_help()})
    freeze_vision: bool = field(default=False, metadata={"help": "Freeze the vision tower (InternViT)."})
    freeze_projector: bool = field(default=False, metadata={"help": "Freeze the MLP projector."})
    freeze_llm: bool = field(default=False, metadata={"help": "Freeze the language model (and lm_head)."})
    vision_drop_path_rate: float = vision_drop_path_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_revision != "main":
            raise ValueError(
                "model_revision: checkpoints are local directories (nothing is downloaded); "
                "point model_name_or_path at the revision's folder"
            )


@dataclass
class PreferenceDataConfig(DataConfig):
    """Where the MMPR preference data is and what to do with bad rows."""


def parse_train_args(argv: list[str]) -> tuple[InternVLModelConfig, PreferenceDataConfig, MPOConfig]:
    return parse_recipe((InternVLModelConfig, PreferenceDataConfig, MPOConfig), argv, "mpo train")


def skip_report_path(output_dir: str | Path, split: str) -> Path:
    """Where the rows skipped while loading or decoding the ``split`` data are listed."""
    return Path(output_dir) / f"skipped_rows_{split}.json"


def build_trainer(
    model_args: InternVLModelConfig, data_args: PreferenceDataConfig, args: MPOConfig
) -> MPOTrainer:
    """Recipe -> processor, data, model -> MPOTrainer (nothing trained yet)."""
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is required (a native InternVL checkpoint directory)")
    processor = load_processor(model_args.model_name_or_path)

    def load(meta: str, split: str):
        return load_mmpr(
            meta,
            processor,
            max_length=args.max_length,
            seed=args.seed,
            on_bad_row=data_args.on_bad_row,
            report_path=skip_report_path(args.output_dir, split),
            **data_args.meta_paths(),
        )

    train_data, bad_rows = load(data_args.meta_path, "train")
    eval_data = load(data_args.eval_meta_path, "eval")[0] if data_args.eval_meta_path else None
    model = load_model(
        model_args.model_name_or_path,
        freeze=FreezePolicy.from_flags(
            model_args.freeze_vision, model_args.freeze_projector, model_args.freeze_llm
        ),
        attn_implementation=model_args.attn_implementation or "auto",
        layout=layout_of(prefix_sharing=args.prefix_sharing, packed=args.max_packed_tokens is not None),
        dtype=model_args.dtype or "auto",
        vision_drop_path=model_args.vision_drop_path_rate,
        quantization_config=get_quantization_config(model_args),  # load_in_4bit / load_in_8bit: QLoRA
    )
    if model_args.use_peft and not model_args.lora_target_modules:
        model_args.lora_target_modules = DEFAULT_LORA_TARGETS
    return MPOTrainer(
        model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        bad_rows=bad_rows,
    )


def main(argv: list[str]) -> int:
    model_args, data_args, args = parse_train_args(argv)
    with PreemptionCallback() as preemption:  # SIGTERM / SIGUSR1 from here on: save after the next step, stop
        return _train(model_args, data_args, args, argv, preemption)


def _train(
    model_args: InternVLModelConfig,
    data_args: PreferenceDataConfig,
    args: MPOConfig,
    argv: list[str],
    preemption: PreemptionCallback,
) -> int:
    checkpoint = resolve_resume(args.resume_from_checkpoint, args.output_dir)  # fails before any loading
    # on another number of ranks: the same global batch (one line says how), ZeRO shards made universal
    resume = plan_resume(checkpoint, args)
    # The Trainer would push at every save with TRL's card; mpo pushes once, at the end, with the MPO card.
    push_to_hub, args.push_to_hub = args.push_to_hub, False
    recipe = argv[argv.index("--config") + 1] if "--config" in argv else None
    name_and_group_run(args, recipe)
    trainer = build_trainer(model_args, data_args, args)
    trainer.run_config = {"model": asdict(model_args), "data": asdict(data_args)}  # into mpo_config.json
    if wandb_enabled(args.report_to):
        trainer.add_callback(FullConfigCallback(model_args, data_args))
    resume.apply(trainer)
    if train_with_faults(trainer, checkpoint, preemption, "mpo train"):  # stopped on SIGTERM / SIGUSR1
        return finish_preempted(trainer, preemption, "mpo train")
    trainer.save_model(args.output_dir)
    trainer.save_state()
    if trainer.accelerator.is_main_process:
        bad_rows = trainer.bad_rows  # load-time skips and those of the reference pass and batches
        if bad_rows is not None and bad_rows.skipped:
            report = bad_rows.write(skip_report_path(args.output_dir, "train"))
            print("\n".join(skip_summary("mpo train", bad_rows.skipped, report)))
        final = {k: v for k, v in trainer.state.log_history[-1].items()}
        print(
            f"mpo train: {trainer.state.global_step} steps, delta {trainer.reward_shift.value:.4f}, "
            f"saved to {args.output_dir}: {json.dumps(final)}"
        )
        if push_to_hub:
            from mpo.hub import push_to_hub_after_training

            push_to_hub_after_training(args.output_dir, args)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # the process group torn down before exit, on every rank
    return 0
