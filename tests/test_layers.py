"""Imports run downward: the core never imports publishing, evaluation, the pair builders or the CLI.

Layers, top to bottom (docs/design.md#layout):
    entry points   mpo.__main__, mpo.cli, mpo.demo (and its parts), mpo.train may import anything, inside
                   functions only
                   (`mpo train` pushes to the hub when its recipe says so)
    publishing     mpo.hub                      core, eval
    applications   data_builders, eval          core (and not each other's internals: see below)
    core           every other module of mpo/   core only
Read from the source (every import statement, module level or inside a function), not by importing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

ENTRY_POINTS = {"mpo.__main__", "mpo.cli", "mpo.demo", "mpo.train"}
PUBLISHING = {"mpo.hub"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [
                (node.module if node.module != "mpo" else name, node.lineno, id(node) in top)
                for name in names
            ]
    return found


def layer(module: str) -> str:
    if module in ENTRY_POINTS or module.startswith("mpo.demo."):
        return "entry"
    if module in PUBLISHING:
        return "publishing"
    root = module.split(".")[0]
    if root in ("eval", "data_builders"):
        return "application"
    if root == "mpo":
        return "core"
    return "external"


def same_package(a: str, b: str) -> bool:
    """Two parts of one entry-point package (mpo.demo and its modules import each other freely)."""
    return a.split(".")[:2] == b.split(".")[:2] == ["mpo", "demo"]


# what each layer may import (of this project's layers)
ALLOWED = {
    "core": {"core"},
    "application": {"core", "application"},
    "publishing": {"core", "application"},
    "entry": {"core", "application", "publishing", "entry"},
}


def violations(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        here = module_name(path)
        for target, line, module_level in imports(path):
            there = layer(target)
            if there == "external":
                continue
            if there not in ALLOWED[layer(here)]:
                out.append(f"{path.relative_to(REPO)}:{line}: {layer(here)} {here} imports {there} {target}")
            elif (
                layer(here) == "entry" and there != "core" and module_level and not same_package(here, target)
            ):
                out.append(
                    f"{path.relative_to(REPO)}:{line}: entry point {here} imports {target} at module level"
                )
    return out


@pytest.mark.parametrize("package", ["mpo", "data_builders", "eval"])
def test_imports_run_downward(package):
    assert violations(REPO / package) == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The trainer importing the hub (as it once did, for its run record) is caught."""
    fake = tmp_path / "mpo"
    fake.mkdir()
    (fake / "trainer.py").write_text(
        "from mpo.hub import write_run_config\n\ndef f():\n    import eval.reports\n"
    )
    (fake / "cli.py").write_text("import data_builders.synthetic\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    found = violations(fake)
    assert found == [
        "mpo/cli.py:1: entry point mpo.cli imports data_builders.synthetic at module level",
        "mpo/trainer.py:1: core mpo.trainer imports publishing mpo.hub",
        "mpo/trainer.py:4: core mpo.trainer imports application eval.reports",
    ]
