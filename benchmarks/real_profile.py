"""Where the time goes at the real shape: one training step of MPOTrainer and of trl.DPOTrainer, by phase
and by operator, and MPOTrainer's reference pass.

    python -m benchmarks.real_profile [--layers 2] [--threads 2] [--out DIR]     (also: make profile-real)

The model and pairs are `mpo bench --shape real`'s (random weights at the InternVL2.5-1B widths cut to
``--layers``, MMPR-like pairs: 5-13 tiles, 100-400 word answers), built by the same
:func:`benchmarks.mpo_speed.build_trainer`. Each trainer runs two steps of one pair in a fresh process; the
second is measured, the first warms up.

Phases are wall-clock (the CPU runs synchronously): global forward hooks time the vision tower, the
projector and the language model (with gradients, or without: the reference), wrappers time
``compute_loss`` (forward and loss), ``accelerator.backward`` and the optimizer step, and the rest of the
step is data loading and bookkeeping. The operator table is torch.profiler's self CPU time over the same
step. Writes real_profile.json and .md into ``--out`` (default ./mpo_bench).
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
from benchmarks.phase_clock import PhaseClock
from mpo import markdown

# module class name -> phase (InternVL2.5-1B: InternViT, the MLP projector, the Qwen2 decoder)
TIMED_MODULES = {
    "InternVLVisionModel": "vision tower",
    "InternVLMultiModalProjector": "projector",
    "Qwen2Model": "language model",
}
TOP_OPS = 12


def memory_at_peak(profiler) -> dict[str, float]:
    """GiB of live tensors by kind (parameters, gradients, optimizer state, activations, ...) at the step's
    peak, from torch.profiler's memory timeline (tensors only: the allocator's own slack is not in it)."""
    import numpy as np
    import torch
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

    _, sizes = MemoryProfileTimeline(profiler._memory_profile())._coalesce_timeline(torch.device("cpu"))
    sizes = np.asarray(sizes, dtype=np.float64)
    peak = sizes.sum(axis=1).argmax()
    return {
        (category.name.lower() if category else "unknown"): sizes[peak, index + 1] / 2**30
        for category, index in _CATEGORY_TO_INDEX.items()
    }


def child(kind: str, model: str, data: str) -> dict:
    """Two steps of one pair; the phases and operators of the second, and the reference pass (MPO)."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from benchmarks.mpo_speed import build_trainer
    from mpo.fused_head import compact_lm_head

    def phase(module, kwargs) -> str | None:
        name = TIMED_MODULES.get(type(module).__name__)
        if name is None:
            return None
        return f"{name} forward{'' if torch.is_grad_enabled() else ' (no grad)'}"

    clock = PhaseClock("setup")
    clock.time_every_module(phase)
    clock.label = "reference pass"  # MPOTrainer runs it while it is built
    trainer = build_trainer(kind, model, data, steps=2, batch=1)
    reference_s = getattr(trainer, "precompute_seconds", 0.0)
    clock.label = "warm-up step"
    clock.wrap(trainer, "compute_loss", "forward and loss (total)")
    clock.wrap(trainer.accelerator, "backward", "backward")
    opt_start: list[float] = []
    register_optimizer_step_pre_hook(lambda *a: opt_start.append(time.perf_counter()))
    register_optimizer_step_post_hook(
        lambda *a: clock.add("optimizer step", time.perf_counter() - opt_start.pop())
    )
    # shapes, memory and stacks: the memory timeline needs them to tell activations from gradients
    profiler = profile(
        activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True, with_stack=True
    )
    step_ends: list[float] = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())
            if len(step_ends) == 1:
                clock.label = "step"
                profiler.__enter__()
            elif len(step_ends) == 2:
                profiler.__exit__(None, None, None)
                clock.label = "after"

    trainer.add_callback(Steps())
    with compact_lm_head():  # both trainers' heads score only the labelled positions, as on a GPU
        trainer.train()
    ops = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    n_pairs = len(trainer.train_dataset)
    return {
        "kind": kind,
        "step_s": step_ends[1] - step_ends[0],
        "phases": dict(clock.seconds["step"]),
        "reference_pass_s_per_pair": reference_s / n_pairs if reference_s else 0.0,
        "reference_phases_per_pair": {k: v / n_pairs for k, v in clock.seconds["reference pass"].items()},
        "ops": [
            {"name": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in ops[:TOP_OPS]
        ],
        "profiled_self_s": sum(e.self_cpu_time_total for e in ops) / 1e6,
        "memory_at_peak": memory_at_peak(profiler),
        "threads": torch.get_num_threads(),
    }


def data_costs(model: str, data: str, repeats: int = 20) -> dict:
    """Milliseconds per record of the collator's parts (one thread): decoding and tiling the image, and
    tokenising the prompt as the whole expanded text against :func:`mpo.data.template.tokenize_with_images`
    (one context token per image, expanded after)."""
    import torch

    from mpo.data.images import load_visuals, tiles_for
    from mpo.data.mmpr import load_mmpr
    from mpo.data.template import expand_images, tokenize_with_images
    from mpo.models import families
    from mpo.models.loading import load_processor

    torch.set_num_threads(1)
    processor = load_processor(model)
    record = load_mmpr(Path(data) / "meta.json", processor)[0][0]
    family, tokenizer = families.of_processor(processor), processor.tokenizer
    prompt = family.template.prompt_text(record["question"])
    _, tiles = tiles_for(processor.image_processor, load_visuals(record["image_paths"]), 12)
    n = processor.image_seq_length

    def ms(fn) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats * 1e3

    return {
        "tiles": sum(tiles),
        "image decode and tiling": ms(
            lambda: tiles_for(processor.image_processor, load_visuals(record["image_paths"]), 12)
        ),
        "prompt, whole expanded text": ms(
            lambda: tokenizer(expand_images(prompt, tiles, n, family.tokens), add_special_tokens=False)
        ),
        "prompt, one context token per image": ms(
            lambda: tokenize_with_images(tokenizer, prompt, tiles, n, family.tokens)
        ),
        "both responses": ms(
            lambda: [
                tokenizer(family.template.response_text(record[k]), add_special_tokens=False)
                for k in ("chosen", "rejected")
            ]
        ),
    }


def phase_rows(run: dict) -> list[tuple[str, float]]:
    """(phase, seconds) of one step; the model parts are split out of the forward, the rest is data."""
    p = run["phases"]
    model = sum(v for k, v in p.items() if k.split(" forward")[0] in TIMED_MODULES.values())
    order = [f"{m} forward{g}" for g in ("", " (no grad)") for m in TIMED_MODULES.values()]
    rows = [(k, p[k]) for k in order if k in p]
    rows.append(("head, log-probs and loss", p.get("forward and loss (total)", 0.0) - model))
    rows += [("backward", p.get("backward", 0.0)), ("optimizer step", p.get("optimizer step", 0.0))]
    rows.append(("data and the rest", run["step_s"] - sum(v for _, v in rows)))
    return rows


def render(report: dict) -> str:
    runs = report["runs"]
    lines = [
        f"# Where the time goes at the real shape ({report['model']}, CPU, {report['threads']} threads, fp32)",
        "",
        f"One training step of one pair ({report['pair']}), the second of two; seconds. "
        "`python -m benchmarks.real_profile`.",
        "",
    ]
    phases = {kind: dict(phase_rows(run)) for kind, run in runs.items()}
    names = list(dict.fromkeys(n for kind in runs for n in phases[kind]))
    rows = [[n] + [f"{phases[k].get(n, 0.0):.1f}" for k in runs] for n in names]
    rows.append(["**step**"] + [f"**{runs[k]['step_s']:.1f}**" for k in runs])
    lines += markdown.table(["phase"] + [f"{k} (s)" for k in runs], rows, "l" + "r" * len(runs))
    mpo = runs.get("mpo")
    if mpo:
        ref = mpo["reference_pass_s_per_pair"]
        lines += [
            "",
            f"MPOTrainer's reference pass before training: {ref:.1f} s per pair "
            + "("
            + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(mpo["reference_phases_per_pair"].items()))
            + f"), {ref / mpo['step_s']:.2f} of a training step: one epoch runs at "
            f"{mpo['step_s'] / (mpo['step_s'] + ref):.2f}x its training-only speed.",
        ]
    data = report["data_ms"]
    lines += [
        "",
        f"The collator's parts, one record ({data['tiles']} tiles), one thread, ms: before training each record "
        "is collated once for the reference pass and once per epoch for training (in DataLoader workers when "
        "`dataloader_num_workers` > 0).",
        "",
        *markdown.table(["part", "ms"], [[k, f"{v:.2f}"] for k, v in data.items() if k != "tiles"], "lr"),
    ]
    kinds = [k for k in runs]
    lines += [
        "",
        "Live tensors at each step's peak, GiB (torch.profiler's memory timeline: tensors only, so the "
        "allocator's slack, which the RSS peaks of `mpo bench` include, is not in it):",
        "",
        *markdown.table(
            ["kind"] + kinds,
            [
                [c] + [f"{runs[k]['memory_at_peak'][c]:.2f}" for k in kinds]
                for c in runs[kinds[0]]["memory_at_peak"]
            ]
            + [["**total**"] + [f"**{sum(runs[k]['memory_at_peak'].values()):.2f}**" for k in kinds]],
            "l" + "r" * len(kinds),
        ),
    ]
    for kind, run in runs.items():
        lines += ["", f"Operators of the {kind} step by self CPU time (torch.profiler):", ""]
        total = run["profiled_self_s"]
        lines += markdown.table(
            ["operator", "self s", "share", "calls"],
            [
                [f"`{o['name']}`", f"{o['self_s']:.1f}", f"{o['self_s'] / total:.0%}", o["calls"]]
                for o in run["ops"]
            ],
            "lrrr",
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.real_profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="which MMPR-like pair (make_pairs' seed)")
    parser.add_argument("--out", type=Path, default=Path("mpo_bench"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)))
        return 0
    from PIL import Image

    from benchmarks.mpo_speed import make_pairs
    from mpo.models.sizes import build_random_native

    work = Path(tempfile.mkdtemp(prefix="mpo-profile-"))
    model = build_random_native("1b", work / "model", layers=args.layers)
    rows = make_pairs(work / "data", "real", n=1, seed=args.seed)
    pairs = work / "data" / "pairs.jsonl"
    pairs.write_text(pairs.read_text() * 2)  # the same pair twice: the warm-up step and the measured one
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads)}
    report = {
        "model": f"InternVL2.5-1B widths, {args.layers} + {args.layers} layers",
        "threads": args.threads,
        "pair": "{} image, a {}-word question, {}- and {}-word answers".format(
            "x".join(map(str, Image.open(work / "data" / "img" / rows[0]["image"]).size)),
            *(len(rows[0][k].split()) for k in ("question", "chosen", "rejected")),
        ),
        "runs": {},
        "data_ms": data_costs(str(model), str(work / "data")),
    }
    for kind in ("mpo", "trl"):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.real_profile",
            "--child",
            kind,
            str(model),
            str(work / "data"),
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            raise SystemExit(f"profile run failed ({kind}):\n{out.stderr[-3000:]}")
        report["runs"][kind] = json.loads(line[0][7:])
        print(f"  {kind}: step {report['runs'][kind]['step_s']:.1f} s", flush=True)
    write_results(args.out, "real_profile", report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
