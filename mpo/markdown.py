"""Markdown tables: the one renderer of the tables the project writes (evaluation reports, the model
card, the pair report, the demo's reports, the memory plan, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

RULE = {"l": "---", "r": "---:"}


def table(header: Sequence[object], rows: Iterable[Sequence[object]], align: str | None = None) -> list[str]:
    """The lines of a markdown table: ``header``, the rule (``align``: one letter per column, ``l``
    left or ``r`` right; default all left) and one line per row. Cells are ``str()``-ed, with ``|``
    escaped; a row shorter than the header is padded with empty cells."""
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - set(RULE):
        raise ValueError(f"align {align!r}: one of 'l' / 'r' per column of {list(header)}")

    def line(cells: Sequence[object]) -> str:
        cells = [str(c).replace("|", "\\|") for c in cells] + [""] * (len(header) - len(cells))
        return "| " + " | ".join(cells) + " |"

    return [line(header), "|" + "|".join(RULE[a] for a in align) + "|", *(line(r) for r in rows)]
