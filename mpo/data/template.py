"""Where images go in a question, and the family-neutral parts of turning text into model input.

The MMPR / InternVL data formats mark an image with ``<image>`` in the question text (a video with
``<video>``). Those placeholders are put where the model expects them here; the chat template itself
(system message, turn markers) and the tokens an image expands to belong to the checkpoint's family
(:mod:`mpo.models.families`): each ``<image>`` becomes the family's image text, e.g. ``<img>`` +
``<IMG_CONTEXT>`` x (tiles x tokens per tile) + ``</img>``.
"""

from __future__ import annotations

import functools

from mpo.models.families.base import Tokens

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"


def normalize_question(question: str, num_images: int, video: bool = False) -> str:
    """Put the image placeholders where the model expects them.

    Single image without ``<image>`` gets ``<image>\\n`` prepended (MMPR convention); a video (frame
    list) without placeholders gets ``Frame{i}: <image>`` lines; otherwise the count must match.
    """
    found = question.count(IMAGE_PLACEHOLDER)
    if found == num_images:
        return question
    if found == 0 and video:
        frames = "".join(f"Frame{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(num_images))
        return frames + question.replace(VIDEO_PLACEHOLDER + "\n", "").replace(VIDEO_PLACEHOLDER, "")
    if found == 0:
        return "".join(f"{IMAGE_PLACEHOLDER}\n" for _ in range(num_images)) + question
    raise ValueError(f"question has {found} {IMAGE_PLACEHOLDER} placeholders but {num_images} images")


def expand_images(text: str, tiles_per_image: list[int], tokens_per_tile: int, tokens: Tokens) -> str:
    """Replace the i-th ``<image>`` by the family's image text (``tokens``) for the i-th image's tiles."""
    parts = text.split(IMAGE_PLACEHOLDER)
    if len(parts) - 1 != len(tiles_per_image):
        raise ValueError(
            f"{len(parts) - 1} {IMAGE_PLACEHOLDER} placeholders for {len(tiles_per_image)} images"
        )
    out = [parts[0]]
    for tiles, tail in zip(tiles_per_image, parts[1:], strict=True):
        out += [tokens.image_text(tiles, tokens_per_tile), tail]
    return "".join(out)


def tokenize_with_images(
    tokenizer, text: str, tiles_per_image: list[int], tokens_per_tile: int, tokens: Tokens
) -> list[int]:
    """The ids of :func:`expand_images` ``(text, ...)``, without tokenising the thousands of context tokens.

    The text is tokenised with one context token per image, which is then repeated tiles x tokens-per-tile
    times. This is exact for every tokenizer: the context token is an added token, which a tokenizer splits
    out of the text before it tokenises the pieces between added tokens, so the pieces are the same whether
    an image holds one context token or 3328. For a 7-tile image (1792 context tokens) it takes
    0.19 ms instead of 2.46 ms per prompt (benchmarks/results/real_profile.md), at every load with
    ``max_length`` and in every batch.
    """
    ids = tokenizer(expand_images(text, [1] * len(tiles_per_image), 1, tokens), add_special_tokens=False)[
        "input_ids"
    ]
    context = tokenizer.convert_tokens_to_ids(tokens.img_context)
    at = [i for i, t in enumerate(ids) if t == context]
    if len(at) != len(tiles_per_image):
        raise ValueError(
            f"the text holds {len(at) - len(tiles_per_image)} literal {tokens.img_context} token(s) of its own"
        )
    out: list[int] = []
    start = 0
    for end, tiles in zip(at, tiles_per_image, strict=True):
        out += ids[start:end] + [context] * (tiles * tokens_per_tile)
        start = end + 1
    return out + ids[start:]


@functools.lru_cache(maxsize=8)  # called for every record: tokenise the probe once per tokenizer
def _leading_special_ids(tokenizer) -> tuple[int, ...]:
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start])
    return ()


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer itself puts before any text: ``<s>`` for InternLM2, none for Qwen2.

    Upstream InternVL tokenizes whole conversations with the special tokens on (``chat()`` and its
    training preprocessing), so an InternLM2-based checkpoint (2B, 8B, 26B) always saw ``<s>`` first.
    Prompts here are rendered and tokenised in pieces with the special tokens off; each sequence gets
    these ids once, at its start. Read from the tokenizer, so no family is named here.
    """
    return list(_leading_special_ids(tokenizer))
