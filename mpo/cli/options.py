"""Flags shared by several commands."""

from __future__ import annotations

import argparse


def add_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    """The vLLM engine flags of `mpo build-pairs` and `mpo eval` (used with ``--backend vllm``)."""
    parser.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="vLLM: GPUs one model is split over (InternVL2.5-78B: 4-8)",
    )
    parser.add_argument(
        "--data-parallel-size",
        type=int,
        default=1,
        help="vLLM: model replicas (or one --shard per GPU group)",
    )
    parser.add_argument(
        "--max-images-per-prompt", type=int, default=8, help="vLLM: limit_mm_per_prompt for images"
    )
