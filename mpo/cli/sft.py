"""`mpo sft`: one stage (1, 1.5, 2) of the three-stage InternVL2.5 SFT recipe (:mod:`mpo.sft`).

    mpo sft --config recipes/tiny/sft_stage1.yaml [--key value ...]
    accelerate launch [--use_deepspeed --deepspeed_config_file recipes/deepspeed/zero1.json] \\
        --num_processes N -m mpo.cli sft --config ...

The YAML holds the fields of :class:`~mpo.sft.SFTModelConfig`, :class:`~mpo.sft.SFTDataConfig` and
:class:`~mpo.sft.SFTStageConfig`; any of them can be overridden as ``--key value``. Preemption and
resume as `mpo train` (:mod:`mpo.cli.training`).
"""

from __future__ import annotations

import json
from pathlib import Path

from mpo.attention import layout_of
from mpo.cli.training import run_training
from mpo.data.meta import skip_summary
from mpo.data.sft_data import SFTDataReport, SFTDataset, load_sft
from mpo.errors import UserError
from mpo.models.loading import load_model, load_processor
from mpo.recipe import parse_recipe
from mpo.sft import SFTDataConfig, SFTModelConfig, SFTStageConfig, SFTStageTrainer, make_dataset


def parse_sft_args(argv: list[str]) -> tuple[SFTModelConfig, SFTDataConfig, SFTStageConfig]:
    return parse_recipe((SFTModelConfig, SFTDataConfig, SFTStageConfig), argv, "mpo sft")


def build_trainer(
    model_args: SFTModelConfig, data_args: SFTDataConfig, args: SFTStageConfig
) -> SFTStageTrainer:
    """Recipe -> processor, data, model (with the stage's freeze policy) -> trainer (nothing trained yet)."""
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is required (a native InternVL checkpoint directory)")
    processor = load_processor(model_args.model_name_or_path)
    out = Path(args.output_dir)

    def load(meta: str, split: str, repetition: float | None) -> tuple[SFTDataset, SFTDataReport]:
        records, report = load_sft(
            meta,
            processor,
            max_length=args.max_length,
            seed=args.seed,
            on_bad_row=data_args.on_bad_row,
            repetition_ngram=data_args.repetition_ngram,
            max_repetition_ratio=repetition,
            report_path=out / f"sft_data_report_{split}.json" if args.process_index == 0 else None,
            **data_args.meta_paths(),
        )
        return make_dataset(records, args), report

    train_data, report = load(data_args.meta_path, "train", data_args.max_repetition_ratio)
    eval_data = load(data_args.eval_meta_path, "eval", None)[0] if data_args.eval_meta_path else None
    model = load_model(
        model_args.model_name_or_path,
        freeze=args.freeze_policy,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        layout=layout_of(packed=args.packing),
        vision_drop_path=model_args.vision_drop_path_rate,
    )
    args.apply_model_size(sum(p.numel() for p in model.parameters()))
    trainer = SFTStageTrainer(
        model,
        args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=processor,
        bad_rows=report.bad_rows,
    )
    trainer.data_report = report  # what loading (and, under skip, later decoding) left out; main() prints it
    return trainer


def main(argv: list[str]) -> int:
    model_args, data_args, args = parse_sft_args(argv)

    def report(trainer: SFTStageTrainer) -> None:
        data_report = trainer.data_report  # its bad rows include those that failed to decode in a batch
        if data_report.skipped_rows():
            path = data_report.write(Path(args.output_dir) / "sft_data_report_train.json")
            print("\n".join(skip_summary("mpo sft", data_report.skipped_rows(), path)))
        data = trainer.train_dataset
        last = next((h for h in reversed(trainer.state.log_history) if "train_loss" in h or "loss" in h), {})
        print(
            f"mpo sft: stage {args.stage}, {trainer.state.global_step} steps, {len(data.records)} samples in "
            f"{len(data)} rows, lr {args.learning_rate:g}, saved to {args.output_dir}: {json.dumps(last)}"
        )

    return run_training(lambda: build_trainer(model_args, data_args, args), args, "mpo sft", report)
