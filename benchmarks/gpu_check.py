"""GPU check: every installed attention kernel exact in every layout, MPOTrainer vs trl.DPOTrainer at the
InternVL2.5-1B widths, and padding-free varlen flash-attention vs padded rows.

    python -m benchmarks.gpu_check          # CUDA, bf16: fits in 8 minutes on one H100 (also: mpo gpu-check)
    python -m benchmarks.gpu_check --dry    # CPU, fp32, tiny shapes: the same code, CUDA-only parts skipped

1. Exactness. For each kernel that runs here (eager, sdpa, sdpa_varlen, flex_attention with triton,
   flash_attention_2 with flash-attn, torch_varlen with torch >= 2.9) and each layout (plain, vision once,
   prefix sharing, packing, prefix sharing + packing), the summed response log-probs and the gradient of
   their sum are compared with the plain two-row layout under sdpa, in the same dtype. Tolerances: fp32 1e-4; bf16 2 % of the largest
   |log-prob| and 5 % relative gradient error (bf16 keeps 8 bits of mantissa; a leaking mask is off
   by far more: the "leaky" control row packs the pairs into one attention group and must FAIL).
   Model: InternVL2.5-1B widths (InternViT 1024 wide, Qwen2.5-0.5B 896 wide), 2 layers each, 448 px tiles
   (256 tokens each); --dry: the tiny model.
2. The stream (:mod:`benchmarks.stream`). MPOTrainer (defaults: ``auto``, i.e. prefix sharing on a varlen
   kernel) and MPOTrainer with prefix sharing under flex_attention (by name, where triton runs) against
   trl.DPOTrainer with the MPO losses, each in a fresh process, over a stream of MMPR-like pairs (one image of
   5-13 tiles, 20-80 word question, 100-400 word answers), one pair per step and no two steps of one shape:
   pairs/s in training and end to end (reference pass included), peak GPU memory, torch.compile's
   compilations (all, and after the first step), first step against the median step. Model: the
   InternVL2.5-1B widths at full depth (24 + 24 layers, 0.94B parameters, random weights).
3. Which kernel ``auto`` picks here for each layout (also: ``mpo env``).

Writes gpu_check.json and gpu_check.md into --out (default ./mpo_gpu_check).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.stream import render as render_stream
from benchmarks.stream import run_stream
from mpo import markdown
from mpo.attention import EXPRESSES, FLASH_4, KERNELS, SDPA_VARLEN, TORCH_VARLEN, Platform
from mpo.attention import LAYOUTS as LAYOUT_NAMES

LAYOUTS = {
    "plain": dict(prefix_sharing=False, vision_once=False),
    "vision once": dict(prefix_sharing=False, vision_once=True),
    "prefix sharing": dict(prefix_sharing=True),
    "packing": dict(prefix_sharing=False, vision_once=True, max_packed_tokens=1 << 16),
    "prefix sharing + packing": dict(prefix_sharing=True, max_packed_tokens=1 << 16),
}
TOLERANCE = {"float32": (1e-4, 1e-4), "bfloat16": (2e-2, 5e-2)}  # (log-prob, relative gradient)


def build_model(out: Path, *, real: bool, layers: int | None = None) -> Path:
    """The tiny model, or random weights at the InternVL2.5-1B widths (``layers`` deep, default 24)."""
    from mpo.models.sizes import build_random_native
    from mpo.models.tiny import build_tiny_model

    if not real:
        return build_tiny_model(out)
    path = build_random_native("1b", out, layers=layers, device="cuda", dtype=torch.bfloat16)
    gc.collect()  # the weights are on disk now: free the GPU for the runs that load them
    torch.cuda.empty_cache()
    return path


def installed_kernels(cuda: bool) -> tuple[list[str], dict[str, str]]:
    """The kernels that run here, and why each other one does not."""

    platform = Platform.detect()
    # sdpa_varlen is sdpa once per sequence: it runs wherever sdpa does
    kernels, skipped = ["sdpa", "eager", SDPA_VARLEN], {}
    if platform.flex_backward and cuda:
        kernels.append("flex_attention")
    else:  # (its CPU forward is checked by tests/test_mpo_trainer.py)
        skipped["flex_attention"] = "triton is not installed" if cuda else "no backward on the CPU"
    if platform.flash_attn:
        kernels.append("flash_attention_2")
    else:
        skipped["flash_attention_2"] = "needs CUDA and flash-attn" + (
            "" if not cuda else " (pip install flash-attn)"
        )
    if platform.flash_attn_4:
        kernels.append(FLASH_4)
    else:
        skipped[FLASH_4] = "needs a Hopper or newer GPU and flash-attn-4" + (
            "" if not cuda else " (pip install --pre flash-attn-4)"
        )
    if platform.torch_varlen:
        kernels.append(TORCH_VARLEN)
    else:
        skipped[TORCH_VARLEN] = "needs CUDA and torch >= 2.9"
    return kernels, skipped


def exactness(model_dir: Path, data: Path, device: str, dtype: torch.dtype) -> list[dict]:
    """Log-probs and gradients of every (kernel, layout) against plain rows under sdpa."""
    from mpo.attention import layout_of
    from mpo.data.collator import PreferenceCollator
    from mpo.data.mmpr import load_mmpr
    from mpo.models.loading import load_model, load_processor
    from mpo.scoring import with_fused_head
    from mpo.trainer import MPOConfig, MPOTrainer

    processor = load_processor(model_dir)
    data_set, _ = load_mmpr(data / "meta.json", processor)
    records = [data_set[i] for i in range(min(4, len(data_set)))]
    dtype_name = str(dtype).removeprefix("torch.")
    kernels, _ = installed_kernels(device == "cuda")
    # the trainer whose scoring routine runs every model below (its own model is not used)
    scorer = MPOTrainer(
        load_model(model_dir, attn_implementation="sdpa"),
        train_dataset=data_set,
        args=MPOConfig(
            output_dir=tempfile.mkdtemp(),
            report_to=[],
            precompute_ref_log_probs=False,
            prefix_sharing=False,
            max_length=None,
            bf16=False,
            use_cpu=device == "cpu",
        ),
        processing_class=processor,
    )

    def run(kernel: str, switches: dict, leaky: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        grads = not (kernel == "flex_attention" and device == "cpu")  # no flex backward on the CPU
        layout = layout_of(
            prefix_sharing=switches.get("prefix_sharing", False), packed="max_packed_tokens" in switches
        )
        model = load_model(
            model_dir, attn_implementation=kernel, layout=layout, training=grads, dtype=dtype_name
        ).to(device)
        with_fused_head(model)
        collate = PreferenceCollator(
            processor,
            prefix_sharing=switches.get("prefix_sharing", False),
            vision_once=switches.get("vision_once", False),
            max_packed_tokens=switches.get("max_packed_tokens"),
        )
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(records).items()}
        if leaky:  # the negative control: every packed pair in one attention group
            one = torch.where(batch["attn_group"] >= 0, 0, -1)
            batch = {**batch, "attn_group": one, "attn_prefix": one}
        with torch.set_grad_enabled(grads), torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            logps, _ = scorer.sequence_logps(model, batch)
            if not grads:
                return logps.float().detach().cpu(), None
            logps.sum().backward()
        grad = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        return logps.float().detach().cpu(), grad.cpu()

    ref_logps, ref_grad = run("sdpa", LAYOUTS["plain"])
    tol_logp, tol_grad = TOLERANCE[dtype_name]
    rows = []
    cases = [(k, name, False) for k in kernels for name in LAYOUTS] + [("sdpa", "packing", True)]
    for kernel, name, leaky in cases:
        start = time.perf_counter()
        logps, grad = run(kernel, LAYOUTS[name], leaky)
        logp_err = float((logps - ref_logps).abs().max() / ref_logps.abs().max().clamp_min(1.0))
        grad_err = None if grad is None else float((grad - ref_grad).norm() / ref_grad.norm())
        ok = logp_err <= tol_logp and (grad_err is None or grad_err <= tol_grad)
        rows.append(
            {
                "kernel": kernel,
                "layout": name + (" (leaky control)" if leaky else ""),
                "dtype": dtype_name,
                "logp_err": logp_err,
                "grad_err": grad_err,
                "exact": ok,
                "expected_exact": not leaky,
                "seconds": time.perf_counter() - start,
            }
        )
        print(
            f"  {kernel:17s} {rows[-1]['layout']:28s} logp {logp_err:.2e}  grad "
            f"{'-' if grad_err is None else f'{grad_err:.2e}'}  {'ok' if ok == (not leaky) else 'FAIL'}",
            flush=True,
        )
    return rows


def stream_runs(kernels: list[str]) -> dict[str, tuple[str, dict]]:
    """The stream's configurations on this machine."""
    runs = {"trl.DPOTrainer (MPO losses)": ("trl", {}), "MPOTrainer (defaults)": ("mpo", {})}
    if "flex_attention" in kernels:
        runs["MPOTrainer, prefix sharing, flex_attention (by name)"] = (
            "mpo",
            {"attn_implementation": "flex_attention"},
        )
    return runs


def targets(stream: dict) -> list[str]:
    """The GPU targets of the defaults against TRL over the stream, each with its measured value."""
    base, ours = stream.get("trl.DPOTrainer (MPO losses)", {}), stream.get("MPOTrainer (defaults)", {})
    if "train_pairs_per_s" not in base or "train_pairs_per_s" not in ours:
        return ["targets: not measured (a run failed)"]
    checks = [
        (
            "training pairs/s >= 3x TRL",
            ours["train_pairs_per_s"] / base["train_pairs_per_s"],
            lambda x: x >= 3,
        ),
        ("end to end >= 2.5x TRL", ours["e2e_pairs_per_s"] / base["e2e_pairs_per_s"], lambda x: x >= 2.5),
        ("peak memory <= 0.5x TRL", ours["peak_mb"] / base["peak_mb"], lambda x: x <= 0.5),
    ]
    lines = [f"- {name}: {value:.2f}x, {'met' if ok(value) else 'NOT met'}" for name, value, ok in checks]
    after = ours["compilations_after_first_step"]
    lines.append(f"- no compilation after the first step: {after}, {'met' if after == 0 else 'NOT met'}")
    return lines


def render(report: dict) -> str:
    env = report["environment"]
    versions = env["packages"]
    lines = [
        f"# GPU check ({'dry run on the CPU' if report['dry'] else env['device']})",
        "",
        ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
    ]
    lines += [f"- skipped: {k}: {why}" for k, why in report["skipped"].items()]
    lines += ["", report["runs"]] if "runs" in report else []
    lines += ["", "## What auto picks here", ""]
    lines += markdown.table(
        ["layout", "language model", "vision tower", "why"],
        [[layout, c["text"], c["vision"], c["reason"]] for layout, c in report["auto"].items()],
    )
    lines += ["", "## Kernels and the layouts they compute exactly (mpo.attention.EXPRESSES)", ""]
    lines += markdown.table(
        ["kernel", "layouts", "checked below"],
        [
            [k, ", ".join(layouts), "yes" if k not in report["skipped"] else f"no: {report['skipped'][k]}"]
            for k, layouts in report["expresses"].items()
        ],
    )
    lines += ["", f"## Exactness against plain rows under sdpa ({report['exactness_model']})", ""]
    rows = []
    for r in report["exactness"]:
        grad = "no backward here" if r["grad_err"] is None else f"{r['grad_err']:.1e}"
        verdict = (
            f"{'yes' if r['exact'] else 'no'}{'' if r['exact'] == r['expected_exact'] else ' (UNEXPECTED)'}"
        )
        rows.append([r["kernel"], r["layout"], r["dtype"], f"{r['logp_err']:.1e}", grad, verdict])
    lines += markdown.table(
        [
            "kernel",
            "layout",
            "dtype",
            "max log-prob error (rel.)",
            "gradient error (rel.)",
            "within tolerance",
        ],
        rows,
    )
    title = f"## The stream ({report['speed_model']}, {report['steps']} steps of one pair, every step a new shape)"
    lines += [
        "",
        *render_stream(report["stream"], title),
        "",
        "Targets of the defaults:",
        "",
        *targets(report["stream"]),
    ]
    return "\n".join(lines) + "\n"


def environment(cuda: bool) -> dict:
    from mpo.environment import device, versions

    return {"packages": versions(), "device": device() if cuda else "cpu"}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.mpo_speed import make_pairs
    from mpo.environment import auto_choices

    parser = argparse.ArgumentParser(prog="mpo gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry", action="store_true", help="CPU dry run: tiny shapes, CUDA-only parts skipped"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps (= pairs) of the stream per configuration (default 200, dry 3)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("mpo_gpu_check"),
        help="folder for the results, in the working directory (make: benchmarks/results)",
    )
    parser.add_argument("--skip-exactness", action="store_true", help="the stream alone")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry:
        print("mpo gpu-check: no CUDA device here; run with --dry for the CPU dry run", file=sys.stderr)
        return 1
    device = "cuda" if cuda and not args.dry else "cpu"
    real = device == "cuda"
    steps = args.steps or (200 if real else 3)
    work = Path(tempfile.mkdtemp(prefix="mpo-gpu-check-"))
    kernels, skipped = installed_kernels(real)
    if not real:
        skipped["bf16, flash-attn, the stream at the InternVL2.5-1B widths"] = (
            "dry run on the CPU (fp32, tiny model)"
        )
    report = {
        "dry": not real,
        "environment": environment(real),
        "auto": auto_choices(),
        "expresses": {k: [layout for layout in LAYOUT_NAMES if layout in EXPRESSES[k]] for k in KERNELS},
        "skipped": skipped,
        "steps": steps,
        "exactness_model": "InternVL2.5-1B widths, 2 + 2 layers" if real else "tiny",
        "speed_model": "InternVL2.5-1B widths, 24 + 24 layers" if real else "tiny",
    }
    for layout, choice in report["auto"].items():
        print(f"auto, {layout} rows: {choice['text']} ({choice['reason']})", flush=True)
    make_pairs(work / "pairs", "cot_image", n=8)
    report["exactness"] = []
    if not args.skip_exactness:
        print("exactness:", flush=True)
        report["exactness"] = exactness(
            build_model(work / "shallow", real=real, layers=2),
            work / "pairs",
            device,
            torch.bfloat16 if real else torch.float32,
        )
    if real:  # the stream runs are other processes: hand this one's cached blocks back to the GPU
        gc.collect()
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))  # kept if the stream fails
    print("stream:", flush=True)
    report["stream"] = run_stream(
        build_model(work / "full", real=real), work, steps, stream_runs(kernels), None
    )
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.md").write_text(render(report))
    print(render(report))
    unexpected = [r for r in report["exactness"] if r["exact"] != r["expected_exact"]]
    failed = [name for name, r in report["stream"].items() if "error" in r]
    return 1 if unexpected or failed else 0


if __name__ == "__main__":
    sys.exit(main())
