"""InternVL2.5-1B at its real widths, end to end on the CPU: convert, generate pairs, two MPO steps.

    python -m benchmarks.real_width_1b [--work DIR] [--out benchmarks/results]

The model is InternViT-300M-448px + Qwen2.5-0.5B at the published widths (``mpo.models.sizes``, 0.94B
parameters, vocabulary 151674, untied head) with random weights; the tokenizer is the embedded one,
widened to the same vocabulary. Every phase is the public command a user runs, in its own process:

1. build: random weights in the native layout, then ``mpo convert --to original``: the OpenGVLab layout a
   user downloads (the native build is deleted; one full copy in memory at a time);
2. ``mpo convert`` back to the native layout;
3. ``mpo build-pairs dropout-ntp``: a 16-token answer with the image, continued without it: one pair;
4. ``mpo train`` with recipes/internvl2_5/1b/mpo.yaml (prefix sharing, vision once, precomputed reference,
   gradient checkpointing), LoRA on the LLM (``--use_peft``), fp32: two optimizer steps on that pair.

Images are 896 x 448 and the data asks for ``max_dynamic_patch`` 2: 2 tiles of 448 px + the thumbnail,
256 tokens each. Wall time and peak resident memory of each phase go to ``real_width_1b.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SIZE = "1b"
MAX_DYNAMIC_PATCH = 2
MAX_NEW_TOKENS = 16
STEPS = 2
MEMORY_LIMIT_GIB = 20.0
# Runs ``module.func(argv)`` and prints its own peak resident memory (ru_maxrss: KiB on Linux).
_CHILD = (
    "import resource, sys\nfrom {module} import {func}\nrc = {func}(sys.argv[1:])\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\nsys.exit(rc or 0)"
)


def write_questions(root: Path) -> Path:
    """One question on an 896 x 448 image, in an MMPR meta.json asking for ``MAX_DYNAMIC_PATCH`` tiles."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (896, 448), (200, 40, 40))
    image.paste((240, 240, 240), (100, 100, 300, 300))
    image.save(root / "img" / "q0.png")
    row = {
        "id": "q0",
        "image": "q0.png",
        "question": "<image>\nDescribe the shapes in the image and their colours.",
    }
    (root / "questions.jsonl").write_text(json.dumps(row) + "\n")
    meta = {
        "questions": {
            "root": "img",
            "annotation": "questions.jsonl",
            "repeat_time": 1,
            "max_dynamic_patch": MAX_DYNAMIC_PATCH,
            "data_augment": False,
            "length": 1,
        }
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root / "meta.json"


def build_main(argv: list[str]) -> int:
    """``mpo.models.sizes.build_random_native(SIZE, OUT)`` as a phase entry point (imports are local: the
    parent process only starts the phases and stays small)."""
    from mpo.models.sizes import build_random_native

    build_random_native(SIZE, argv[0])
    return 0


def run_phase(module: str, func: str, argv: list[str], log: Path) -> dict:
    """Run ``module.func(argv)`` in a fresh Python process; its wall time (s) and peak RSS (GiB)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    code = _CHILD.format(module=module, func=func)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], cwd=REPO, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{module}.{func} {argv[:2]} failed (exit {proc.returncode}); log {log}:\n{proc.stderr[-3000:]}"
        )
    peak = [line for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")][-1]
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(int(peak.split()[1]) / 2**20, 2)}


def run(work: Path, out: Path | None = RESULTS) -> dict:
    """All phases in ``work``; the results (also written to ``out``/real_width_1b.{json,md} unless None)."""
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    built, original, native = work / "built", work / "InternVL2_5-1B", work / "InternVL2_5-1B-native"
    pairs, run_dir = work / "pairs", work / "run"
    questions = write_questions(work / "questions")
    commands = {
        "build": ("benchmarks.real_width_1b", "build_main", [built]),
        "convert_to_original": (
            "mpo.cli",
            "main",
            ["convert", built, original, "--to", "original", "--max-shard-size", "1GB"],
        ),
        "convert_to_native": ("mpo.cli", "main", ["convert", original, native, "--max-shard-size", "1GB"]),
        "build_pairs": (
            "mpo.cli",
            "main",
            [
                "build-pairs",
                "dropout-ntp",
                "--model",
                native,
                "--data",
                questions,
                "--out",
                pairs,
                "--max-new-tokens",
                MAX_NEW_TOKENS,
                "--batch-size",
                1,
            ],
        ),
        "train": (
            "mpo.cli",
            "main",
            [
                "train",
                "--config",
                REPO / "recipes/internvl2_5/1b/mpo.yaml",
                "--model_name_or_path",
                native,
                "--meta_path",
                pairs / "meta.json",
                "--output_dir",
                run_dir,
                "--ref_cache_dir",
                work / "ref_cache",
                "--max_steps",
                STEPS,
                "--gradient_accumulation_steps",
                1,
                "--bf16",
                "false",
                "--report_to",
                "none",
                "--use_peft",
                "true",
                "--lora_r",
                16,
                "--lora_alpha",
                32,
            ],
        ),
    }
    phases = {}
    for name, (module, func, argv) in commands.items():
        phases[name] = run_phase(module, func, argv, logs / f"{name}.log")
        print(f"{name}: {phases[name]}", flush=True)
        if name == "convert_to_original":
            shutil.rmtree(built)  # the user's download is the original layout
    state = json.loads((run_dir / "trainer_state.json").read_text())
    results = {
        "phases": phases,
        "total_seconds": round(sum(p["seconds"] for p in phases.values()), 1),
        "peak_rss_gib": max(p["peak_rss_gib"] for p in phases.values()),
        "global_step": state["global_step"],
        "train_log": [e for e in state["log_history"] if "loss" in e],
        "pairs": json.loads((pairs / "report.json").read_text())["pairs"],
        "settings": {
            "size": SIZE,
            "max_dynamic_patch": MAX_DYNAMIC_PATCH,
            "image": "896x448 (2 tiles + thumbnail)",
            "max_new_tokens": MAX_NEW_TOKENS,
            "steps": STEPS,
            "dtype": "float32",
            "lora_r": 16,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "real_width_1b.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "real_width_1b.md").write_text(render(results))
    return results


def render(results: dict) -> str:
    """The results as a markdown table, one row per phase."""
    lines = [
        "InternVL2.5-1B real widths (0.94B parameters, fp32) on the CPU: random weights, original layout -> "
        f"native, {MAX_NEW_TOKENS}-token generation, {STEPS} MPO steps with LoRA and gradient checkpointing "
        f"({results['settings']['cpus']} CPUs)",
        "",
        "| phase | seconds | peak RSS GiB |",
        "|---|---|---|",
        *(f"| {name} | {p['seconds']} | {p['peak_rss_gib']} |" for name, p in results["phases"].items()),
        f"| **total** | **{results['total_seconds']}** | **{results['peak_rss_gib']}** (max) |",
        "",
        f"Pairs kept: {results['pairs'].get('kept')}; optimizer steps: {results['global_step']}; "
        f"losses: {[round(e['loss'], 4) for e in results['train_log']]}. Each phase is its own process; peak RSS "
        "is its ru_maxrss (memory-mapped weight pages included). Image 896 x 448 at max_dynamic_patch 2: "
        "2 tiles + thumbnail, 768 image tokens.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where real_width_1b.{json,md} go")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="real_width_1b-"))
    try:
        results = run(work, args.out)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
