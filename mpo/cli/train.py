"""`mpo train`: MPO training from a recipe YAML plus command-line overrides.

    mpo train --config recipes/tiny/mpo.yaml [--key value ...]
    accelerate launch [--use_deepspeed --deepspeed_config_file recipes/deepspeed/zero3.json] \\
        --num_processes N -m mpo.cli train --config ...

On SIGTERM or SIGUSR1 it saves a checkpoint after the step under way and exits 75 (mpo.cluster);
``--resume_from_checkpoint True`` continues it, on this or another number of ranks.

The YAML holds the fields of three dataclasses: :class:`~mpo.models.loading.InternVLModelConfig` (the
checkpoint, its freeze policy, LoRA), :class:`~mpo.data.mmpr.PreferenceDataConfig` (the MMPR meta.json)
and :class:`mpo.trainer.MPOConfig` (the trainer). Unknown keys are errors.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from trl import get_peft_config, get_quantization_config

from mpo.attention import layout_of
from mpo.cli.training import publishing_at_end, run_training
from mpo.data.meta import skip_summary
from mpo.data.mmpr import PreferenceDataConfig, load_mmpr
from mpo.errors import UserError
from mpo.models.loading import InternVLModelConfig, load_model, load_processor
from mpo.publishing.card import ModelCardCallback
from mpo.publishing.dashboards import FullConfigCallback, PreferenceSamplesCallback, wandb_enabled
from mpo.recipe import parse_recipe
from mpo.trainer import MPOConfig, MPOTrainer

# LoRA on the LLM's linear layers when the recipe names no target modules.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def parse_train_args(argv: list[str]) -> tuple[InternVLModelConfig, PreferenceDataConfig, MPOConfig]:
    return parse_recipe((InternVLModelConfig, PreferenceDataConfig, MPOConfig), argv, "mpo train")


def skip_report_path(output_dir: str | Path, split: str) -> Path:
    """Where the rows skipped while loading or decoding the ``split`` data are listed."""
    return Path(output_dir) / f"skipped_rows_{split}.json"


def build_trainer(
    model_args: InternVLModelConfig, data_args: PreferenceDataConfig, args: MPOConfig
) -> MPOTrainer:
    """Recipe -> processor, data, model -> MPOTrainer with its model card and dashboards (nothing trained yet)."""
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
        freeze=model_args.freeze,
        attn_implementation=model_args.attn_implementation or "auto",
        layout=layout_of(prefix_sharing=args.prefix_sharing, packed=args.max_packed_tokens is not None),
        dtype=model_args.dtype or "auto",
        vision_drop_path=model_args.vision_drop_path_rate,
        quantization_config=get_quantization_config(model_args),  # load_in_4bit / load_in_8bit: QLoRA
    )
    if model_args.use_peft and not model_args.lora_target_modules:
        model_args.lora_target_modules = DEFAULT_LORA_TARGETS
    trainer = MPOTrainer(
        model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        bad_rows=bad_rows,
        callbacks=[ModelCardCallback()],
    )
    trainer.run_config = {"model": asdict(model_args), "data": asdict(data_args)}  # into mpo_config.json
    if wandb_enabled(args.report_to):
        trainer.add_callback(FullConfigCallback(model_args, data_args))
        trainer.add_callback(PreferenceSamplesCallback(trainer))
    return trainer


def main(argv: list[str]) -> int:
    model_args, data_args, args = parse_train_args(argv)
    publish = publishing_at_end(args, argv, "mpo train")

    def report(trainer: MPOTrainer) -> None:
        bad_rows = trainer.bad_rows  # load-time skips and those of the reference pass and batches
        if bad_rows is not None and bad_rows.skipped:
            path = bad_rows.write(skip_report_path(args.output_dir, "train"))
            print("\n".join(skip_summary("mpo train", bad_rows.skipped, path)))
        print(
            f"mpo train: {trainer.state.global_step} steps, delta {trainer.reward_shift.value:.4f}, "
            f"saved to {args.output_dir}: {json.dumps(trainer.state.log_history[-1])}"
        )
        publish()

    return run_training(lambda: build_trainer(model_args, data_args, args), args, "mpo train", report)
