"""Checkpoint resume shared by the trainers (MPO and the SFT stages).

transformers 5 saves InternVL under its legacy key names (``language_model.model.*``) and maps them
back only in ``from_pretrained``; the Trainer's raw ``load_state_dict(strict=False)`` on resume would
match no key and silently go on from the initial weights. :class:`NativeResumeMixin` resumes
full-model weights through ``from_pretrained`` instead.
"""

from __future__ import annotations

from peft import PeftModel


class NativeResumeMixin:
    """Mix into a ``transformers.Trainer`` subclass (before the Trainer in the bases)."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume full-model weights through ``from_pretrained`` (strict: every key must load).

        DeepSpeed, FSDP and PEFT checkpoints have their own loaders and go to the parent.
        """
        target = self.model if model is None else model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or isinstance(target, PeftModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = type(target).from_pretrained(resume_from_checkpoint, dtype=target.dtype)
        target.load_state_dict(saved.state_dict(), strict=True)
