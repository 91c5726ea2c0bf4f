"""Read back an offline wandb run (``run-*.wandb``) in tests.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
chunks ``crc32c(4) | length(2) | type(1) | data``, chunk types FULL=1, FIRST=2, MIDDLE=3, LAST=4.
Each reassembled payload is a ``wandb_internal_pb2.Record``. wandb 0.31 no longer ships a Python
reader (its core is in Go), hence this one.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7
CHUNK_HEADER = 7


def records(path: Path) -> Iterator[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb run file"
    pos, payload = HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        payload = chunk if kind in (1, 2) else payload + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(payload)
            yield rec
            payload = b""


def run_file(wandb_dir: Path, timeout: float = 60.0) -> Path:
    """The run file under ``wandb_dir``, once wandb's service has written its final ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(Path(wandb_dir).glob("wandb/offline-run-*/run-*.wandb"))
        if len(found) == 1 and any(r.WhichOneof("record_type") == "exit" for r in records(found[0])):
            return found[0]
        assert time.monotonic() < deadline, f"no finished wandb run under {wandb_dir}: {found}"
        time.sleep(0.2)


def history_keys(path: Path) -> set[str]:
    return {
        item.nested_key[0] if item.nested_key else item.key  # media (tables, images) nest their fields
        for rec in records(path)
        if rec.WhichOneof("record_type") == "history"
        for item in rec.history.item
    }
