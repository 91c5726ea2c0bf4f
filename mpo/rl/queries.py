"""Query selection as InternVL3.5 does it: train online RL on the questions the model gets right only sometimes.

A question's rollout accuracy is a = (responses judged ``correct``) / (responses sampled). It is kept when
LO <= a <= HI, both ends included (InternVL3.5: LO = 0.2, HI = 0.8): a question always or never solved
gives every response of its group the same reward, hence zero advantage and no gradient under GRPO/GSPO.

The accuracy comes from one of two places:

- **a pair build** (``query_build``): `mpo build-pairs correctness --out DIR` writes one JSON line per
  question into ``DIR/shards/shard-*-of-*.jsonl`` (keyed ``subset:id``), with its judged ``responses`` and
  ``n_correct`` (:func:`build_accuracy` reads them; ``DIR/build.json`` holds the build's settings, and a build
  with another chain-of-thought instruction, answer style or reasoning check than this run is refused). No
  second sampling pass is needed;
- **sampling** (:func:`sample_accuracy`): otherwise, ``n`` responses per question with the transformers
  backend (:class:`mpo.generation.TransformersBackend`, each question seeded by its key as the pair builder
  seeds it), judged by the same verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mpo.errors import UserError
from mpo.generation import GenerationRequest, SamplingParams, TransformersBackend, question_seed
from mpo.grading.verdicts import Truth, judge_against
from mpo.journal import read_records

BUILD_FILE, SHARD_GLOB = "build.json", "shards/shard-*-of-*.jsonl"  # data_builders.store's layout
BUILD_SETTINGS = ("instruction", "answer_style", "check_reasoning")  # a build's settings this run must share


@dataclass(frozen=True)
class Accuracy:
    """Responses judged ``correct`` out of those sampled for one question."""

    correct: int
    sampled: int

    @property
    def value(self) -> float:
        return self.correct / self.sampled


def in_range(accuracy: float, lo: float, hi: float) -> bool:
    """Whether a question of this accuracy is kept: LO <= accuracy <= HI (both ends included)."""
    return lo <= accuracy <= hi


def select(rows: list[dict], accuracy: dict[str, Accuracy], lo: float, hi: float) -> tuple[list[dict], dict]:
    """The rows whose accuracy is in range, in order, and counts of what was dropped and why
    (``below``, ``above``: out of range; ``unmeasured``: no accuracy for the question's key)."""
    kept, dropped = [], {"below": 0, "above": 0, "unmeasured": 0}
    for row in rows:
        measured = accuracy.get(row["key"])
        if measured is None or measured.sampled == 0:
            dropped["unmeasured"] += 1
        elif in_range(measured.value, lo, hi):
            kept.append(row)
        else:
            dropped["below" if measured.value < lo else "above"] += 1
    return kept, dropped


def build_accuracy(build_dir: str | Path, settings: dict | None = None) -> dict[str, Accuracy]:
    """Per-question accuracy from a `mpo build-pairs correctness` output folder (module docstring). ``settings``
    (``instruction``, ``answer_style``, ``check_reasoning``) must match the build's, when it recorded them."""
    root = Path(build_dir)
    if not (root / BUILD_FILE).is_file():
        raise UserError(f"query_build: {root} is not a pair build (no {BUILD_FILE})")
    build = json.loads((root / BUILD_FILE).read_text(encoding="utf-8"))
    recorded = build.get("settings", {})
    if build.get("pipeline") != "correctness":
        raise UserError(
            f"query_build: {root} is a {build.get('pipeline')} build; accuracy needs a correctness build"
        )
    for name in BUILD_SETTINGS:
        if settings and name in recorded and recorded[name] != settings[name]:
            raise UserError(
                f"query_build: {root} was built with {name}={recorded[name]!r}, this run has "
                f"{settings[name]!r}: its accuracies judge other prompts or verdicts"
            )
    out: dict[str, Accuracy] = {}
    for shard in sorted(root.glob(SHARD_GLOB)):
        for record in read_records(shard)[0]:
            responses = record.get("responses") or []
            if responses:
                out[record["key"]] = Accuracy(
                    sum(r["verdict"] == "correct" for r in responses), len(responses)
                )
    if not out:
        raise UserError(
            f"query_build: {root} holds no judged question (no {SHARD_GLOB} records with responses)"
        )
    return out


def request(row: dict, seed: int) -> GenerationRequest:
    """The generation request of a row: its prompt and images, as the pair builder asks the same question."""
    return GenerationRequest(
        row["prompt"],
        list(row["image_paths"]),
        row["subset_max_dynamic_patch"],
        seed=question_seed(seed, row["key"]),
        frames=list(row["video_frames"]),
        video=bool(row["is_video"]),
    )


def sample_accuracy(
    rows: list[dict],
    backend: TransformersBackend,
    params: SamplingParams,
    *,
    seed: int = 0,
    answer_style: str = "auto",
    check_reasoning: bool = False,
) -> dict[str, Accuracy]:
    """Sample ``params.n`` responses per row and judge them (the pair builder's sampling and verdict)."""
    outputs = backend.generate([request(row, seed) for row in rows], params) if rows else []
    out = {}
    for row, texts in zip(rows, outputs, strict=True):
        truth = Truth.of_row(json.loads(row["truth"]))
        verdicts = [
            judge_against(t, truth, style=answer_style, check_steps=check_reasoning)["verdict"] for t in texts
        ]
        out[row["key"]] = Accuracy(verdicts.count("correct"), len(verdicts))
    return out


def measure(rows: list[dict], args, model=None, processor=None) -> tuple[dict[str, Accuracy], str]:
    """The accuracy of every row and where it came from: ``args.query_build``'s records, else sampled with
    ``model`` (``args.query_samples`` or ``num_generations`` responses per question, the run's sampling
    settings and seed), each rank sampling its share of the questions and every rank getting all of them."""
    if args.query_build:
        settings = {name: getattr(args, name) for name in BUILD_SETTINGS}
        return build_accuracy(args.query_build, settings), f"the pair build {args.query_build}"
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise UserError(
            "query_accuracy: sampling the accuracy under ZeRO-3 is not supported (the weights are sharded "
            "before training starts); pass --query_build with a `mpo build-pairs correctness` output of the "
            "same questions, or --query_accuracy 0,1"
        )
    state = PartialState()
    n = args.query_samples or args.num_generations
    params = SamplingParams(
        n=n,
        temperature=args.temperature,
        top_k=args.top_k or 0,
        top_p=args.top_p,
        max_new_tokens=args.max_completion_length,
        seed=args.seed,
    )
    backend = TransformersBackend(model.to(state.device), processor, progress=state.is_main_process)
    mine = rows[state.process_index :: state.num_processes]
    found = sample_accuracy(
        mine,
        backend,
        params,
        seed=args.seed,
        answer_style=args.answer_style,
        check_reasoning=args.check_reasoning,
    )
    merged = dict(pair for part in gather_object([list(found.items())]) for pair in part)
    return merged, f"{n} sampled responses per question"
