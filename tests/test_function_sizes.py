"""No function of mpo/, eval/ or data_builders/ is longer than a reader can hold: 80 lines, decorators and
docstring included (issue #29). Read from the source, like tests/test_layers.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

MAX_LINES = 80


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (n lines)`` of every function under ``root`` longer than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                n = node.end_lineno - first + 1
                if n > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


@pytest.mark.parametrize("package", ["mpo", "eval", "data_builders"])
def test_no_function_is_over_80_lines(package):
    assert long_functions(REPO / package) == []


def test_the_check_catches_a_long_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    (package / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(package) == ["pkg/m.py:5 long (81 lines)"]
