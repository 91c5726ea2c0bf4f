"""Checkpoint resume shared by the trainers (MPO and the SFT stages).

transformers 5 (seen in 5.23 and 5.24) saves InternVL under its legacy key names
(``language_model.model.*``) and maps them back only in ``from_pretrained``; the Trainer's raw
``load_state_dict(strict=False)`` on resume would match no key and silently go on from the initial
weights. :class:`NativeResumeMixin` resumes
full-model weights through ``from_pretrained`` instead.

``resume_from_checkpoint`` (:func:`resolve_resume`) is ``True`` (the newest *complete*
``checkpoint-N`` of ``output_dir``) or a checkpoint folder. A checkpoint is complete
(:func:`checkpoint_problem`) when it holds its weights and a readable ``trainer_state.json``: the
Trainer writes that file last, so a save killed before the end leaves it missing, empty or cut
short. Anything else is one line naming what is missing, never a hub look-up or a traceback.

Checkpoints are written atomically (:meth:`NativeResumeMixin.staged_checkpoint`): into
``output_dir/.staging/checkpoint-N``, moved into ``output_dir`` by one rename once every rank has written
its part (weights, ZeRO shards, RNG state). A save cut short by a kill, a signal or a lost rank leaves no
``checkpoint-N`` at all. Each checkpoint records its run's shape (:class:`mpo.cluster.RunShape`) for a
resume on another number of ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from peft import PeftModel
from transformers.trainer_utils import rotate_checkpoints

from mpo.atomic import atomic_write
from mpo.cluster import RUN_SHAPE_KEY, RunShape
from mpo.errors import UserError

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
RUN_CONFIG_NAME = "mpo_config.json"  # the run record, written with every save (read by `mpo push`)
REWARD_SHIFT_KEY = "MPORewardShift"  # δ's entry in trainer_state.json's stateful_callbacks
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
STAGING_DIR = ".staging"  # output_dir/.staging/checkpoint-N: a checkpoint being written
# A saved model's weights: full model (safetensors, sharded or not, or torch pickles) or a PEFT adapter.
MODEL_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
# One of these holds the weights of a checkpoint: a saved model, or a DeepSpeed checkpoint (its
# ``latest`` tag file).
WEIGHT_FILES = (
    *MODEL_WEIGHT_FILES,
    "latest",
)


def write_run_config(output_dir: str | Path, args, extra: dict | None = None) -> Path:
    """``output_dir/mpo_config.json``: the trainer's arguments (``args.to_dict()``, tokens masked) and
    ``extra`` (``mpo train`` adds its model and data sections). Written by MPOTrainer at every save."""
    record = {"args": args.to_dict(), "world_size": int(getattr(args, "world_size", 1)), **(extra or {})}
    return atomic_write(Path(output_dir) / RUN_CONFIG_NAME, json.dumps(record, indent=1, default=str) + "\n")


def _missing_shards(index: Path) -> list[str]:
    """Shard files that a sharded checkpoint's index names but that are absent."""
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return [f"{index.name} (unreadable)"]
    return sorted(s for s in shards if not (index.parent / s).is_file())


def checkpoint_problem(path: Path) -> str | None:
    """What makes ``path`` unusable as a checkpoint to resume from, or ``None`` when it is complete."""
    if not path.exists():
        return "no such checkpoint folder"
    if not path.is_dir():
        return "not a folder (a checkpoint is a checkpoint-N folder of output_dir)"
    weights = [name for name in WEIGHT_FILES if (path / name).is_file() and (path / name).stat().st_size > 0]
    if not weights:
        return f"no weights file (none of {', '.join(WEIGHT_FILES)}): the save was cut short"
    for index in (name for name in weights if name.endswith(".index.json")):
        missing = _missing_shards(path / index)
        if missing:
            return f"weight shards missing: {', '.join(missing)}"
    state = path / TRAINER_STATE
    if not state.is_file():
        return f"no {TRAINER_STATE}: the save was cut short"
    if state.stat().st_size == 0:
        return f"{TRAINER_STATE} is empty: the save was cut short"
    try:
        json.loads(state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{TRAINER_STATE} is not valid JSON ({err}): the save was cut short"
    return None


def checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest (highest N) first."""
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in output_dir.iterdir()
        if p.is_dir() and (m := CHECKPOINT_DIR.match(p.name))
    ]
    return [p for _, p in sorted(found, reverse=True)]


def resolve_resume(value: str | bool | None, output_dir: str | Path) -> str | None:
    """The checkpoint folder to resume from, or ``None`` to start afresh.

    ``None``, ``False``, ``"false"`` or ``""``: none. ``True`` or ``"true"`` (any case): the newest complete
    checkpoint of ``output_dir`` (newer incomplete ones are named in a warning and passed over). A path:
    that folder, if complete. Raises :class:`UserError` naming the folder and what is missing.
    """
    if value is None or value is False or str(value).strip().lower() in ("", "false", "none"):
        return None
    if value is True or str(value).strip().lower() == "true":
        output_dir = Path(output_dir)
        found = checkpoints(output_dir)
        if not found:
            raise UserError(f"resume_from_checkpoint=True: no checkpoint-N folder in output_dir {output_dir}")
        problems = []
        for candidate in found:
            problem = checkpoint_problem(candidate)
            if problem is None:
                for skipped, why in problems:
                    logger.warning(f"resume_from_checkpoint: passing over {skipped} ({why})")
                return str(candidate)
            problems.append((candidate, problem))
        listed = "; ".join(f"{p.name}: {why}" for p, why in problems)
        raise UserError(f"resume_from_checkpoint=True: no complete checkpoint in {output_dir} ({listed})")
    problem = checkpoint_problem(Path(value))
    if problem is not None:
        raise UserError(f"resume_from_checkpoint: {value}: {problem}")
    return str(value)


class NativeResumeMixin:
    """Mix into a ``transformers.Trainer`` subclass (before the Trainer in the bases)."""

    _staging_root: Path | None = None

    def _get_output_dir(self, trial) -> str:
        """Where ``Trainer._save_checkpoint`` puts ``checkpoint-N``: the staging folder while one is written."""
        return str(self._staging_root) if self._staging_root is not None else super()._get_output_dir(trial)

    @contextlib.contextmanager
    def staged_checkpoint(self):
        """Wrap ``Trainer._save_checkpoint``: write ``checkpoint-N`` under ``output_dir/.staging`` and, once
        every rank has written its part, rename it into ``output_dir`` (replacing an older save of the same
        step), then apply ``save_total_limit`` there. An exception or a kill before the rename leaves the
        previous checkpoints as they were. Not handled: ``load_best_model_at_end`` (no recipe sets it), whose
        ``best_model_checkpoint`` transformers looks up in the folder being saved to, here the staging one."""
        root = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        staged = root / STAGING_DIR / name
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)  # a save cut short earlier
        self.accelerator.wait_for_everyone()
        self.state.stateful_callbacks[RUN_SHAPE_KEY] = RunShape.of(self.args).state_entry()
        self._staging_root = staged.parent
        try:
            yield
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every rank's shards and RNG state are on disk
        if self.args.should_save:
            _commit(staged, root / name)
            rotate_checkpoints(  # as transformers (5.24) does after a save, in output_dir
                output_dir=str(root),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _save_checkpoint(self, model, trial) -> None:
        with self.staged_checkpoint():
            super()._save_checkpoint(model, trial)

    def _load_callback_state(self) -> None:
        self.state.stateful_callbacks.pop(RUN_SHAPE_KEY, None)  # read before the trainer exists (mpo.cluster)
        super()._load_callback_state()

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """``Trainer.train`` from the checkpoint :func:`resolve_resume` picks (a one-line error, not a
        traceback, when there is none to resume from)."""
        checkpoint = resolve_resume(resume_from_checkpoint, self.args.output_dir)
        if checkpoint is not None:
            logger.warning(f"resuming from {checkpoint}")
        return super().train(checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume full-model weights through ``from_pretrained`` (strict: every key must load).

        DeepSpeed, FSDP and PEFT checkpoints have their own loaders and go to the parent.
        """
        target = self.model if model is None else model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or isinstance(target, PeftModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = type(target).from_pretrained(resume_from_checkpoint, dtype=target.dtype)
        target.load_state_dict(saved.state_dict(), strict=True)


def _commit(staged: Path, final: Path) -> None:
    """Rename ``staged`` to ``final``; an existing ``final`` (the same step saved before) is moved aside
    first and deleted after, so ``final`` is always either the old checkpoint or the new one."""
    old = staged.with_name(f"{staged.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):  # the staging folder, once empty
        staged.parent.rmdir()
