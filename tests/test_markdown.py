"""The one markdown table renderer: rule from the alignment letters, cells escaped and padded."""

from __future__ import annotations

import pytest

from mpo.markdown import table


def test_table_lines_alignment_escaping_and_padding():
    assert table(["model", "acc"], [["a|b", 0.5], ["c"]], "lr") == [
        "| model | acc |",
        "|---|---:|",
        "| a\\|b | 0.5 |",  # a pipe inside a cell would start a new column
        "| c |  |",
    ]
    assert table(["x"], [])[1] == "|---|"


def test_alignment_must_name_each_column():
    with pytest.raises(ValueError, match="align 'l': one of 'l' / 'r' per column of \\['a', 'b'\\]"):
        table(["a", "b"], [], "l")
    with pytest.raises(ValueError, match="align 'lc'"):
        table(["a", "b"], [], "lc")
