"""`mpo plan`: will a recipe fit the cluster? Per-GPU memory of the model states and the activations."""

from __future__ import annotations

import argparse

import yaml

from mpo.plan import plan
from mpo.recipe import resolve_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mpo plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a recipe YAML (mpo train or mpo sft)")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs in the job")
    parser.add_argument("--gpu-memory", type=float, required=True, help="GiB of memory per GPU")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--size", default=None, help="1b ... 78b (default: the recipe's folder name)")
    parser.add_argument("--zero", type=int, default=None, help="ZeRO stage (default: the size's reference)")
    args = parser.parse_args(argv)
    path = resolve_config(args.config)
    recipe = yaml.safe_load(path.read_text()) or {}
    result = plan(
        recipe,
        (args.size or path.parent.name).lower(),
        args.gpus,
        args.gpu_memory,
        gpus_per_node=args.gpus_per_node,
        zero=args.zero,
    )
    print(result.table())
    return 0 if result.fits else 3
