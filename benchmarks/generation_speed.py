"""Generation throughput of the pair builder's transformers backend at the InternVL2.5-1B widths:
batched requests against one request at a time, and each prompt run once for its samples against
transformers' own ``generate(num_return_sequences=n)``, which runs it ``n`` times.

    python -m benchmarks.generation_speed [--layers 2] [--questions 8] [--samples 8] [--max-new-tokens 128]
                                          [--batch-sizes 1,8] [--out DIR]

Model: random weights at the InternVL2.5-1B widths (InternViT 1024 wide over 1025 patches per tile,
Qwen2.5-0.5B 896 wide, the 151k vocabulary), both towers cut to ``--layers`` so that it runs on 2 CPU
cores. Requests: as `mpo build-pairs correctness` makes them (its defaults: 8 samples, 128 new tokens),
one question with one 3:2 image (3 x 2 tiles + thumbnail at 448 px = 1792 image tokens) and a 20-40
word question, ``--samples`` responses each at temperature 1, top-k 50. Random weights almost never
sample the end token (1 in 151k per step), so every response runs to ``--max-new-tokens`` and the runs
do the same work.

Two engines, each at every batch size, in one process after a warm-up request:
- ``plain``: ``model.generate(num_return_sequences=n, do_sample=True)`` over the whole prompt (the
  prompt is copied ``n`` times before the forward pass; transformers' own sampling);
- ``mpo``: :class:`mpo.generation.TransformersBackend` as `mpo build-pairs` runs it (prompt once per
  question, per-question seeds).
Each run's time is split by forward hooks into the vision tower, the LLM over the prompt, the LLM over
the new tokens, and the rest (LM head, sampling, generate's own work). The last column bounds what
batching can give on a CPU, where the vision tower and the prompt are compute-bound and do not get
cheaper per question in a batch: one-at-a-time time / (vision + prompt) time.

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
from benchmarks.phase_clock import PhaseClock
from mpo import markdown
from mpo.generation import TransformersBackend


class PlainBackend(TransformersBackend):
    """transformers' own path: ``generate(num_return_sequences=n)`` copies each prompt ``n`` times
    before the forward pass."""

    def prefill(self, enc, pixel_values: torch.Tensor | None, n: int) -> dict:
        return {**enc, "pixel_values": pixel_values, "num_return_sequences": n}


def requests_for(root: Path, n: int, seed: int = 0, seeded: bool = True) -> list:
    """``n`` questions, one 3:2 image each (448 px tiles: 3 x 2 + thumbnail), each seeded as
    `mpo build-pairs` seeds them (``seeded``) or not."""
    from mpo.generation import GenerationRequest

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.new("RGB", (1344, 896), rng.choice(["red", "green", "blue"])).save(path)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40)))
        out.append(
            GenerationRequest(
                f"<image>\n{words}?", [str(path)], max_dynamic_patch=6, seed=i if seeded else None
            )
        )
    return out


def measure(backend, requests: list, samples: int, max_new_tokens: int) -> dict:
    from mpo.generation import SamplingParams

    params = SamplingParams(n=samples, temperature=1.0, top_k=50, max_new_tokens=max_new_tokens, seed=0)
    vision, llm = backend.model.model.vision_tower, backend.model.model.language_model

    def phase(module, kwargs) -> str:
        if module is vision:
            return "vision"
        return "prompt" if kwargs["inputs_embeds"].shape[1] > 1 else "decode"  # more than one new position

    clock = PhaseClock()
    with clock.time_modules([vision, llm], phase):
        start = time.perf_counter()
        outputs = backend.generate(requests, params)
        seconds = time.perf_counter() - start
    phases = {name: clock.seconds[clock.label][name] for name in ("vision", "prompt", "decode")}
    responses = sum(len(o) for o in outputs)
    # every response runs to max_new_tokens (random weights; re-tokenising the decoded text would not count them)
    return {
        "seconds": seconds,
        "responses": responses,
        "responses_per_s": responses / seconds,
        "tokens_per_s": responses * max_new_tokens / seconds,
        "phases": {**phases, "rest": seconds - sum(phases.values())},
    }


def main(argv: list[str] | None = None) -> int:
    from mpo.models.loading import load_model, load_processor
    from mpo.models.sizes import build_random_native

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.generation_speed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8, help="responses per question")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8", help="questions per generate call, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("mpo_bench"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mpo-gen-speed-"))
    model_dir = build_random_native("1b", work / "model", layers=args.layers)
    model, processor = load_model(model_dir, training=False), load_processor(model_dir)
    engines = {
        "plain": (PlainBackend, requests_for(work / "img", args.questions, seeded=False)),
        "mpo": (TransformersBackend, requests_for(work / "img", args.questions)),
    }
    threads = torch.get_num_threads()
    runs = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for engine, (backend_class, requests) in engines.items():
            backend = backend_class(model, processor, batch_size=batch_size, progress=False)
            measure(backend, requests[:1], args.samples, 4)  # warm-up
            run = {"engine": engine, "batch_size": batch_size}
            run |= measure(backend, requests, args.samples, args.max_new_tokens)
            runs.append(run)
            print(f"{engine} batch {batch_size}: {run['responses_per_s']:.2f} responses/s", flush=True)
    base = next(
        r for r in runs if r["engine"] == "plain" and r["batch_size"] == min(r["batch_size"] for r in runs)
    )
    report = {
        "model": f"InternVL2.5-1B widths, {args.layers} + {args.layers} layers, random weights",
        "questions": args.questions,
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "torch_threads": threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
    }
    rows = []
    for r in runs:
        ph = r["phases"]
        alone = next(a for a in runs if a["engine"] == r["engine"] and a["batch_size"] == base["batch_size"])
        rows.append(
            [
                r["engine"],
                r["batch_size"],
                f"{r['responses_per_s']:.3f}",
                f"{r['tokens_per_s']:.1f}",
                f"{r['responses_per_s'] / base['responses_per_s']:.2f}x",
                f"{r['responses_per_s'] / alone['responses_per_s']:.2f}x",
                *(f"{ph[k]:.1f}" for k in ("vision", "prompt", "decode", "rest")),
                f"{alone['seconds'] / (alone['phases']['vision'] + alone['phases']['prompt']):.2f}x",
            ]
        )
    text = (
        "\n".join(
            [
                f"# Generation throughput ({report['model']}, CPU, {threads} threads)",
                "",
                f"Measured {report['date']}, torch {report['torch']}. "
                f"{args.questions} questions with one 3:2 image (7 tiles at 448 px), {args.samples} sampled responses "
                f"each, {args.max_new_tokens} new tokens per response. `plain`: transformers' "
                "`generate(num_return_sequences=n)`; `mpo`: the backend of `mpo build-pairs` (prompt once per "
                "question). Seconds by part: vision tower, LLM over the prompts, LLM over the new tokens, the rest "
                "(LM head, sampling, generate). Batching bound: this engine one at a time / its vision + prompt "
                "seconds (what batching could give if decoding cost nothing).",
                "",
                *markdown.table(
                    [
                        "engine",
                        "questions per call",
                        "responses/s",
                        "tokens/s",
                        "vs plain one at a time",
                        "vs same engine one at a time",
                        "vision s",
                        "prompt s",
                        "decode s",
                        "rest s",
                        "batching bound",
                    ],
                    rows,
                    "lrrrrrrrrrr",
                ),
            ]
        )
        + "\n"
    )
    write_results(args.out, "generation_speed", report, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
