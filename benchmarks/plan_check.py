"""`mpo plan`'s activation formula against measured peaks, on the CPU.

    python -m benchmarks.plan_check [--layers 2] [--out DIR]

One model: random weights at the InternVL2.5-1B widths (151k vocabulary, 448 px tiles) cut to
``--layers``. One pair, the largest of ``mpo bench --shape real``: a 13-tile image (4 x 3 + thumbnail),
an 80-word question, 400-word chosen and rejected answers, prefix sharing (MPOTrainer's default). Two
MPOTrainer steps in a fresh process (fp32 on the CPU), with gradient checkpointing off and on
(:func:`benchmarks.mpo_speed.child`).

Measured: the growth of peak RSS over training. Predicted: the optimizer state and gradients that
training creates (fp32 AdamW: 4 bytes of gradient and 8 of moments per trainable parameter) plus
:func:`mpo.plan.activation_bytes` for the step's language-model tokens and tiles, doubled because the
formula counts bf16 and this runs in fp32. The ratio measured / predicted says how far to trust the
plan for a job's activations.

Writes plan_check.json and .md into ``--out`` (default ./mpo_bench).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from benchmarks import write_results
from mpo import markdown


def make_pair(root: Path) -> None:
    """Two copies of the largest real-shape pair (the step before the timed one must see it too)."""
    from benchmarks.mpo_speed import WORDS

    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1792, 1344), "blue").save(root / "img" / "0.png")
    words = lambda n: " ".join(WORDS[i % len(WORDS)] for i in range(n))  # noqa: E731
    row = {
        "image": "0.png",
        "question": words(80) + "?",
        "chosen": words(400),
        "rejected": words(399) + " no",
    }
    (root / "pairs.jsonl").write_text((json.dumps(row) + "\n") * 2)
    (root / "meta.json").write_text(
        json.dumps({"bench": {"root": "img", "annotation": "pairs.jsonl", "max_dynamic_patch": 12}})
    )


def step_shape(model: Path, data: Path) -> tuple[int, int, int]:
    """(language-model tokens, tiles, trainable parameters) of one prefix-shared batch of the pair."""
    from mpo.data.collator import PreferenceCollator
    from mpo.data.mmpr import load_mmpr
    from mpo.models.loading import load_model, load_processor

    processor = load_processor(model)
    dataset, _ = load_mmpr(data / "meta.json", processor)
    batch = PreferenceCollator(processor, prefix_sharing=True)([dataset[0]])
    params = sum(p.numel() for p in load_model(model).parameters() if p.requires_grad)
    return int(batch["input_ids"].numel()), int(batch["pixel_values"].shape[0]), params


def render(report: dict) -> str:
    from mpo.plan import GiB

    rows = []
    for key, r in report["runs"].items():
        predicted = r["states"] + r["activations"]
        rows.append(
            [
                "on" if key == "True" else "off",
                f"{r['measured'] / GiB:.2f}",
                f"{r['states'] / GiB:.2f}",
                f"{r['activations'] / GiB:.2f}",
                f"{r['measured'] / predicted:.2f}",
            ]
        )
    return (
        "\n".join(
            [
                f"# `mpo plan`'s formula against measured peaks (InternVL2.5-1B widths, {report['layers']} + "
                f"{report['layers']} layers, CPU, fp32)",
                "",
                f"One MPO step on one prefix-shared pair: {report['tokens']} language-model tokens, {report['tiles']} tiles; "
                f"{report['trainable'] / 1e6:.0f}M trainable parameters. GiB.",
                "",
                *markdown.table(
                    [
                        "gradient checkpointing",
                        "measured peak growth",
                        "states (12 B/param)",
                        "activations (plan formula x 2, fp32)",
                        "measured / plan",
                    ],
                    rows,
                    "lrrrr",
                ),
                "",
                "The measured growth is the process's peak RSS, so it includes what the formula leaves out: the "
                "temporaries of single operators (the LM head's vocabulary tiles, backward buffers) and the "
                "allocator's slack. benchmarks/results/real_profile.md splits the live tensors at a step's peak by "
                "kind. The CPU's sdpa runs its flash kernel under every mask here, so no s^2 attention scores are "
                "stored, as on a GPU.",
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    from mpo.models.sizes import build_random_native
    from mpo.plan import activation_bytes

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plan_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("mpo_bench"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mpo-plan-check-"))
    model = build_random_native("1b", work / "model", layers=args.layers)
    make_pair(work / "data")
    tokens, tiles, params = step_shape(model, work / "data")
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    report = {"layers": args.layers, "tokens": tokens, "tiles": tiles, "trainable": params, "runs": {}}
    for checkpointing in (False, True):
        switches = {"gradient_checkpointing": checkpointing}
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.mpo_speed",
            "--child",
            "mpo",
            "real",
            str(model),
            str(work / "data"),
            "2",
            "1",
            json.dumps(switches),
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            raise SystemExit(f"plan check run failed:\n{out.stderr[-3000:]}")
        report["runs"][str(checkpointing)] = {
            "measured": json.loads(line[0][7:])["peak_mb"] * 2**20,
            "states": 12 * params,
            "activations": 2 * activation_bytes("1b", tokens, tiles, checkpointing, layers=args.layers),
        }
    text = render(report)
    write_results(args.out, "plan_check", report, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
