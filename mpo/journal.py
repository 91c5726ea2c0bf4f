"""Append-only JSONL journals that a crashed run resumes from: pair-building shards
(``data_builders.store``), evaluation predictions and judgements (``eval/``).

A record is one JSON line, written (flushed and fsynced) as soon as it is done; it carries a key, so a
rerun of the same command skips what is there and does the rest: no duplicate, no gap. A line cut
short by a crash (no final newline) is discarded before the run appends, and said so on stderr. A
journal is locked while open: one writer per file.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Callable, Hashable
from operator import itemgetter
from pathlib import Path

from mpo.errors import UserError


def read_records(
    path: Path, key: Callable[[dict], Hashable] = itemgetter("key"), what: str = "journal"
) -> tuple[list[dict], int]:
    """The complete records of a journal and the byte length they span.

    The part after the last newline is an unfinished write and is not returned. A complete line that
    is not a JSON object with a key means the file was damaged: a :class:`UserError` naming the line.
    """
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    records = []
    for line_no, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(
                f"{path}:{line_no}: damaged {what} line ({err.msg}); remove the line to redo it"
            ) from None
        try:
            key(record)
        except (KeyError, TypeError, AttributeError):
            raise UserError(
                f"{path}:{line_no}: damaged {what} line (no key); remove the line to redo it"
            ) from None
        records.append(record)
    return records, end


class Journal:
    """An append-only record file, locked while open; ``done`` maps each key to its first record."""

    def __init__(
        self, path: Path, key: Callable[[dict], Hashable] = itemgetter("key"), what: str = "journal"
    ) -> None:
        self.path, self.key, self.what = Path(path), key, what
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab+")  # noqa: SIM115 (held open for the whole run)
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise UserError(f"{self.path}: another process is writing this {what}") from None
        records, end = read_records(self.path, key, what)
        self.discarded_bytes = self.path.stat().st_size - end
        if self.discarded_bytes:
            print(
                f"{self.path}: discarding an unfinished last line ({self.discarded_bytes} bytes)",
                file=sys.stderr,
            )
            self._file.truncate(end)
        self.done: dict[Hashable, dict] = {}
        for record in records:
            self.done.setdefault(key(record), record)

    def append(self, record: dict, *, sync: bool = True) -> None:
        """Write ``record`` (a new key); ``sync=False`` leaves the fsync to :meth:`sync` (once per batch)."""
        k = self.key(record)
        if k in self.done:
            raise ValueError(f"{k!r} is already in {self.path}")
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self.done[k] = record
        if sync:
            self.sync()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
