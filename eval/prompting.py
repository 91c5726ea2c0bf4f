"""Evaluation prompts, built by :func:`mpo.prompts.build_question` exactly as the training data and
the pair builders build theirs.

Direct mode ends with the benchmark's own instruction (:class:`eval.rules.Rule`: the option letter,
a single word or phrase, yes or no, or none where the question says how to answer); ``--cot`` asks
for step-by-step reasoning ending in ``Final answer: ..`` (the MPO format). A trailing answer-format
instruction already in the question is replaced by the mode's own; options already listed in the
question are not listed twice.
"""

from __future__ import annotations

from eval.benchmarks import EvalItem
from mpo.data.template import IMAGE_PLACEHOLDER, normalize_question
from mpo.errors import DataError
from mpo.generation import GenerationRequest
from mpo.prompts import build_question, strip_instruction


def make_prompt(item: EvalItem, cot: bool) -> str:
    """The user turn for one item: placeholders, hint, question, options and the answer instruction."""
    core = strip_instruction(item.question)
    if item.video:  # Frame{i}: <image> lines, as in training
        core = normalize_question(core, item.num_images, video=True)
    instruction = None if cot else item.rule.instruction(bool(item.choices))
    prompt = build_question(
        core,
        None if item.video else item.num_images,
        item.choices,
        cot,
        instruction=instruction,
        hint=item.hint,
    )
    found = prompt.count(IMAGE_PLACEHOLDER)
    if found != item.num_images:
        raise DataError(
            item.path,
            item.line,
            f"{found} {IMAGE_PLACEHOLDER} placeholders for {item.num_images} images",
            "question",
        )
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
