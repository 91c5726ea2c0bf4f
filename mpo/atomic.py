"""Atomic file writes: a reader, or a run killed mid-write, sees the old file or the new one, never half."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` (same folder, so the rename stays on one
    file system) and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
