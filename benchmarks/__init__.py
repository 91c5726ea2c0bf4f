"""Speed and memory benchmarks, side by side with the plain TRL trainers."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: Path, name: str, report: dict, text: str) -> None:
    """``out/NAME.json`` (the numbers) and ``out/NAME.md`` (the table people read), then print the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    (out / f"{name}.md").write_text(text)
    print(text)
