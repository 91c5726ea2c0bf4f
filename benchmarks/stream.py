"""A stream of MMPR-like pairs in which every step has a new shape: MPOTrainer's prefix sharing on each
kernel against trl.DPOTrainer, as a real run meets them.

    python -m benchmarks.stream [--steps 200] [--layers 2] [--threads 2] [--out benchmarks/results]
    mpo gpu-check                  # on a GPU: the same stream at the full 1B depth, inside the check

Pairs (:func:`make_stream_pairs`): one image of 5-13 tiles at 448 px (1280-3328 image tokens), a 20-80
word question, chosen and rejected chain-of-thought answers of 100-400 words each, drawn independently
(the real shape of :mod:`benchmarks.mpo_speed`), one pair per step as in the recipes
(per_device_train_batch_size 1). Lengths are redrawn until no two pairs give a step of the same shape
under either trainer (TRL pads [prompt | longer answer] rows; MPO's shared row is [prompt | chosen |
rejected]), and the run counts the distinct shapes it saw.

Each configuration runs in a fresh process (:func:`benchmarks.mpo_speed.run_child`): training pairs/s over
steps 2..N, end to end with the reference pass, peak memory (RSS on the CPU, allocated CUDA memory on
a GPU), torch.compile's graph count in all and after the first step, and the first step's time against
the median step. CPU configurations: TRL; MPO shared on ``sdpa_varlen`` (one sdpa call per sequence,
the rejected branch against [prompt ; rejected]); MPO shared on ``sdpa`` (one dense [L, L] mask per row).
Writes stream.json and stream.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from benchmarks.mpo_speed import REAL_IMAGE_SIZES, WORDS, run_child
from mpo import markdown

CPU_RUNS = {
    "trl.DPOTrainer (MPO losses)": ("trl", {}),
    "MPOTrainer, prefix sharing, sdpa_varlen": ("mpo", {"attn_implementation": "sdpa_varlen"}),
    "MPOTrainer, prefix sharing, sdpa (dense mask)": ("mpo", {"attn_implementation": "sdpa"}),
}


def make_stream_pairs(root: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` MMPR-layout pairs (and their images) whose step shapes are all different (one pair a step)."""
    from PIL import Image

    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows, trl_shapes, mpo_shapes = [], set(), set()
    while len(rows) < n:
        size = rng.choice(REAL_IMAGE_SIZES)
        q, c, r = rng.randint(20, 80), rng.randint(100, 400), rng.randint(100, 400)
        trl_shape, mpo_shape = (size, q + max(c, r)), (size, q + c + r)
        if trl_shape in trl_shapes or mpo_shape in mpo_shapes:
            continue
        trl_shapes.add(trl_shape)
        mpo_shapes.add(mpo_shape)
        i = len(rows)
        Image.new("RGB", size, rng.choice(["red", "green", "blue"])).save(root / "img" / f"{i}.png")

        def text(k: int) -> str:
            return " ".join(rng.choice(WORDS) for _ in range(k))

        rows.append({"image": f"{i}.png", "question": text(q) + "?", "chosen": text(c), "rejected": text(r)})
    (root / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    meta = {"stream": {"root": "img", "annotation": "pairs.jsonl", "max_dynamic_patch": 12}}
    (root / "meta.json").write_text(json.dumps(meta))
    return rows


def run_stream(
    model: Path, work: Path, steps: int, runs: dict[str, tuple[str, dict]], threads: int | None
) -> dict:
    """Every configuration of ``runs`` over the same stream of ``steps`` pairs."""
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    make_stream_pairs(work / "stream", steps)
    data = work / "stream"
    return {
        name: run_child(kind, "stream", model, data, steps, 1, sw, env) for name, (kind, sw) in runs.items()
    }


def render(results: dict, title: str, baseline: str = "trl.DPOTrainer (MPO losses)") -> list[str]:
    """The stream table, each configuration's ratios against ``baseline``."""
    base = results.get(baseline, {})
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "failed: see stream.json"] + [""] * 8)
            continue
        ratio = (
            f"{r['train_pairs_per_s'] / base['train_pairs_per_s']:.2f}x / "
            f"{r['e2e_pairs_per_s'] / base['e2e_pairs_per_s']:.2f}x / {r['peak_mb'] / base['peak_mb']:.2f}x"
            if "train_pairs_per_s" in base
            else "-"
        )
        rows.append(
            [
                name,
                f"{r['train_pairs_per_s']:.3g}",
                f"{r['e2e_pairs_per_s']:.3g}",
                f"{r['peak_mb']:.0f}",
                ratio,
                str(r["compilations"]),
                str(r["compilations_after_first_step"]),
                f"{r['first_step_s']:.2f} / {r['median_step_s']:.2f}",
                f"{r['distinct_shapes']} of {r['steps']}",
            ]
        )
    header = [
        "configuration",
        "pairs/s (train)",
        "pairs/s (end to end)",
        "peak MB",
        "vs TRL: train / e2e / memory",
        "compilations",
        "after step 1",
        "first / median step s",
        "distinct step shapes",
    ]
    return [title, "", *markdown.table(header, rows)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (= pairs) per configuration")
    parser.add_argument("--layers", type=int, default=2, help="layers of each tower (InternVL2.5-1B widths)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument(
        "--out", type=Path, default=Path("mpo_bench"), help="folder for stream.json / stream.md"
    )
    args = parser.parse_args(argv)
    from mpo.models.sizes import build_random_native

    work = Path(tempfile.mkdtemp(prefix="mpo-stream-"))
    model = build_random_native("1b", work / "model", layers=args.layers)
    results = run_stream(model, work, args.steps, CPU_RUNS, args.threads)
    title = (
        f"Stream of {args.steps} MMPR-like pairs, one per step (InternVL2.5-1B widths, {args.layers} + "
        f"{args.layers} layers, CPU, {args.threads} threads); steps 2..N timed"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"steps": args.steps, "layers": args.layers, "threads": args.threads, "cores": os.cpu_count()}
    (args.out / "stream.json").write_text(json.dumps({"settings": settings, "runs": results}, indent=1))
    (args.out / "stream.md").write_text("\n".join(render(results, title)) + "\n")
    print("\n".join(render(results, title)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
