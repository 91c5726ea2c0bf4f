"""`mpo tiny-model`: build the embedded tiny InternVL-architecture model that trains on 2 CPU cores (:mod:`mpo.models.tiny`)."""

from __future__ import annotations

import argparse

from transformers import InternVLForConditionalGeneration

from mpo.errors import UserError
from mpo.models import families
from mpo.models.tiny import TINY_TEXT, build_tiny_model, wider_text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mpo tiny-model", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output directory")
    parser.add_argument(
        "--family",
        choices=list(families.FAMILIES),
        default="internvl2_5",
        help="model family (template, tokens)",
    )
    parser.add_argument(
        "--llm", choices=["qwen2", "llama"], default="qwen2", help="LLM kind (InternVL3: qwen2 only)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument(
        "--text-hidden-size",
        type=int,
        default=None,
        help=f"LLM width (default {TINY_TEXT['hidden_size']}); its MLP is twice as wide",
    )
    args = parser.parse_args(argv)
    try:
        text = wider_text(args.text_hidden_size) if args.text_hidden_size is not None else None
    except ValueError as err:
        raise UserError(f"--text-hidden-size: {err}") from None
    try:
        out = build_tiny_model(args.out, args.llm, args.seed, text, args.family)
    except ValueError as err:
        raise UserError(f"--llm: {err}") from None
    n = sum(p.numel() for p in InternVLForConditionalGeneration.from_pretrained(out).parameters())
    width = args.text_hidden_size or TINY_TEXT["hidden_size"]
    print(
        f"tiny {families.get(args.family).title} ({args.llm} of width {width}, {n / 1e6:.2f}M parameters, seed {args.seed}) "
        f"written to {out}"
    )
    return 0
