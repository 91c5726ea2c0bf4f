"""Crash-safe, sharded storage of a pair build: one append-only journal per shard.

Layout of an output folder::

    DIR/build.json                     settings of the build (checked on every rerun) and input size
    DIR/shards/shard-00000-of-00002.jsonl   one JSON line per finished question of shard 0
    DIR/shards/shard-00001-of-00002.jsonl

A question's line is written (flushed and fsynced) as soon as the question is done; it carries
the question's key, so rerunning the same command skips what is there and does the rest: no
duplicate, no gap. A line cut short by a crash (no final newline) is detected and discarded
before the run appends. Question ``index`` goes to shard ``index % n``; each question is seeded by
:func:`question_seed` from (seed, key), so a question's result does not depend on the shard, the
batch it ran in, or whether the run was interrupted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from pathlib import Path

from mpo.atomic import atomic_write
from mpo.errors import UserError

BUILD_FILE = "build.json"
SHARD_DIR = "shards"


def question_seed(seed: int, key: str) -> int:
    """A 62-bit seed for one question, from the run's seed and the question's key."""
    return int(hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()[:15], 16)


def parse_shard(spec: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n). Without a spec: ``RANK``/``WORLD_SIZE`` (set by ``torchrun`` and
    ``accelerate launch``) when present, else (0, 1)."""
    env = os.environ if env is None else env
    if spec is None:
        if "WORLD_SIZE" in env and "RANK" in env:
            spec = f"{env['RANK']}/{env['WORLD_SIZE']}"
        else:
            return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(f"--shard: expected i/n (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard: need 0 <= i < n, got {spec!r}")
    return i, n


def read_records(path: Path) -> tuple[list[dict], int]:
    """The complete records of a journal and the byte length they span.

    The part after the last newline is an unfinished write and is not returned. A complete line
    that is not a JSON object with a ``key`` means the file was damaged: :class:`UserError`.
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
                f"{path}:{line_no}: damaged journal line ({err.msg}); remove the line to redo it"
            ) from None
        if not isinstance(record, dict) or "key" not in record:
            raise UserError(f"{path}:{line_no}: damaged journal line (no key); remove the line to redo it")
        records.append(record)
    return records, end


class Journal:
    """The append-only record file of one shard, locked while open (one writer per shard)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab+")  # noqa: SIM115 (held open for the whole run)
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise UserError(f"{path}: another process is writing this shard") from None
        records, end = read_records(path)
        self.discarded_bytes = path.stat().st_size - end
        if self.discarded_bytes:
            print(
                f"{path}: discarding an unfinished last line ({self.discarded_bytes} bytes)", file=sys.stderr
            )
            self._file.truncate(end)
        self.done: dict[str, dict] = {}
        for record in records:
            self.done.setdefault(record["key"], record)

    def append(self, record: dict) -> None:
        if record["key"] in self.done:
            raise ValueError(f"question {record['key']!r} is already in {self.path}")
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done[record["key"]] = record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BuildDir:
    """An output folder: its settings file and its shard journals."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.shard_dir = self.out / SHARD_DIR

    @property
    def build_file(self) -> Path:
        return self.out / BUILD_FILE

    def shard_path(self, i: int, n: int) -> Path:
        return self.shard_dir / f"shard-{i:05d}-of-{n:05d}.jsonl"

    def read_build(self) -> dict:
        if not self.build_file.is_file():
            raise UserError(f"{self.out}: not a pair build (no {BUILD_FILE})")
        return json.loads(self.build_file.read_text(encoding="utf-8"))

    def prepare(self, build: dict) -> None:
        """Record ``build`` (settings, shard count, input summary) or check it equals the recorded one.

        A rerun with other settings would mix two builds in one output: refused, naming the
        settings that differ.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        if self.build_file.is_file():
            old = self.read_build()
            if old != build:
                keys = sorted(k for k in set(old) | set(build) if old.get(k) != build.get(k))
                diffs = "; ".join(f"{k}: {old.get(k)!r} then, {build.get(k)!r} now" for k in keys)
                raise UserError(
                    f"{self.out} holds a build with other settings ({diffs}); "
                    "use another --out, or delete the folder to start over"
                )
            return
        atomic_write(self.build_file, json.dumps(build, indent=1, ensure_ascii=False) + "\n")

    def collect(self, n_shards: int, n_questions: int) -> tuple[list[dict], dict[int, int]]:
        """All records of all shards, in question order, and the number missing per shard.

        Raises :class:`UserError` when a question index appears twice (two builds mixed).
        """
        by_index: dict[int, dict] = {}
        for i in range(n_shards):
            records, _ = read_records(self.shard_path(i, n_shards))
            for record in records:
                index = record["index"]
                if index in by_index:
                    if by_index[index]["key"] == record["key"]:
                        continue  # the same question twice: identical results, keep one
                    raise UserError(f"{self.shard_path(i, n_shards)}: question index {index} appears twice")
                by_index[index] = record
        missing: dict[int, int] = {}
        for index in range(n_questions):
            if index not in by_index:
                missing[index % n_shards] = missing.get(index % n_shards, 0) + 1
        return [by_index[k] for k in sorted(by_index)], missing
