"""What every training command does around its trainer: resume, preemption, save, the closing report.

    checkpoint = resolve_resume(...)      fails before anything loads
    plan_resume(...)                      another rank count: the same global batch, ZeRO shards made universal
    trainer = build()                     processor, data, model, trainer
    train_with_faults(...)                SIGTERM / SIGUSR1: save after the step under way, exit 75
    save_model, save_state, report(trainer) on the main process

`mpo train`, `mpo sft` and `mpo rl` differ only in ``build`` and ``report``; `mpo train` and `mpo rl` end their
report with :func:`publishing_at_end` (the card, then one push).
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import Trainer

from mpo.checkpointing import resolve_resume
from mpo.cluster import PreemptionCallback, finish_preempted, plan_resume, train_with_faults
from mpo.publishing.card import write_run_card
from mpo.publishing.dashboards import name_and_group_run


def run_training(build: Callable[[], Trainer], args, command: str, report: Callable[[Trainer], None]) -> int:
    """Build, train (resuming ``args.resume_from_checkpoint``; preemptible), save into ``args.output_dir``
    and ``report`` on the main process. Returns the exit code: 0, or 75 when a signal stopped the run."""
    with PreemptionCallback() as preemption:  # SIGTERM / SIGUSR1 from here on: save after the next step, stop
        checkpoint = resolve_resume(args.resume_from_checkpoint, args.output_dir)  # fails before any loading
        # on another number of ranks: the same global batch (one line says how), ZeRO shards made universal
        resume = plan_resume(checkpoint, args)
        trainer = build()
        resume.apply(trainer)
        if train_with_faults(trainer, checkpoint, preemption, command):  # stopped on SIGTERM / SIGUSR1
            return finish_preempted(trainer, preemption, command)
        trainer.save_model(args.output_dir)
        trainer.save_state()
        if trainer.accelerator.is_main_process:
            report(trainer)
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.end_training()  # the process group torn down before exit, on every rank
        return 0


def publishing_at_end(args, argv: list[str], command: str) -> Callable[[], None]:
    """Name and group the run after its recipe and turn the Trainer's push at every save off (it would push
    TRL's card); returns what the main process runs after the final save: the project's card into
    ``output_dir``, then one push when the recipe asked for ``push_to_hub``."""
    push_to_hub, args.push_to_hub = args.push_to_hub, False
    name_and_group_run(args, argv[argv.index("--config") + 1] if "--config" in argv else None)

    def publish() -> None:
        write_run_card(args.output_dir, args)
        if push_to_hub:
            from mpo.publishing.hub import push_to_hub_after_training

            push_to_hub_after_training(args.output_dir, args, command)

    return publish
