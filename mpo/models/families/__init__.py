"""Model families, looked up in one place.

:data:`FAMILIES` lists every family module's :class:`~mpo.models.families.base.Family`. A checkpoint's
family comes from its config.json alone (no checkpoint code runs): the ``mpo_family`` key, which every
checkpoint this project builds, converts or trains carries (transformers keeps the key through
``save_pretrained``). A config without the key is InternVL2.5: that is what every checkpoint converted
before families existed holds, and a published InternVL3 ``-hf`` config has no field that InternVL2.5's
lacks (same architecture, processor and image settings), and its processing is the same (see
:mod:`~mpo.models.families.internvl3`); add ``"mpo_family": "internvl3"`` to its config.json to run its
family's rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpo.errors import UserError
from mpo.models.families import internvl2_5, internvl3
from mpo.models.families.base import PROCESSOR_ATTRIBUTE, Family

FAMILIES: dict[str, Family] = {f.name: f for f in (internvl2_5.FAMILY, internvl3.FAMILY)}
# The config.json key that names a checkpoint's family.
FAMILY_KEY = "mpo_family"
# The family of a config.json without FAMILY_KEY (see the module docstring).
UNMARKED = internvl2_5.FAMILY


def get(name: str, where: Path | str | None = None) -> Family:
    """The family called ``name``; UserError naming the known families otherwise."""
    if name in FAMILIES:
        return FAMILIES[name]
    at = f"{where}: " if where is not None else ""
    raise UserError(f"{at}unknown model family {name!r}: expected one of {', '.join(FAMILIES)}")


def detect(config: dict[str, Any], where: Path | str) -> Family:
    """The family of a config.json dict (original or native layout): its ``mpo_family``, else
    InternVL2.5. ``where`` (the file) goes into the error for an unknown name."""
    name = config.get(FAMILY_KEY)
    if name is None:
        return UNMARKED
    if not isinstance(name, str):
        raise UserError(f"{where}: {FAMILY_KEY} must be a family name, got {name!r}")
    return get(name, where)


def of_processor(processor: Any) -> Family:
    """The family of a processor loaded by :func:`mpo.models.loading.load_processor` or built by
    :func:`mpo.models.native_files.internvl_processor`; UserError for any other processor."""
    family = getattr(processor, PROCESSOR_ATTRIBUTE, None)
    if family is None:
        raise UserError(
            "this processor has no model family: load it with mpo.models.loading.load_processor(checkpoint)"
        )
    return family


def attach(processor: Any, family: Family) -> Any:
    """``processor`` with its family attached (what :func:`of_processor` reads); returns it."""
    setattr(processor, PROCESSOR_ATTRIBUTE, family)
    return processor


__all__ = ["FAMILIES", "FAMILY_KEY", "Family", "attach", "detect", "get", "of_processor"]
