"""Recipe YAML plus ``--key value`` overrides -> the config dataclasses of a command (TRL's parser).

    mpo train --config tiny/mpo --learning_rate 5e-7          # a recipe shipped with the package
    mpo train --config my_recipes/mpo.yaml                     # or a file

Shipped recipes live in the ``recipes`` package (the repository's ``recipes/`` folder), so a command
finds them from any working directory; relative paths inside a recipe (``meta_path``,
``output_dir``) stay relative to the working directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mpo.errors import UserError


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``tiny/mpo``, ``internvl2_5/8b/mpo``, ...)."""
    root = resources.files("recipes")
    names: list[str] = []

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                names.append(prefix + child.name.removesuffix(".yaml"))

    walk(root, "")
    return sorted(names)


def resolve_config(name: str) -> Path:
    """The recipe file ``name`` means: an existing file as given (relative to the working directory),
    else the shipped recipe it names, with or without a leading ``recipes/`` and a ``.yaml`` suffix;
    a one-line :class:`UserError` naming the nearest shipped recipes otherwise."""
    path = Path(name)
    if path.is_file():
        return path
    key = name.removeprefix("recipes/").removesuffix(".yaml")
    shipped = resources.files("recipes").joinpath(*f"{key}.yaml".split("/"))
    if shipped.is_file():
        return Path(str(shipped))
    known = shipped_recipes()
    near = [r for r in known if r.startswith(key.split("/")[0] + "/")] or known
    raise UserError(
        f"--config {name}: no such file, and no shipped recipe of that name; shipped: "
        f"{', '.join(near[:12])}{' ...' if len(near) > 12 else ''}"
    )


def config_argv(argv: list[str]) -> list[str]:
    """``argv`` with its ``--config X`` (or ``--config=X``, which TRL's parser does not read) as
    ``--config FILE``."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--config" or arg.startswith("--config="):
            value = arg.removeprefix("--config=") if "=" in arg else next(args, None)
            if value is None:
                raise UserError("--config needs a recipe: a YAML file or a shipped name such as tiny/mpo")
            out += ["--config", str(resolve_config(value))]
        else:
            out.append(arg)
    return out


def parse_recipe(types: tuple[type, ...], argv: list[str], prog: str) -> tuple:
    """TRL's recipe parsing (``--config`` recipe plus ``--key value`` overrides) into one instance of each
    of ``types``; an unknown key or an invalid value becomes a one-line :class:`UserError`."""
    from trl import TrlParser

    try:
        return TrlParser(types, prog=prog).parse_args_and_config(args=config_argv(argv))
    except ValueError as err:
        raise UserError(str(err)) from None
