"""SFT training throughput, packed vs unpacked rows, on the embedded tiny model (CPU or GPU).

    python benchmarks/sft_packing.py [--samples 320] [--batch 8] [--max-packed-tokens 512 2048]

Every layout trains the same samples (synthetic task, one optimizer step per batch, same loss); the
table gives real (non-padding) tokens per second, samples per second and the padding share.
Unpacked: ``--batch`` samples per step, right-padded to the longest. Packed: rows of up to
``--max-packed-tokens`` tokens, ``--tokens-per-step`` // that many rows per step, samples kept
independent by the block-diagonal mask (sdpa; its cost grows with the square of the row length, so
on the CPU short rows win) or by varlen flash-attention on a GPU with flash-attn.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from data_builders.synthetic import generate
from mpo.data.packing import pack_samples
from mpo.data.sft_collator import SFTCollator
from mpo.data.sft_data import load_sft
from mpo.models.loading import load_model, load_processor
from mpo.models.tiny import build_tiny_model
from mpo.sft import SFTStageConfig, SFTStageTrainer


def run(trainer, model, batches: list[dict]) -> tuple[float, int, int, int]:
    """Seconds for forward + backward + optimizer step over ``batches`` (after one warm-up step)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step(batch):
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["input_ids"].numel() for b in batches)
    samples = sum(len(b["supervised_tokens"]) for b in batches)
    return seconds, real, total, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8, help="samples per unpacked step")
    parser.add_argument("--max-packed-tokens", type=int, nargs="+", default=[512, 2048])
    parser.add_argument(
        "--tokens-per-step", type=int, default=2048, help="packed: rows per step = this // row size"
    )
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_tiny_model(tmp / "model")
        generate(tmp / "data", n_sft=args.samples, n_qa=0, n_eval=0)
        processor = load_processor(model_dir)
        records, _ = load_sft(
            tmp / "data" / "sft" / "meta.json", processor, max_length=min(args.max_packed_tokens)
        )
        collate = SFTCollator(processor, train=False)

        def to_device(batch):
            return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

        layouts = {
            f"unpacked ({args.batch} samples/step)": [
                to_device(collate([[r] for r in records[i : i + args.batch]]))
                for i in range(0, len(records), args.batch)
            ],
        }
        for size in args.max_packed_tokens:
            rows = [
                [records[i] for i in row]
                for row in pack_samples([r["length"] for r in records], size, seed=0)
            ]
            per_step = max(1, args.tokens_per_step // size)
            layouts[f"packed ({per_step} x {size} tokens/step)"] = [
                to_device(collate(rows[i : i + per_step])) for i in range(0, len(rows), per_step)
            ]
        config = SFTStageConfig(
            output_dir=str(tmp / "out"),
            stage="2",
            report_to=[],
            use_cpu=device == "cpu",
            max_packed_tokens=max(args.max_packed_tokens),
            max_length=min(args.max_packed_tokens),
        )
        rows = []
        for name, batches in layouts.items():
            model = load_model(model_dir).to(device)
            trainer = SFTStageTrainer(model, config, processing_class=processor)
            seconds, real, total, samples = run(trainer, model, batches)
            rows.append(
                (name, len(batches), samples, real, 1 - real / total, real / seconds, samples / seconds)
            )
    print(
        f"\nSFT throughput on the tiny model ({device}, {len(records)} synthetic samples, "
        f"torch threads {torch.get_num_threads()})\n"
    )
    print("| layout | steps | samples | real tokens | padding | tokens/s | samples/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, steps, samples, real, pad, tps, sps in rows:
        print(f"| {name} | {steps} | {samples} | {real} | {pad:.1%} | {tps:,.0f} | {sps:,.1f} |")
    unpacked_tps = rows[0][5]
    for name, *_, tps, _sps in rows[1:]:
        print(f"{name} / unpacked tokens/s: {tps / unpacked_tps:.2f}x")


if __name__ == "__main__":
    main()
