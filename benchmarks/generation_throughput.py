"""Batched vs one-at-a-time generation for the pair builders, on the CPU: questions/s, sampled
responses/s, and the ratio.

    python -m benchmarks.generation_throughput [--questions 16] [--n 8] [--max-new-tokens 64] [--batch-size 8]

Uses the tiny model and the synthetic QA split (built in a temporary folder) and the correctness
builder's requests (CoT prompt, per-question seeds). With per-question seeds the batched responses
are the one-at-a-time responses; the benchmark checks that too.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--n", type=int, default=8, help="responses per question")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generate call when batched")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared CPUs)")
    parser.add_argument("--rounds", type=int, default=2, help="best of this many rounds each")
    args = parser.parse_args(argv)

    import torch

    from data_builders.correctness import CorrectnessBuilder
    from data_builders.inputs import load_questions
    from data_builders.synthetic import generate
    from mpo.generation import SamplingParams, TransformersBackend
    from mpo.models.loading import load_model, load_processor
    from mpo.models.tiny import build_tiny_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny")
        generate(Path(tmp) / "data", n_sft=0, n_qa=args.questions, n_eval=0, seed=0)
        questions = load_questions(Path(tmp) / "data" / "qa" / "meta.json")
        model, processor = load_model(model_dir), load_processor(model_dir)
        params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens)
        requests = [CorrectnessBuilder(None, params).request(q) for q in questions]  # type: ignore[arg-type]
        results, outputs = {}, {}
        for name, batch in (("one_at_a_time", 1), ("batched", args.batch_size)):
            backend = TransformersBackend(model, processor, batch_size=batch, progress=False)
            best = float("inf")
            for _ in range(args.rounds):
                start = time.perf_counter()
                outputs[name] = backend.generate(requests, params)
                best = min(best, time.perf_counter() - start)
            results[name] = {
                "batch_size": batch,
                "seconds": round(best, 3),
                "questions_per_s": round(len(requests) / best, 2),
                "responses_per_s": round(len(requests) * args.n / best, 2),
            }
    results["ratio"] = round(
        results["batched"]["responses_per_s"] / results["one_at_a_time"]["responses_per_s"], 2
    )
    results["same_responses"] = outputs["batched"] == outputs["one_at_a_time"]
    print(json.dumps(results, indent=1))
    for name in ("one_at_a_time", "batched"):
        r = results[name]
        print(
            f"{name:>14} (batch {r['batch_size']:>2}): {r['questions_per_s']:7.2f} questions/s, "
            f"{r['responses_per_s']:8.2f} responses/s"
        )
    print(f"batched / one-at-a-time: {results['ratio']}x; identical responses: {results['same_responses']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
