"""The methods of trl / transformers that this project's trainers override, checked against the installed
versions: an upgrade that renames one, or changes its arguments, fails here by name instead of silently
leaving the override unused (a renamed hook would simply never be called)."""

from __future__ import annotations

import inspect

import pytest
import transformers
import trl

from mpo.checkpointing import NativeResumeMixin
from mpo.sft import SFTStageTrainer
from mpo.trainer import MPOTrainer

OURS = (MPOTrainer, SFTStageTrainer, NativeResumeMixin)


def _upstream(cls: type) -> type:
    """The trl / transformers class whose methods ``cls`` overrides: its first base from outside this
    project (a mixin: transformers.Trainer, which it is mixed into)."""
    bases = [b for b in cls.__mro__[1:] if b is not object and not b.__module__.startswith("mpo")]
    return bases[0] if bases else transformers.Trainer


def _overrides() -> list[tuple[type, str, type]]:
    """(our class, method name, the upstream class it overrides) for every method our classes define that
    the upstream class also has, constructors aside."""
    found = []
    for cls in OURS:
        upstream = _upstream(cls)
        for name, member in vars(cls).items():
            if inspect.isfunction(member) and name != "__init__" and hasattr(upstream, name):
                found.append((cls, name, upstream))
    return found


OVERRIDES = _overrides()


def test_the_hooks_we_rely_on_are_among_the_overrides():
    """The list is derived, so it cannot go stale; it must at least hold the hooks the design rests on."""
    names = {f"{cls.__name__}.{name}" for cls, name, _ in OVERRIDES}
    for hook in (
        "MPOTrainer._compute_loss",  # the MPO objective (trl 1.16's DPOTrainer loss entry point)
        "MPOTrainer._precompute_ref_logps",  # the reference pass with images and the disk cache
        "MPOTrainer._prepare_dataset",  # records prepared by mpo.data.mmpr, not TRL's tokenisation
        "MPOTrainer._save_checkpoint",  # δ saved with every checkpoint
        "MPOTrainer._load_callback_state",  # δ restored on resume
        "NativeResumeMixin._load_from_checkpoint",  # full-model resume through from_pretrained
        "SFTStageTrainer.get_batch_samples",  # square loss averaging over the whole accumulated step
    ):
        assert hook in names, f"{hook} no longer overrides a trl / transformers method"


@pytest.mark.parametrize(
    "ours, name, upstream", OVERRIDES, ids=[f"{c.__name__}.{n}" for c, n, _ in OVERRIDES]
)
def test_an_overridden_hook_still_exists_upstream_with_our_arguments(ours, name, upstream):
    theirs = inspect.signature(getattr(upstream, name))
    mine = inspect.signature(getattr(ours, name))
    versions = f"trl {trl.__version__}, transformers {transformers.__version__}"
    missing = [
        p.name
        for p in theirs.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in mine.parameters
        and not any(q.kind == q.VAR_KEYWORD for q in mine.parameters.values())
    ]
    assert not missing, (
        f"{upstream.__module__}.{upstream.__name__}.{name} ({versions}) takes {missing}, which "
        f"{ours.__name__}.{name} does not accept: the upstream hook changed"
    )
    required = [
        p.name
        for p in mine.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = [p for p in required if p not in theirs.parameters]
    assert not unknown, (
        f"{ours.__name__}.{name} requires {unknown}, which {upstream.__name__}.{name} ({versions}) "
        "never passes: the upstream hook changed"
    )
