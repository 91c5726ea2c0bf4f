"""The `mpo` command: the command layer (docs/design.md#layout).

Every subcommand is a module of this package exposing ``main(argv: list[str]) -> int``, the only
place its flags are parsed; the benchmarks' commands (`mpo bench`, `mpo gpu-check`) are scripts of
benchmarks/. A command is imported only when it runs, so `mpo --help` is instant. Each one also runs
as ``python -m mpo.cli SUB ...`` (what ``accelerate launch -m mpo.cli train ...`` needs).
"""

from __future__ import annotations

import importlib
import sys

from mpo.errors import UserError

# name -> (module with main(argv), one-line help). A command is listed here only once it works.
COMMANDS: dict[str, tuple[str, str]] = {
    "tiny-model": (
        "mpo.cli.tiny_model",
        "build the embedded tiny InternVL-architecture model (--family internvl2_5 | internvl3)",
    ),
    "synthetic": (
        "mpo.cli.synthetic",
        "generate the synthetic visual QA task (SFT / QA / eval splits)",
    ),
    "convert": (
        "mpo.cli.convert",
        "convert a checkpoint between the OpenGVLab layout and native transformers",
    ),
    "transfer-vision": (
        "mpo.cli.transfer_vision",
        "progressive scaling: put the vision tower of a small-LLM run into a checkpoint with a larger LLM",
    ),
    "train": (
        "mpo.cli.train",
        "MPO training (DPO + BCO + SFT) from a recipe YAML, plus --key value overrides",
    ),
    "rl": ("mpo.cli.rl", "online RL after MPO: GSPO on the model's own rollouts (InternVL3.5's Cascade RL)"),
    "build-pairs": (
        "mpo.cli.build_pairs",
        "preference pairs from the model itself: correctness-based or DropoutNTP (MMPR layout)",
    ),
    "sft": (
        "mpo.cli.sft",
        "one stage (1, 1.5, 2) of the InternVL2.5 SFT recipe from a recipe YAML, plus overrides",
    ),
    "eval": (
        "mpo.cli.eval",
        "evaluate a checkpoint on benchmarks (VLMEvalKit TSV, MMPR jsonl), or --compare runs",
    ),
    "bench": (
        "benchmarks.mpo_speed",
        "speed and memory of MPOTrainer vs plain trl.DPOTrainer (pairs/s, peak MB)",
    ),
    "gpu-check": (
        "benchmarks.gpu_check",
        "on a GPU: every attention kernel exact in every layout (bf16), speed vs TRL at the 1B widths (--dry: CPU)",
    ),
    "env": (
        "mpo.cli.env",
        "this machine's packages and device, and the attention kernel auto picks per layout",
    ),
    "plan": (
        "mpo.cli.plan",
        "per-GPU memory of a recipe on a cluster (model states at its ZeRO stage, activations): does it fit?",
    ),
    "push": (
        "mpo.cli.push",
        "write the model card of a run and upload it to the Hugging Face Hub (--dry-run: list only)",
    ),
    "demo": ("mpo.cli.demo", "run the whole pipeline end to end on the embedded default"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: mpo <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `mpo <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mpo: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UserError as err:
        print(f"mpo {name}: error: {err}", file=sys.stderr)
        return 1
