"""`mpo rl`: online RL after MPO, the GSPO stage of InternVL3.5's Cascade RL, from a recipe plus overrides.

    mpo rl --config tiny/gspo --model_name_or_path M --meta_path QA_META [--key value ...]
    accelerate launch [--use_deepspeed --deepspeed_config_file recipes/deepspeed/zero3.json] \\
        --num_processes N -m mpo.cli rl --config internvl2_5/8b/gspo

The YAML holds the fields of three dataclasses: :class:`~mpo.models.loading.InternVLModelConfig` (the
checkpoint, its freeze policy, LoRA), :class:`~mpo.rl.data.QueryDataConfig` (the QA meta.json: the rows
`mpo build-pairs correctness` takes) and :class:`~mpo.rl.config.GSPOConfig` (the trainer, the rewards,
query selection). Unknown keys are errors; ``--query_accuracy 0.2,0.8`` and ``--query-accuracy 0.2,0.8``
are the same flag, as every flag. Preemption, resume and the closing save are `mpo train`'s
(:func:`mpo.cli.training.run_training`).
"""

from __future__ import annotations

import json
from dataclasses import asdict

from mpo.cli.training import publishing_at_end, run_training
from mpo.errors import UserError
from mpo.models.loading import InternVLModelConfig, load_model, load_processor
from mpo.recipe import parse_recipe
from mpo.rl.config import GSPOConfig
from mpo.rl.data import QueryDataConfig, as_dataset, load_questions

COMMAND = "mpo rl"


def parse_rl_args(argv: list[str]) -> tuple[InternVLModelConfig, QueryDataConfig, GSPOConfig]:
    return parse_recipe((InternVLModelConfig, QueryDataConfig, GSPOConfig), argv, COMMAND)


def select_queries(rows: list[dict], args: GSPOConfig, model, processor) -> tuple[list[dict], dict]:
    """The rows whose rollout accuracy is in ``args.query_range`` (all of them for 0,1: nothing measured),
    and what the selection did (for mpo_config.json and the card)."""
    from mpo.rl.queries import measure, select

    lo, hi = args.query_range
    if (lo, hi) == (0.0, 1.0):
        return rows, {"range": [lo, hi], "source": None, "questions": len(rows), "kept": len(rows)}
    accuracy, source = measure(rows, args, model, processor)
    kept, dropped = select(rows, accuracy, lo, hi)
    record = {
        "range": [lo, hi],
        "source": source,
        "questions": len(rows),
        "kept": len(kept),
        "dropped": dropped,
    }
    print(
        f"{COMMAND}: {len(kept)} of {len(rows)} questions have a rollout accuracy in [{lo:g}, {hi:g}] ({source}); "
        f"dropped {dropped['below']} below, {dropped['above']} above, {dropped['unmeasured']} unmeasured",
        flush=True,
    )
    if not kept:
        raise UserError(
            f"query_accuracy {lo:g},{hi:g}: no question in range ({source}); widen it (0,1 keeps every question)"
        )
    return kept, record


def build_trainer(model_args: InternVLModelConfig, data_args: QueryDataConfig, args: GSPOConfig):
    """Recipe -> processor, questions, model, query selection -> GSPOTrainer (nothing trained yet)."""
    from trl import get_peft_config, get_quantization_config

    from mpo.publishing.card import ModelCardCallback
    from mpo.rl.trainer import GSPOTrainer

    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is required (a native InternVL checkpoint directory)")
    processor = load_processor(model_args.model_name_or_path)
    load = dict(
        instruction=args.instruction,
        on_bad_row=data_args.on_bad_row,
        group_by=data_args.accuracy_group,
        **data_args.meta_paths(),
    )
    rows, bad_rows = load_questions(data_args.meta_path, **load)
    eval_rows = load_questions(data_args.eval_meta_path, **load)[0] if data_args.eval_meta_path else None
    model = load_model(
        model_args.model_name_or_path,
        freeze=model_args.freeze,
        attn_implementation=model_args.attn_implementation or "auto",
        dtype=model_args.dtype or "auto",
        vision_drop_path=model_args.vision_drop_path_rate,
        quantization_config=get_quantization_config(model_args),
    )
    rows, queries = select_queries(rows, args, model, processor)
    trainer = GSPOTrainer(
        model,
        args=args,
        train_dataset=as_dataset(rows),
        eval_dataset=as_dataset(eval_rows) if eval_rows else None,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        callbacks=[ModelCardCallback()],
    )
    trainer.bad_rows = bad_rows
    queries["skipped_rows"] = len(bad_rows.skipped)
    trainer.run_config = {"model": asdict(model_args), "data": asdict(data_args), "queries": queries}
    return trainer


def main(argv: list[str]) -> int:
    from mpo.publishing.dashboards import FullConfigCallback, wandb_enabled

    model_args, data_args, args = parse_rl_args(argv)
    publish = publishing_at_end(args, argv, COMMAND)

    def build():
        trainer = build_trainer(model_args, data_args, args)
        if wandb_enabled(args.report_to):
            trainer.add_callback(FullConfigCallback(model_args, data_args))
        return trainer

    def report(trainer) -> None:
        last = next((h for h in reversed(trainer.state.log_history) if "reward" in h), {})
        print(f"{COMMAND}: {trainer.state.global_step} steps, saved to {args.output_dir}: {json.dumps(last)}")
        publish()

    return run_training(build, args, COMMAND, report)
