"""`mpo env`: what this machine has, and which attention kernel ``auto`` picks here for each layout."""

from __future__ import annotations

import argparse

from mpo.attention import Platform
from mpo.environment import auto_choices, device, versions


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="mpo env", description=__doc__.splitlines()[0]).parse_args(argv)
    platform = Platform.detect()
    print(f"device: {device()}")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(
        f"kernels here: flash-attn {'yes' if platform.flash_attn else 'no'}, flash-attn-4 (Hopper+) "
        f"{'yes' if platform.flash_attn_4 else 'no'}, torch varlen "
        f"{'yes' if platform.torch_varlen else 'no'}, flex backward {'yes' if platform.flex_backward else 'no'}"
    )
    for layout, choice in auto_choices(platform).items():
        print(
            f"auto, {layout} rows: {choice['text']} (language model), {choice['vision']} (vision): {choice['reason']}"
        )
    return 0
