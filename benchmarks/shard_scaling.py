"""Does `mpo build-pairs` scale over processes? One process against two shards, on the same machine.

    python -m benchmarks.shard_scaling [--questions 48] [--samples 4] [--out DIR]

The tiny model and the synthetic task (`mpo tiny-model`, `mpo synthetic`); correctness-based pairs
of ``--questions`` questions with ``--samples`` sampled responses each. Run A: one process with every
core (``OMP_NUM_THREADS`` = cores). Run B: one process per core, ``--shard i/N`` each with one thread,
started together into one output folder (the last shard to finish writes the pairs). Both must
produce the same pairs (each question is seeded from its key, not from its shard); the speed-up is
A's wall time over B's.

Writes shard_scaling.json and .md into ``--out`` (default ./mpo_bench).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import write_results
from mpo import markdown


def mpo(*args: str, threads: int, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mpo.cli", *args],
        env={**env, "OMP_NUM_THREADS": str(threads)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"mpo failed:\n{err[-3000:]}")


def pairs_of(out: Path) -> list[tuple]:
    rows = [
        json.loads(line)
        for f in sorted(out.glob("**/*.jsonl"))
        if "shards" not in f.parts
        for line in f.read_text().splitlines()
    ]
    return sorted((r["question"], r["chosen"], r["rejected"]) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.shard_scaling", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("mpo_bench"))
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="mpo-shards-"))
    wait([mpo("tiny-model", str(work / "model"), threads=cores, env=env)])
    wait([mpo("synthetic", str(work / "data"), "--n", str(args.questions), threads=cores, env=env)])
    common = [
        "build-pairs",
        "correctness",
        "--model",
        str(work / "model"),
        "--data",
        str(work / "data/qa/meta.json"),
        "--limit",
        str(args.questions),
        "--n",
        str(args.samples),
        "--max-new-tokens",
        "48",
        "--backend",
        "transformers",
    ]
    start = time.perf_counter()
    wait([mpo(*common, "--out", str(work / "one"), threads=cores, env=env)])
    one = time.perf_counter() - start
    start = time.perf_counter()
    wait(
        [
            mpo(*common, "--out", str(work / "sharded"), "--shard", f"{i}/{cores}", threads=1, env=env)
            for i in range(cores)
        ]
    )
    sharded = time.perf_counter() - start
    same = pairs_of(work / "one") == pairs_of(work / "sharded")
    report = {
        "cores": cores,
        "questions": args.questions,
        "samples": args.samples,
        "one_process_s": one,
        "sharded_s": sharded,
        "speedup": one / sharded,
        "same_pairs": same,
    }
    rows = [
        [f"1 process, {cores} threads", f"{one:.1f}", "1.00x"],
        [f"{cores} shards, 1 thread each", f"{sharded:.1f}", f"{one / sharded:.2f}x"],
    ]
    text = (
        "\n".join(
            [
                f"# `mpo build-pairs` over processes ({cores} cores, tiny model)",
                "",
                f"{args.questions} questions x {args.samples} samples, correctness-based pairs. Same pairs from both runs: "
                f"{'yes' if same else 'NO'}.",
                "",
                *markdown.table(["run", "wall seconds", "speed-up"], rows, "lrr"),
            ]
        )
        + "\n"
    )
    write_results(args.out, "shard_scaling", report, text)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
