"""wandb dashboards: preference samples at eval steps, full run config, reports as artifacts.

Everything here is a no-op unless wandb is among ``report_to`` (the trainer decides) or the caller
asked for it, and works offline (``WANDB_MODE=offline`` writes a normal run directory).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from mpo.losses import implicit_rewards


def wandb_enabled(report_to) -> bool:
    return report_to is not None and "wandb" in (report_to if isinstance(report_to, list) else [report_to])


class PreferenceSamplesCallback(TrainerCallback):
    """At every evaluation, a wandb Table of a few eval pairs: image, prompt, chosen, rejected and the
    model's current log-prob margin log π(y_c|x) − log π(y_r|x) and reward margin r_c − r_r."""

    def __init__(self, trainer, num_samples: int = 8) -> None:
        self.trainer, self.num_samples = trainer, num_samples

    def on_evaluate(self, args, state, control, **kwargs):
        import wandb

        trainer = self.trainer
        dataset = trainer.eval_dataset
        if dataset is None:
            return
        # Every rank runs the forward pass (the same records): under ZeRO-3 it gathers parameters from all
        # ranks, and a forward on rank 0 alone would wait for the others forever. Rank 0 logs.
        records = [dataset[i] for i in range(min(self.num_samples, len(dataset)))]
        batch = trainer._prepare_inputs(trainer.data_collator(records))
        model = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
        with torch.no_grad():
            logps, _ = trainer.sequence_logps(model, batch)
            ref_c, ref_r = trainer.reference_logps(model, batch)
        if not trainer.accelerator.is_main_process or wandb.run is None:
            return
        chosen, rejected = logps[0::2].float().cpu(), logps[1::2].float().cpu()
        reward_margin = implicit_rewards(chosen, ref_c.float().cpu(), trainer.beta) - implicit_rewards(
            rejected, ref_r.float().cpu(), trainer.beta
        )
        table = wandb.Table(
            columns=["step", "image", "question", "chosen", "rejected", "logp_margin", "reward_margin"]
        )
        for i, r in enumerate(records):
            image = wandb.Image(r["image_paths"][0]) if r["image_paths"] else None
            table.add_data(
                state.global_step,
                image,
                r["question"],
                r["chosen"],
                r["rejected"],
                float(chosen[i] - rejected[i]),
                float(reward_margin[i]),
            )
        wandb.log({"eval/preference_samples": table, "train/global_step": state.global_step})


def name_and_group_run(args, recipe: str | None) -> None:
    """Name the run after its recipe (unless named) and group runs of one recipe folder."""
    if not recipe:
        return
    stem = Path(recipe).stem
    if not args.run_name or args.run_name == args.output_dir:
        args.run_name = f"{Path(recipe).parent.name}-{stem}"
    os.environ.setdefault("WANDB_RUN_GROUP", Path(recipe).parent.name or stem)


class FullConfigCallback(TrainerCallback):
    """Once the wandb run exists, add every field of the run's other dataclasses (model, data) to its
    config; the Trainer logs the trainer config itself."""

    def __init__(self, *configs) -> None:
        self.configs = configs

    def on_train_begin(self, args, state, control, **kwargs):
        import dataclasses

        import wandb

        if wandb.run is None:
            return
        for config in self.configs:
            prefix = type(config).__name__
            values = {f"{prefix}/{k}": v for k, v in dataclasses.asdict(config).items() if _jsonable(v)}
            wandb.config.update(values, allow_val_change=True)


def _jsonable(v) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))


def log_report_artifact(name: str, kind: str, files: list[Path], project: str = "internvl-mpo") -> None:
    """Log report files (json, md, png) as one wandb artifact, starting a run if none is active."""
    import wandb

    run = wandb.run or wandb.init(project=os.environ.get("WANDB_PROJECT", project), job_type=kind, name=name)
    artifact = wandb.Artifact(name=name, type=kind)
    for f in files:
        if Path(f).is_file():
            artifact.add_file(str(f))
    run.log_artifact(artifact)
