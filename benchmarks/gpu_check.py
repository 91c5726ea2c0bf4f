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
2. Speed. MPOTrainer (defaults) against trl.DPOTrainer with the MPO losses, each run in a fresh
   process: pairs/s in training and end to end (reference pass included), peak GPU memory. Model: the
   InternVL2.5-1B widths at full depth (24 + 24 layers, 0.94B parameters, random weights). Pairs: one
   3:2 image each (3 x 2 tiles + thumbnail = 1792 image tokens), a 20-40 word question and
   chain-of-thought chosen / rejected answers of 60-200 words.
3. Varlen vs padding. MPOTrainer without prefix sharing (vision once) on the same pairs: padding-free
   flattened rows under flash_attention_2 against padded rows under sdpa.

Writes gpu_check.json and gpu_check.md into --out (default ./mpo_gpu_check).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mpo import markdown
from mpo.attention import SDPA_VARLEN, TORCH_VARLEN, Platform

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
    if platform.torch_varlen:
        kernels.append(TORCH_VARLEN)
    else:
        skipped[TORCH_VARLEN] = "needs CUDA and torch >= 2.9"
    return kernels, skipped


def varlen_kernel(kernels: list[str]) -> str | None:
    """The padding-free kernel the speed runs compare with padded rows, if one runs here."""
    return next((k for k in ("flash_attention_2", TORCH_VARLEN) if k in kernels), None)


def exactness(model_dir: Path, data: Path, device: str, dtype: torch.dtype) -> list[dict]:
    """Log-probs and gradients of every (kernel, layout) against plain rows under sdpa."""
    from trl.trainer.utils import add_fused_lm_head

    from mpo import attention
    from mpo.attention import layout_of
    from mpo.data.collator import PreferenceCollator
    from mpo.data.mmpr import load_mmpr
    from mpo.models.loading import load_model, load_processor
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
        add_fused_lm_head(model, outputs=("log_probs",))
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
            logps, _ = scorer._sequence_logps(model, batch)
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
        switches = LAYOUTS[name]
        layout = layout_of(
            prefix_sharing=switches.get("prefix_sharing", False), packed="max_packed_tokens" in switches
        )
        if (
            layout not in attention.EXPRESSES[kernel]
        ):  # refused by design (mpo.attention.check_layout), not run
            rows.append({"kernel": kernel, "layout": name, "dtype": dtype_name, "refused": True})
            print(f"  {kernel:17s} {name:28s} refused: cannot be exact (as designed)", flush=True)
            continue
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


def speed(model_dir: Path, data: Path, steps: int, batch: int, varlen: str | None) -> dict:
    """MPOTrainer vs trl.DPOTrainer, and varlen vs padded rows, each run in a fresh process."""
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}

    def measure(kind: str, switches: dict) -> dict:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.mpo_speed",
            "--child",
            kind,
            "real",
            str(model_dir),
            str(data),
            str(steps),
            str(batch),
            json.dumps(switches),
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            return {"error": out.stderr[-2000:]}
        result = json.loads(line[0][7:])
        print(
            f"  {kind} {json.dumps(switches)}: {result['train_pairs_per_s']:.2f} pairs/s train, "
            f"{result['e2e_pairs_per_s']:.2f} e2e, peak +{result['peak_mb']:.0f} MB",
            flush=True,
        )
        return result

    runs = {"trl.DPOTrainer (MPO losses)": measure("trl", {}), "MPOTrainer (defaults)": measure("mpo", {})}
    no_sharing = {"prefix_sharing": False, "vision_once": True}
    if varlen:
        runs[f"MPOTrainer, no prefix sharing, {varlen} (padding-free)"] = measure(
            "mpo", {**no_sharing, "attn_implementation": varlen}
        )
        runs["MPOTrainer, no prefix sharing, sdpa padded rows"] = measure(
            "mpo", {**no_sharing, "attn_implementation": "sdpa"}
        )
    return runs


def render(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# GPU check ({'dry run on the CPU' if report['dry'] else env['device']})",
        "",
        f"torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}, flash-attn "
        f"{env['flash_attn']}, triton {env['triton']}",
        "",
    ]
    lines += [f"- skipped: {k}: {why}" for k, why in report["skipped"].items()]
    if any(r["kernel"] == TORCH_VARLEN for r in report["exactness"]):
        lines.append(
            f"- {TORCH_VARLEN}: PyTorch's own varlen FlashAttention-2 (mpo.attention), the same flattened "
            "rows and cu_seq_lens as flash_attention_2"
        )
    lines += ["", report["runs"]] if "runs" in report else []
    lines += ["", f"## Exactness against plain rows under sdpa ({report['exactness_model']})", ""]
    rows = []
    for r in report["exactness"]:
        if r.get("refused"):
            rows.append(
                [r["kernel"], r["layout"], r["dtype"], "refused (cannot be exact)", "", "as designed"]
            )
            continue
        grad = "no backward here" if r["grad_err"] is None else f"{r['grad_err']:.1e}"
        rows.append(
            [
                r["kernel"],
                r["layout"],
                r["dtype"],
                f"{r['logp_err']:.1e}",
                grad,
                f"{'yes' if r['exact'] else 'no'}{'' if r['exact'] == r['expected_exact'] else ' (UNEXPECTED)'}",
            ]
        )
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
    lines += [
        "",
        f"## Speed ({report['speed_model']}, {report['steps']} steps x {report['batch']} pairs)",
        "",
        "Steps 2 to N are timed (the first warms up). End to end adds each pair's share of the reference "
        "pass, which here covers a small set and includes its one-time kernel compilation.",
        "",
    ]
    rows = [
        [name, "failed: see gpu_check.json"]
        if "error" in r
        else [
            name,
            f"{r['train_pairs_per_s']:.2f}",
            f"{r['e2e_pairs_per_s']:.2f}",
            f"{r['precompute_s']:.1f}",
            f"{r['peak_mb']:.0f}",
        ]
        for name, r in report["speed"].items()
    ]
    lines += markdown.table(
        ["trainer", "pairs/s (train)", "pairs/s (end to end)", "reference pass s", "peak memory MB"], rows
    )
    base, ours = (
        report["speed"].get("trl.DPOTrainer (MPO losses)", {}),
        report["speed"].get("MPOTrainer (defaults)", {}),
    )
    if "train_pairs_per_s" in base and "train_pairs_per_s" in ours:
        lines += [
            "",
            f"MPOTrainer / TRL: {ours['train_pairs_per_s'] / base['train_pairs_per_s']:.2f}x training, "
            f"{ours['e2e_pairs_per_s'] / base['e2e_pairs_per_s']:.2f}x end to end, "
            f"{ours['peak_mb'] / base['peak_mb']:.2f}x peak memory.",
        ]
    return "\n".join(lines) + "\n"


def environment(cuda: bool) -> dict:
    import transformers
    import trl

    def version(name: str) -> str:
        if importlib.util.find_spec(name) is None:
            return "not installed"
        return getattr(__import__(name), "__version__", "installed")

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "flash_attn": version("flash_attn"),
        "triton": version("triton"),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.mpo_speed import make_pairs

    parser = argparse.ArgumentParser(prog="mpo gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry", action="store_true", help="CPU dry run: tiny shapes, CUDA-only parts skipped"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per speed run (default 10, dry 2)"
    )
    parser.add_argument("--batch", type=int, default=4, help="pairs per step in the speed runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("mpo_gpu_check"),
        help="folder for the results, in the working directory (make: benchmarks/results)",
    )
    parser.add_argument("--skip-exactness", action="store_true", help="the speed runs alone")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry:
        print("mpo gpu-check: no CUDA device here; run with --dry for the CPU dry run", file=sys.stderr)
        return 1
    device = "cuda" if cuda and not args.dry else "cpu"
    real = device == "cuda"
    steps = args.steps or (10 if real else 2)
    work = Path(tempfile.mkdtemp(prefix="mpo-gpu-check-"))
    kernels, skipped = installed_kernels(real)
    if not real:
        skipped["bf16, flash-attn, speed at the InternVL2.5-1B widths"] = (
            "dry run on the CPU (fp32, tiny model)"
        )
    report = {
        "dry": not real,
        "environment": environment(real),
        "skipped": skipped,
        "steps": steps,
        "batch": args.batch,
        "exactness_model": "InternVL2.5-1B widths, 2 + 2 layers" if real else "tiny",
        "speed_model": "InternVL2.5-1B widths, 24 + 24 layers" if real else "tiny",
    }
    make_pairs(work / "pairs", "cot_image", n=max(8, steps * args.batch))
    report["exactness"] = []
    if not args.skip_exactness:
        print("exactness:", flush=True)
        report["exactness"] = exactness(
            build_model(work / "shallow", real=real, layers=2),
            work / "pairs",
            device,
            torch.bfloat16 if real else torch.float32,
        )
    if real:  # the speed runs are other processes: hand this one's cached blocks back to the GPU
        gc.collect()
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))  # kept if the speed runs fail
    print("speed:", flush=True)
    report["speed"] = speed(
        build_model(work / "full", real=real),
        work / "pairs",
        steps,
        args.batch,
        varlen=varlen_kernel(kernels),
    )
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.md").write_text(render(report))
    print(render(report))
    unexpected = [
        r for r in report["exactness"] if not r.get("refused") and r["exact"] != r["expected_exact"]
    ]
    failed = [name for name, r in report["speed"].items() if "error" in r]
    return 1 if unexpected or failed else 0


if __name__ == "__main__":
    sys.exit(main())
