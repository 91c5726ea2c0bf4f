"""Crash-safe, sharded storage of a pair build: one append-only journal per shard.

Layout of an output folder::

    DIR/build.json                     settings of the build (checked on every rerun) and input size
    DIR/shards/shard-00000-of-00002.jsonl   one JSON line per finished question of shard 0
    DIR/shards/shard-00001-of-00002.jsonl

Each shard is a :class:`mpo.journal.Journal` keyed by the question's key: a question's line is
written as soon as the question is done, so rerunning the same command skips what is there and does
the rest. Question ``index`` goes to shard ``index % n``; each question is seeded by
:func:`mpo.generation.question_seed` from (seed, key), so a question's result does not depend on the
shard, the batch it ran in, or whether the run was interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mpo.atomic import atomic_write
from mpo.errors import UserError
from mpo.journal import read_records

BUILD_FILE = "build.json"
SHARD_DIR = "shards"


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
