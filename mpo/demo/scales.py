"""The demo's sizes: :class:`Scale`, and the ``full`` (``make demo``), ``long`` and ``smoke`` scales."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    """Sizes of one demo run."""

    n_sft: int  # SFT examples (the QA and eval splits are a quarter each)
    skills: tuple[str, ...] | None  # skills of the synthetic task (None: all seven)
    sft_steps: tuple[int, int, int] | None  # steps of stages 1, 1.5, 2 (None: the recipes' own)
    pair_questions: int  # questions sampled for pairs
    samples: int  # responses per question (correctness pairs)
    mpo_steps: int | None  # None: one epoch over the pairs
    eval_items: int | None  # None: the whole eval split
    pairs: str = (
        "correctness"  # pair builder; dropout-ntp needs no correct answer (an untrained model has none)
    )
    tts_samples: int = 4  # test-time scaling: sampled responses per item (majority vote over the first N)
    tts_items: int | None = None  # ... on the first items of the eval split (None: eval_items)
    formats: tuple[str, ...] = ("short",)  # question formats of the synthetic task (short answer, "mc")
    max_tiles: int = 1  # largest synthetic image, in tiles (1: every image is one 64 px tile, 16 tokens)
    cot_fraction: float = 0.3  # share of SFT records answered with a chain of thought (as the generator)
    pair_args: tuple[str, ...] = ()  # extra `mpo build-pairs` options (sampling temperature, ...)
    mpo_args: tuple[
        str, ...
    ] = ()  # extra `mpo train` options of the MPO step and the ablation (beta, lr, ...)
    # `mpo demo --cascade` (mpo.demo.cascade): RL steps of each GSPO arm, and its `mpo rl` options
    gspo_steps: int = 100
    gspo_args: tuple[str, ...] = ()


# `full` (make demo): three of the seven skills, which the tiny model learns in its SFT budget
# (recipes/tiny/sft_stage2.yaml has the measurements); 544-678 s end to end on 2 CPU cores, of which stage
# 2 of SFT is 330-409 s (README). `long` is the whole task with a 7000-step stage 2: 1840 s end to end, 1555 s
# of it stage 2, with other work beside it (benchmarks/results/demo_long.md). `smoke` checks the plumbing in
# seconds.
DEMO_SKILLS = ("colour", "count", "position")


# Test-time scaling in `full`: 8 samples on the first 200 eval items add 23 s (2 x 10-11 s of sampling, 1 s of
# compare; measured on 2 cores); all 500 items would take 2.5 times as long.
TTS_SAMPLES, TTS_ITEMS = 8, 200


TTS_TEMPERATURE = 0.7


# The MPO paper's premise in `full`: SFT data are mostly direct answers (2 % chain of thought: 160 of 8000), so
# after SFT the chain of thought trails the direct answer (47.2 % against 63.2 % held-out), and MPO on CoT pairs
# from 1000 questions (at most 3 pairs each; lr 2e-4) closes most of that gap: benchmarks/results/demo_sweep.md.
FULL_COT_FRACTION = 0.02


FULL = Scale(
    n_sft=8000,
    skills=DEMO_SKILLS,
    sft_steps=None,
    pair_questions=1000,
    samples=8,
    mpo_steps=None,
    eval_items=500,
    tts_samples=TTS_SAMPLES,
    tts_items=TTS_ITEMS,
    cot_fraction=FULL_COT_FRACTION,
    # 32 questions per generation call: the same pairs, byte for byte, as 8, in 56 s instead of 76
    pair_args=("--max-pairs-per-question", "3", "--batch-size", "32"),
    mpo_args=("--learning_rate", "2e-4"),
    # the cascade's GSPO arms: 100 steps of 4 questions x 4 rollouts (1600 responses), lr 5e-5 (tiny/gspo's),
    # 48 new tokens; about 90 s each on 2 cores. lr 2e-4 lost 4 points to MPO and halved its sound answers.
    gspo_steps=100,
    gspo_args=("--per_device_train_batch_size", "16", "--learning_rate", "5e-5"),
)


SCALES = {
    "full": FULL,
    # full's recipe on all seven skills, with the longer stage 2 they need and twice the eval items
    "long": dataclasses.replace(FULL, skills=None, sft_steps=(60, 60, 7000), eval_items=1000, tts_items=500),
    "smoke": Scale(
        n_sft=80,
        skills=DEMO_SKILLS,
        sft_steps=(2, 2, 4),
        pair_questions=6,
        samples=4,
        mpo_steps=3,
        eval_items=8,
        pairs="dropout-ntp",
        tts_samples=4,
        tts_items=8,
        cot_fraction=FULL_COT_FRACTION,
        gspo_steps=2,
        gspo_args=("--max_completion_length", "16"),
    ),
}
