"""Imports run downward, and every command line is in one place.

Layers, top to bottom (docs/design.md#layout); each imports its own layer and those below it, nothing above:
    commands       mpo.cli (every `main()` and argument parser), mpo.__main__, mpo.demo
    publishing     mpo.publishing (model card, hub, dashboards)
    applications   data_builders, eval (and not each other's internals: see below)
    core           every other module of mpo/ (the library: data, models, attention, losses, trainers, grading)
Read from the source (every import statement, module level or inside a function), not by importing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

ORDER = ("core", "application", "publishing", "commands")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import in ``path``, module level or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.module if node.module != "mpo" else name, node.lineno) for name in names]
    return found


def layer(module: str) -> str:
    if module == "mpo.__main__" or module.startswith(("mpo.cli", "mpo.demo")):
        return "commands"
    if module.startswith("mpo.publishing"):
        return "publishing"
    root = module.split(".")[0]
    if root in ("eval", "data_builders"):
        return "application"
    if root == "mpo":
        return "core"
    return "external"


def violations(root: Path) -> list[str]:
    """``file:line: layer module imports layer target`` for every import of a higher layer."""
    out = []
    for path in sorted(root.rglob("*.py")):
        here = module_name(path)
        for target, line in imports(path):
            there = layer(target)
            if there != "external" and ORDER.index(there) > ORDER.index(layer(here)):
                out.append(f"{path.relative_to(REPO)}:{line}: {layer(here)} {here} imports {there} {target}")
    return out


def command_lines(root: Path) -> list[str]:
    """``file:line: what`` for every ``main()`` and argument parser outside the command layer (mpo/cli).
    A pair builder adds its own flags to the parser it is given (``PairBuilder.add_arguments``)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        if layer(module_name(path)) == "commands":
            continue
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"def main\(|if __name__ == .__main__.:", text) or "ArgumentParser(" in text:
                out.append(f"{path.relative_to(REPO)}:{number}: {text.strip()}")
    return out


@pytest.mark.parametrize("package", ["mpo", "data_builders", "eval"])
def test_imports_run_downward(package):
    assert violations(REPO / package) == []


@pytest.mark.parametrize("package", ["mpo", "data_builders", "eval"])
def test_every_command_line_is_in_mpo_cli(package):
    assert command_lines(REPO / package) == []


def test_the_checks_catch_an_upward_import_and_a_stray_command(tmp_path, monkeypatch):
    """The trainer importing the hub (as it once did, for its run record) and an evaluation module with its
    own ``main()`` are caught; the command layer may import anything."""
    fake = tmp_path / "mpo"
    (fake / "cli").mkdir(parents=True)
    (fake / "trainer.py").write_text(
        "from mpo.publishing.hub import push\n\ndef f():\n    import eval.reports\n"
    )
    (fake / "cli" / "eval.py").write_text("import data_builders.synthetic\nfrom mpo.publishing import card\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "run.py").write_text("import mpo.cli\n\n\ndef main(argv):\n    return 0\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert violations(fake) + violations(tmp_path / "eval") == [
        "mpo/trainer.py:1: core mpo.trainer imports publishing mpo.publishing.hub",
        "mpo/trainer.py:4: core mpo.trainer imports application eval.reports",
        "eval/run.py:1: application eval.run imports commands mpo.cli",
    ]
    assert command_lines(tmp_path / "eval") == ["eval/run.py:4: def main(argv):"]
