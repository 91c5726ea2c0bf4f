"""MPOTrainer vs plain trl.DPOTrainer: pairs/s, peak memory, and the speed-up the removed work predicts.

    mpo bench [--quick] [--rounds R] [--steps S]      (also: make bench)
    mpo bench --shape real [--layers 2]                (also: make bench-real)

Both trainers get the same model (the tiny InternVL2.5, or ``--shape real``: random weights at the
InternVL2.5-1B widths cut to ``--layers``), the same preference pairs, batch and seed, and
the same objective (TRL: loss_type sigmoid + bco_pair + sft with weights 0.8 / 0.2 / 1.0), and the same
LM head: on the CPU both fused heads score only the labelled positions (:mod:`mpo.fused_head`), as TRL's
does on a GPU. Each
measurement runs in a fresh subprocess, TRL and MPO alternating, so peak RSS is per run. Shapes:
``image_heavy`` (7 tiles = 112 image tokens + the system prompt against ~12-token responses) and
``text_heavy`` (text-only, long answers). MPO's end-to-end time includes its one reference pass
(a fresh cache), as a one-epoch run pays it; its training-only time does not. Peak memory is the
growth of the process's peak RSS during training (the kernel's mark is reset just before it), or on
a GPU the peak of allocated CUDA memory above what was held before training.
Runs use ``--threads`` torch threads (default 1: stable numbers on a shared machine).
Writes latest.json and latest.md (`--shape real`: real.json and real.md) into --out (default ./mpo_bench;
`make bench`, `make bench-real`: benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpo import markdown

WORDS = (
    "the red circle is left of a blue square and the green star sits above them while counting shapes".split()
)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# The real shape's images (px at 448 px tiles, max 12 tiles): 2x2, 3x2, 3x3 and 4x3 grids plus the
# thumbnail, i.e. 5, 7, 10 and 13 tiles (1280-3328 image tokens), as MMPR's photos, charts and documents
# tile at InternVL2.5's max_dynamic_patch 12.
REAL_IMAGE_SIZES = [(896, 896), (1344, 896), (1344, 1344), (1792, 1344)]


def make_pairs(root: Path, shape: str, n: int, seed: int = 0) -> list[dict]:
    """Preference rows in the MMPR layout (and images on disk) for one benchmark shape.

    ``real``: one image of :data:`REAL_IMAGE_SIZES` (5-13 tiles), a 20-80 word question and
    chain-of-thought chosen / rejected answers of 100-400 words each, drawn independently (MMPR's
    correctness pairs: two sampled answers to one question, of unrelated lengths)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):

        def text(k: int) -> str:
            return " ".join(rng.choice(WORDS) for _ in range(k))

        if shape == "image_heavy":
            img = Image.new("RGB", (192, 128), "white")  # 3x2 tiles + thumbnail = 112 image tokens
            draw = ImageDraw.Draw(img)
            for _ in range(6):
                x, y = rng.randrange(0, 166), rng.randrange(0, 100)
                draw.ellipse((x, y, x + 24, y + 24), fill=rng.choice(["red", "green", "blue", "orange"]))
            img.save(root / "img" / f"{i}.png")
            rows.append(
                {
                    "image": f"{i}.png",
                    "question": "How many shapes are there and what colours?",
                    "chosen": text(8),
                    "rejected": text(8),
                }
            )
        elif shape == "cot_image":  # the GPU check's real shape: a 3:2 image, chain-of-thought answers
            Image.new("RGB", (192, 128), rng.choice(["red", "green", "blue"])).save(root / "img" / f"{i}.png")
            rows.append(
                {
                    "image": f"{i}.png",
                    "question": text(rng.randint(20, 40)) + "?",
                    "chosen": text(rng.randint(60, 200)),
                    "rejected": text(rng.randint(60, 200)),
                }
            )
        elif shape == "real":
            Image.new("RGB", rng.choice(REAL_IMAGE_SIZES), rng.choice(["red", "green", "blue"])).save(
                root / "img" / f"{i}.png"
            )
            rows.append(
                {
                    "image": f"{i}.png",
                    "question": text(rng.randint(20, 80)) + "?",
                    "chosen": text(rng.randint(100, 400)),
                    "rejected": text(rng.randint(100, 400)),
                }
            )
        else:
            rows.append({"question": text(40) + "?", "chosen": text(48), "rejected": text(48)})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "meta.json").write_text(
        json.dumps(
            {
                "bench": {
                    "root": "img",
                    "annotation": "pairs.jsonl",
                    "max_dynamic_patch": 12 if shape == "real" else 6,
                }
            }
        )
    )
    return rows


def trl_dataset(root: Path, rows: list[dict]):
    """The same pairs in TRL's conversational vision format."""
    from datasets import Dataset
    from PIL import Image

    records = []
    for r in rows:
        content = [{"type": "text", "text": r["question"]}]
        images = []
        if "image" in r:
            content.insert(0, {"type": "image"})
            images = [Image.open(root / "img" / r["image"]).convert("RGB")]
        records.append(
            {
                "images": images,
                "prompt": [{"role": "user", "content": content}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": r["chosen"]}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": r["rejected"]}]}],
            }
        )
    return Dataset.from_list(records)


# MPO with one switch changed at a time (the full benchmark's per-switch breakdown, image-heavy shape).
BREAKDOWN = {
    "all switches (default)": {},
    "prefix sharing off (vision once)": {"prefix_sharing": False},
    "prefix sharing and vision once off": {"prefix_sharing": False, "vision_once": False},
    "reference precompute off": {"precompute_ref_log_probs": False},
    "packing on (4096 tokens/row)": {"max_packed_tokens": 4096},
}


def build_trainer(kind: str, model: str, data: str, steps: int, batch: int, switches: dict | None = None):
    """trl.DPOTrainer (``kind`` "trl") or MPOTrainer on the pairs in ``data``, set up as the benchmark runs them."""
    import torch

    from mpo.attention import layout_of

    torch.manual_seed(0)
    switches = dict(switches or {})
    attn = switches.pop("attn_implementation", "auto")
    cuda = torch.cuda.is_available()
    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-5,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        gradient_checkpointing=False,
        seed=0,
        disable_tqdm=True,
        bf16=cuda,
        dataloader_num_workers=0,
    )
    rows = [json.loads(line) for line in (Path(data) / "pairs.jsonl").read_text().splitlines()]
    if kind == "trl":
        from trl import DPOConfig, DPOTrainer

        from mpo.models.loading import load_model, load_processor

        args = DPOConfig(
            loss_type=["sigmoid", "bco_pair", "sft"],
            loss_weights=[0.8, 0.2, 1.0],
            beta=0.1,
            max_length=None,
            **common,
        )
        trainer = DPOTrainer(
            load_model(model, attn_implementation=attn),
            args=args,
            train_dataset=trl_dataset(Path(data), rows),
            processing_class=load_processor(model),
        )
    else:
        from mpo.data.mmpr import load_mmpr
        from mpo.models.loading import load_model, load_processor
        from mpo.trainer import MPOConfig, MPOTrainer

        processor = load_processor(model)
        dataset, _ = load_mmpr(Path(data) / "meta.json", processor)
        args = MPOConfig(
            ref_cache_dir=tempfile.mkdtemp(),
            max_length=None,
            **{**common, **switches},
        )
        layout = layout_of(prefix_sharing=args.prefix_sharing, packed=args.max_packed_tokens is not None)
        trainer = MPOTrainer(
            load_model(model, attn_implementation=attn, layout=layout),
            args=args,
            train_dataset=dataset,
            processing_class=processor,
        )
    return trainer


class _ShapeRecorder:
    """A collator that notes the tensor shapes of every batch it makes while ``active`` (training steps)."""

    def __init__(self, collate) -> None:
        self.collate, self.active, self.shapes = collate, False, []

    def __call__(self, features):
        batch = self.collate(features)
        if self.active:
            self.shapes.append(
                tuple(sorted((k, tuple(v.shape)) for k, v in batch.items() if hasattr(v, "shape")))
            )
        return batch


def child(
    kind: str, shape: str, model: str, data: str, steps: int, batch: int, switches: dict | None = None
) -> dict:
    """One measured run (in its own process): timings, the peak memory growth during training, each
    step's time, torch.compile's compilations, and the distinct batch shapes the steps saw."""
    import torch
    from transformers import TrainerCallback

    from mpo.attention import compilations
    from mpo.fused_head import compact_lm_head

    cuda = torch.cuda.is_available()
    start = time.perf_counter()
    trainer = build_trainer(kind, model, data, steps, batch, switches)
    setup = time.perf_counter() - start
    recorder = _ShapeRecorder(trainer.data_collator)
    trainer.data_collator = recorder

    class Clock(TrainerCallback):  # the ends of the training steps (on a GPU after a synchronize)
        def __init__(self) -> None:
            self.begin, self.ends, self.compiled = 0.0, [], []

        def on_train_begin(self, args, state, control, **kw):
            recorder.active = True
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            self.compiled.append(compilations())

    clock = Clock()
    trainer.add_callback(clock)
    compiled_before = compilations()
    if cuda:  # peak GPU memory allocated during training, above what was held before it
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_rss = torch.cuda.memory_allocated() / 2**20
    else:
        _reset_peak_rss()
        base_rss = _status_mb("VmRSS")
    with compact_lm_head():  # both trainers' heads score only the labelled positions, as on a GPU
        trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _status_mb("VmHWM")
    # steps 2..N are timed: the first one warms up (kernel compilation, allocator, autotuning)
    train_s = clock.ends[-1] - clock.ends[0]
    pairs = (steps - 1) * batch
    precompute_s = getattr(trainer, "precompute_seconds", 0.0)
    precomputed = len(trainer.train_dataset) if precompute_s else 1  # the reference pass covers the data set
    step_s = [b - a for a, b in zip([clock.begin, *clock.ends[:-1]], clock.ends, strict=True)]
    return {
        "kind": kind,
        "shape": shape,
        "pairs": pairs,
        "train_s": train_s,
        "precompute_s": precompute_s,
        "setup_s": setup,
        "peak_mb": peak - base_rss,
        "train_pairs_per_s": pairs / train_s,
        # one epoch: each pair costs its training time plus its share of the reference pass
        "e2e_pairs_per_s": 1 / (train_s / pairs + precompute_s / precomputed),
        "step_s": step_s,
        "first_step_s": step_s[0],
        "median_step_s": statistics.median(step_s[1:] or step_s),
        "compilations": clock.compiled[-1] - compiled_before,  # the reference pass's and training's
        "compilations_after_first_step": clock.compiled[-1] - clock.compiled[0],
        "distinct_shapes": len(set(recorder.shapes)),
        "steps": len(recorder.shapes),
    }


def run_child(kind: str, shape: str, model, data, steps: int, batch: int, switches: dict, env: dict) -> dict:
    """:func:`child` in a fresh process (``--child``): its result, one line printed, or ``{"error": stderr}``."""
    cmd = [sys.executable, "-m", "benchmarks.mpo_speed", "--child", kind, shape, str(model), str(data)]
    cmd += [str(steps), str(batch), json.dumps(switches)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not line:
        return {"error": out.stderr[-3000:]}
    r = json.loads(line[0][7:])
    print(
        f"  {shape:11s} {kind} {json.dumps(switches)}: {r['train_pairs_per_s']:.3g} pairs/s train, "
        f"{r['e2e_pairs_per_s']:.3g} e2e, peak +{r['peak_mb']:.0f} MB, {r['compilations']} compilations, "
        f"{r['distinct_shapes']}/{r['steps']} shapes",
        flush=True,
    )
    return r


def ideal_speedup(model: str, data: str, batch: int) -> dict:
    """Work counted, not timed, in forward-equivalents of one LLM token (backward = 2 forwards): LLM tokens,
    vision tiles and the LM head's labelled positions per step, plain (policy: 2 rows fwd+bwd, reference: 2
    rows fwd) vs MPO (shared rows fwd+bwd). A tile costs (ViT parameters x patches) / LLM parameters, a
    labelled position (vocabulary x hidden) / LLM parameters: at the real widths cut to 2 layers one label
    costs as much as ~4.5 tokens of the backbone, at the full depth ~0.4."""
    from mpo.data.collator import PreferenceCollator
    from mpo.data.mmpr import load_mmpr
    from mpo.models.loading import load_model, load_processor

    processor = load_processor(model)
    m = load_model(model)
    vision = sum(p.numel() for p in m.model.vision_tower.parameters())
    llm = sum(p.numel() for n, p in m.model.language_model.named_parameters() if "embed" not in n)
    patches = (m.config.vision_config.image_size[0] // m.config.vision_config.patch_size[0]) ** 2 + 1
    tile_cost = vision * patches / llm  # one tile through the ViT, in LLM-token units
    label_cost = m.lm_head.weight.numel() / llm  # one labelled position through the LM head
    dataset, _ = load_mmpr(Path(data) / "meta.json", processor)
    records = [dataset[i] for i in range(batch)]

    def work(batch_):
        tiles = batch_["pixel_values"].shape[0] * int(batch_["feature_repeats"]) if batch_["num_pairs"] else 0
        tokens = (
            int(batch_["attention_mask"].sum())
            if batch_["attention_mask"].dim() == 2
            else batch_["input_ids"].numel()
        )
        labels = int((batch_["shift_labels"] != -100).sum())
        return tokens + tiles * tile_cost + labels * label_cost

    has_images = any(r["image_paths"] for r in records)
    plain = work(PreferenceCollator(processor, vision_once=False)(records))
    if not has_images:
        plain -= 1 * tile_cost  # the blank tile of a text-only batch is ours, TRL has none
    shared = work(PreferenceCollator(processor, prefix_sharing=True)(records))
    return {
        "train": (3 * plain + plain) / (3 * shared),
        "tile_cost_tokens": tile_cost,
        "label_cost_tokens": label_cost,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpo bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape",
        choices=["tiny", "real"],
        default="tiny",
        help="tiny: the tiny model on two shapes; real: the InternVL2.5-1B widths (151k vocabulary, "
        "448 px tiles) cut to --layers, on MMPR-like pairs (make_pairs)",
    )
    parser.add_argument("--layers", type=int, default=2, help="--shape real: layers of each tower")
    parser.add_argument("--quick", action="store_true", help="small run: < 2 minutes on 2 cores")
    parser.add_argument("--rounds", type=int, default=None, help="TRL/MPO alternations per shape")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="pairs per step (default: 8; --shape real: 1, which fits 24 GB)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (OMP_NUM_THREADS)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("mpo_bench"),
        help="folder for the results, in the working directory (make: benchmarks/results)",
    )
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, shape, model, data, steps, batch, switches = args.child
        print(
            "RESULT "
            + json.dumps(child(kind, shape, model, data, int(steps), int(batch), json.loads(switches)))
        )
        return 0
    real = args.shape == "real"
    rounds = args.rounds or (1 if args.quick or real else 3)
    steps = args.steps or (3 if real else 6 if args.quick else 20)
    args.batch = args.batch or (1 if real else 8)
    work = Path(tempfile.mkdtemp(prefix="mpo-bench-"))
    if real:
        from mpo.models.sizes import build_random_native

        model = str(build_random_native("1b", work / "model", layers=args.layers))
    else:
        from mpo.models.tiny import build_tiny_model

        model = str(build_tiny_model(work / "model"))
    shapes = ("real",) if real else ("image_heavy", "text_heavy")
    breakdown_shape = shapes[0]
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads)}

    def measure(kind: str, shape: str, data: Path, switches: dict | None = None) -> dict:
        result = run_child(kind, shape, model, data, steps, args.batch, switches or {}, env)
        if "error" in result:
            raise SystemExit(f"benchmark run failed ({kind}, {shape}, {switches}):\n{result['error']}")
        return result

    results: dict = {}
    for shape in shapes:
        data = work / shape
        make_pairs(data, shape, n=steps * args.batch)
        runs: dict[str, list[dict]] = {"trl": [], "mpo": []}
        for r in range(rounds):
            for kind in ("trl", "mpo") if r % 2 == 0 else ("mpo", "trl"):
                runs[kind].append(measure(kind, shape, data))
        med = {
            k: {
                m: statistics.median(run[m] for run in v)
                for m in ("train_pairs_per_s", "e2e_pairs_per_s", "peak_mb", "precompute_s")
            }
            for k, v in runs.items()
        }
        results[shape] = {
            "speedup_train": med["mpo"]["train_pairs_per_s"] / med["trl"]["train_pairs_per_s"],
            "speedup_e2e": med["mpo"]["e2e_pairs_per_s"] / med["trl"]["e2e_pairs_per_s"],
            "memory_ratio": med["mpo"]["peak_mb"] / med["trl"]["peak_mb"],
            "ideal_speedup_train": ideal_speedup(model, str(data), args.batch)["train"],
            "trl": med["trl"],
            "mpo": med["mpo"],
            "runs": runs,
        }
    stem = "real" if real else "latest"
    meta = {
        "shape": args.shape,
        "steps": steps,
        "batch": args.batch,
        "rounds": rounds,
        "threads": args.threads,
        "cores": os.cpu_count(),
        "model": f"InternVL2.5-1B widths, {args.layers} + {args.layers} layers"
        if real
        else "tiny InternVL2.5",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(
        json.dumps({**results, "settings": meta}, indent=1)
    )  # kept if stopped
    if not args.quick:  # one switch at a time, against the median TRL run of the first shape
        trl_rate = results[breakdown_shape]["trl"]["train_pairs_per_s"]
        results["breakdown"] = {}
        for name, switches in BREAKDOWN.items():
            r = measure("mpo", breakdown_shape, work / breakdown_shape, switches)
            results["breakdown"][name] = {
                "switches": switches,
                "train_pairs_per_s": r["train_pairs_per_s"],
                "e2e_pairs_per_s": r["e2e_pairs_per_s"],
                "peak_mb": r["peak_mb"],
                "speedup_train_vs_trl": r["train_pairs_per_s"] / trl_rate,
            }
    (args.out / f"{stem}.json").write_text(json.dumps({**results, "settings": meta}, indent=1))
    table = render_table(results, meta)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return 0


def render_table(results: dict, meta: dict) -> str:
    lines = [
        f"MPOTrainer vs trl.DPOTrainer ({meta.get('model', 'tiny InternVL2.5')}, CPU, {meta['steps']} steps x "
        f"{meta['batch']} pairs, median of {meta['rounds']}; steps 2..N timed)",
        "",
    ]
    rows = [
        [
            shape,
            f"{r['trl']['train_pairs_per_s']:.3g}",
            f"{r['mpo']['train_pairs_per_s']:.3g}",
            f"{r['mpo']['e2e_pairs_per_s']:.3g}",
            f"{r['speedup_train']:.2f}x",
            f"{r['speedup_e2e']:.2f}x",
            f"{r['ideal_speedup_train']:.2f}x",
            f"{r['trl']['peak_mb']:.0f}",
            f"{r['mpo']['peak_mb']:.0f}",
            f"{r['memory_ratio']:.2f}",
        ]
        for shape, r in results.items()
        if shape != "breakdown"
    ]
    lines += markdown.table(
        [
            "shape",
            "TRL pairs/s",
            "MPO pairs/s (train)",
            "MPO pairs/s (e2e)",
            "speed-up train",
            "speed-up e2e",
            "ideal (work counted)",
            "TRL peak MB",
            "MPO peak MB",
            "memory ratio",
        ],
        rows,
    )
    if "breakdown" in results:
        lines += [
            "",
            f"Per switch ({'real' if meta.get('shape') == 'real' else 'image-heavy'} shape, MPOTrainer "
            "with one change, single run each):",
            "",
        ]
        rows = [
            [
                name,
                f"{r['train_pairs_per_s']:.3g}",
                f"{r['e2e_pairs_per_s']:.3g}",
                f"{r['speedup_train_vs_trl']:.2f}x",
                f"{r['peak_mb']:.0f}",
            ]
            for name, r in results["breakdown"].items()
        ]
        lines += markdown.table(
            ["MPO configuration", "pairs/s (train)", "pairs/s (e2e)", "vs TRL (train)", "peak MB"], rows
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
