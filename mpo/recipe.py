"""Recipe YAML plus ``--key value`` overrides -> the config dataclasses of a command (TRL's parser).

    mpo train --config recipes/tiny/mpo.yaml --learning_rate 5e-7
"""

from __future__ import annotations

from mpo.errors import UserError


def parse_recipe(types: tuple[type, ...], argv: list[str], prog: str) -> tuple:
    """TRL's recipe parsing (``--config YAML`` plus ``--key value`` overrides) into one instance of each
    of ``types``; an unknown key or an invalid value becomes a one-line :class:`UserError`."""
    from trl import TrlParser

    try:
        return TrlParser(types, prog=prog).parse_args_and_config(args=argv)
    except ValueError as err:
        raise UserError(str(err)) from None
