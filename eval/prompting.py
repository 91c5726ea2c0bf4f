"""Evaluation prompts, built by :func:`mpo.prompts.build_question` exactly as the training data is.

Direct mode asks for the option letter or a single word/phrase; ``--cot`` asks for step-by-step
reasoning ending in ``Final answer: ..`` (the MPO format). A trailing answer-format instruction
already in the question is replaced by the mode's own; options already listed in the question are
not listed twice.
"""

from __future__ import annotations

import re

from eval.benchmarks import EvalItem
from mpo.data.template import IMAGE_PLACEHOLDER, normalize_question
from mpo.errors import DataError
from mpo.generation import GenerationRequest
from mpo.prompts import build_question, strip_instruction


def options_listed(text: str, choices: dict[str, str]) -> bool:
    """Whether every option already appears in ``text`` on its own line ("A. cat", "(A) cat", "A) cat")."""
    lines = {line.strip() for line in text.splitlines()}
    for letter, option in choices.items():
        forms = (f"{letter}. {option}", f"({letter}) {option}", f"{letter}) {option}", f"{letter}: {option}")
        if not any(re.sub(r"\s+", " ", form).strip() in lines for form in forms):
            return False
    return True


def make_prompt(item: EvalItem, cot: bool) -> str:
    """The user turn for one item: placeholders, hint, question, options and the answer instruction."""
    core = strip_instruction(item.question)
    if item.hint:
        core = f"Hint: {item.hint}\n{core}"
    listed = bool(item.choices) and options_listed(core, item.choices)
    if item.video:  # Frame{i}: <image> lines, as in training
        core = normalize_question(core, item.num_images, video=True)
    prompt = build_question(core, item.num_images, item.choices, cot, list_options=not listed)
    found = prompt.count(IMAGE_PLACEHOLDER)
    if found != item.num_images:
        raise DataError(item.path, item.line,
                        f"{found} {IMAGE_PLACEHOLDER} placeholders for {item.num_images} images", "question")  # fmt: skip
    return prompt


def make_request(item: EvalItem, cot: bool, max_dynamic_patch: int) -> GenerationRequest:
    """The generation request (prompt, image files, tile budget) for one item."""
    return GenerationRequest(
        question=make_prompt(item, cot),
        images=list(item.images),
        max_dynamic_patch=item.max_dynamic_patch or max_dynamic_patch,
        frames=list(item.frames),
        video=item.video,
    )
