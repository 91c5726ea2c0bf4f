"""Generation backends for the pair-builder tests, and a command line that runs a build with one.

* :class:`ScriptedBackend`: fixed responses per question (found by a marker in the question).
* :class:`AnswerTagging`: the real tiny model (random weights: it never writes "Final answer:")
  with a final-answer line appended to each sampled response, chosen by a hash of the response:
  the ground truth, a wrong answer, or nothing (unparsable). Deterministic in the response text, so
  everything the real model's seeding guarantees (shards, resume) carries over to the pairs.

``python tests/pair_backends.py DELAY correctness --model M ...`` runs ``mpo build-pairs`` with
:class:`AnswerTagging` around the transformers backend (the crash test kills it).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from data_builders.prompts import cot_question
from mpo.generation import GenerationRequest, SamplingParams


class ScriptedBackend:
    """``script[marker]`` is the list of responses of every question containing ``marker``;
    judge prompts (containing ``JUDGE``) get ``Score: 9`` when the response holds "good", else 2."""

    name = "scripted"

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script, self.calls = script, []

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[str]]:
        self.calls.append((list(requests), params))
        out = []
        for req in requests:
            if "JUDGE" in req.question:
                out.append(["Score: 9" if "good" in req.question.split("RESPONSE:")[-1] else "Score: 2"])
                continue
            marker = next(m for m in self.script if m in req.question)
            texts = self.script[marker]
            out.append(list(texts[: params.n]) if params.n > 1 else [texts[0]])
        return out


class Recording:
    """Wraps a backend and keeps every request it was given."""

    def __init__(self, inner) -> None:
        self.inner, self.requests = inner, []
        self.name = getattr(inner, "name", type(inner).__name__)

    def generate(self, requests, params):
        self.requests += list(requests)
        return self.inner.generate(requests, params)


class AnswerTagging:
    name = "tiny+answer-tags"

    def __init__(self, inner, qa_jsonl: Path, delay: float = 0.0) -> None:
        self.inner, self.delay = inner, delay  # seconds per call: lets the crash test kill mid-build
        rows = [json.loads(line) for line in Path(qa_jsonl).read_text().splitlines() if line.strip()]
        self.answers = {cot_question(r["question"]): str(r["answer"]) for r in rows}

    def generate(self, requests, params):
        time.sleep(self.delay)
        out = self.inner.generate(requests, params)
        tagged = []
        for req, texts in zip(requests, out, strict=True):
            gt = self.answers[req.question]
            row = []
            for t in texts:
                h = int(hashlib.sha1(t.encode()).hexdigest(), 16) % 3
                row.append(
                    f"{t}\nFinal answer: {gt}" if h == 0 else f"{t}\nFinal answer: nothing" if h == 1 else t
                )
            tagged.append(row)
        return tagged


def run_tagged(argv: list[str], delay: float = 0.0):
    """``mpo build-pairs`` with :class:`AnswerTagging` around the transformers backend."""
    from data_builders.build_pairs import run
    from data_builders.inputs import read_subsets
    from mpo.cli.build_pairs import build_parser
    from mpo.generation import make_backend

    args = build_parser().parse_args(argv)
    (subset,) = read_subsets(args.data)
    backend = AnswerTagging(
        make_backend("transformers", args.model, batch_size=args.batch_size), subset.annotation, delay
    )
    return run(args, backend=backend)


if __name__ == "__main__":  # pair_backends.py DELAY ARGV...: the crash test's slowed build
    run_tagged(sys.argv[2:], delay=float(sys.argv[1]))
