"""Generation throughput of the pair builder's transformers backend at the InternVL2.5-1B widths:
batched requests against one request at a time.

    python -m benchmarks.generation_speed [--layers 2] [--questions 16] [--samples 4] [--max-new-tokens 48]
                                          [--batch-sizes 1,8] [--out DIR]

Model: random weights at the InternVL2.5-1B widths (InternViT 1024 wide over 1025 patches per tile,
Qwen2.5-0.5B 896 wide, the 151k vocabulary), both towers cut to ``--layers`` so that it runs on 2 CPU
cores. Requests: as `mpo build-pairs correctness` makes them, one question with one 3:2 image (3 x 2
tiles + thumbnail at 448 px = 1792 image tokens) and a 20-40 word question, ``--samples`` responses
each at temperature 1. Random weights almost never sample the end token (1 in 151k per step), so
every response runs to ``--max-new-tokens`` and the runs do the same work. Each batch size runs in the
same process after a warm-up request; responses/s and generated tokens/s are reported, and the
speed-up of each batch size over one request at a time.

Writes generation_speed.json and .md into ``--out`` (default ./mpo_bench).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks import write_results
from benchmarks.mpo_speed import WORDS
from mpo import markdown


def requests_for(root: Path, n: int, seed: int = 0) -> list:
    """``n`` questions, one 3:2 image each (448 px tiles: 3 x 2 + thumbnail)."""
    from mpo.generation import GenerationRequest

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.new("RGB", (1344, 896), rng.choice(["red", "green", "blue"])).save(path)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40)))
        out.append(GenerationRequest(f"<image>\n{words}?", [str(path)], max_dynamic_patch=6, seed=i))
    return out


def measure(backend, requests: list, samples: int, max_new_tokens: int) -> dict:
    from mpo.generation import SamplingParams

    params = SamplingParams(n=samples, temperature=1.0, max_new_tokens=max_new_tokens, seed=0)
    start = time.perf_counter()
    outputs = backend.generate(requests, params)
    seconds = time.perf_counter() - start
    responses = sum(len(o) for o in outputs)
    # every response runs to max_new_tokens (random weights; re-tokenising the decoded text would not count them)
    return {
        "seconds": seconds,
        "responses": responses,
        "responses_per_s": responses / seconds,
        "tokens_per_s": responses * max_new_tokens / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    from mpo.generation import TransformersBackend
    from mpo.models.loading import load_model, load_processor
    from mpo.models.sizes import build_random_native

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.generation_speed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="responses per question")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,8", help="questions per generate call, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("mpo_bench"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mpo-gen-speed-"))
    model_dir = build_random_native("1b", work / "model", layers=args.layers)
    model, processor = load_model(model_dir, training=False), load_processor(model_dir)
    requests = requests_for(work / "img", args.questions)
    threads = torch.get_num_threads()
    runs = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        backend = TransformersBackend(model, processor, batch_size=batch_size, progress=False)
        measure(backend, requests[:1], args.samples, 4)  # warm-up
        runs[batch_size] = measure(backend, requests, args.samples, args.max_new_tokens)
        print(
            f"batch {batch_size}: {runs[batch_size]['responses_per_s']:.2f} responses/s, "
            f"{runs[batch_size]['tokens_per_s']:.1f} tokens/s",
            flush=True,
        )
    base = runs[min(runs)]["responses_per_s"]
    report = {
        "model": f"InternVL2.5-1B widths, {args.layers} + {args.layers} layers, random weights",
        "questions": args.questions,
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "torch_threads": threads,
        "runs": runs,
    }
    rows = [
        [b, f"{r['responses_per_s']:.2f}", f"{r['tokens_per_s']:.1f}", f"{r['responses_per_s'] / base:.2f}x"]
        for b, r in runs.items()
    ]
    text = (
        "\n".join(
            [
                f"# Generation throughput ({report['model']}, CPU, {threads} threads)",
                "",
                f"{args.questions} questions with one 3:2 image (7 tiles at 448 px), {args.samples} sampled responses each, "
                f"{args.max_new_tokens} new tokens per response (transformers backend of `mpo build-pairs`).",
                "",
                *markdown.table(
                    ["questions per call", "responses/s", "generated tokens/s", "vs one at a time"],
                    rows,
                    "rrrr",
                ),
            ]
        )
        + "\n"
    )
    write_results(args.out, "generation_speed", report, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
