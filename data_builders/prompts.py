"""Prompts of the preference-data builders: the chain-of-thought question, the image-free question of
DropoutNTP, and the quality-scoring prompt.

The answer-format instructions themselves live in :mod:`mpo.prompts` (shared with SFT and
evaluation); this module only adds what the builders need on top.
"""

from __future__ import annotations

import re

from mpo.data.template import IMAGE_PLACEHOLDER
from mpo.errors import UserError
from mpo.prompts import COT_INSTRUCTION, build_question, strip_instruction

__all__ = [
    "COT_INSTRUCTION",
    "DEFAULT_QUALITY_TEMPLATE",
    "cot_question",
    "fill_quality_template",
    "parse_score",
    "strip_answer_format",
    "text_only_question",
]

# A last line (not the first, and not a question: no "?") that only tells how to format the answer,
# in the wording of public benchmarks that :data:`mpo.prompts.KNOWN_INSTRUCTIONS` doesn't list: it
# starts with answer/respond/reply (or "please ...") and names a format (a letter, a word or phrase,
# yes or no, a number, directly, ...).
_FORMAT_LINE = re.compile(
    r"\n[ \t]*(?:please[ \t]+)?(?:answer|respond|reply)\b[^\n?]*"
    r"\b(?:letter|single word|phrase|yes or no|directly|number|integer|format|option|step by step)\b[^\n?]*$",
    re.IGNORECASE,
)
# A line that only shows an image, labelled or not: "<image>", "Image-1: <image>", "Frame3: <image>".
_IMAGE_LINE = re.compile(
    r"^[ \t]*(?:(?:Image|Frame)[-_ ]?\d+[ \t]*:[ \t]*)?<image>[ \t]*(?:\n|$)", re.IGNORECASE | re.MULTILINE
)


def strip_answer_format(question: str) -> str:
    """``question`` without its trailing answer-format instructions.

    The known instructions of :func:`mpo.prompts.strip_instruction` first, then any last line that
    only says how to format the answer ("Please answer with the letter of the correct option.").
    The first line is never removed, so a question is never emptied.
    """
    text = strip_instruction(question)
    while True:
        match = _FORMAT_LINE.search(text)
        if match is None or not text[: match.start()].strip():
            return text
        text = strip_instruction(text[: match.start()].rstrip())


def cot_question(
    question: str, instruction: str = COT_INSTRUCTION, choices: dict[str, str] | None = None
) -> str:
    """The chain-of-thought prompt: the question without its answer-format instruction, the options
    of ``choices`` unless the question lists them already, then ``instruction`` (by default the one
    the synthetic SFT data teaches, ending in "Final answer: .."). Built by
    :func:`mpo.prompts.build_question`, as evaluation builds its prompts."""
    return build_question(strip_answer_format(question), None, choices, cot=True, instruction=instruction)


def text_only_question(question: str) -> str:
    """``question`` with its ``<image>`` placeholders removed (and labels such as ``Image-1:`` that
    only introduced one), for DropoutNTP's image-free continuation."""
    text = _IMAGE_LINE.sub("", question).replace(IMAGE_PLACEHOLDER, "")
    return text.strip()


DEFAULT_QUALITY_TEMPLATE = (
    "{question}\n\nHere is a response to the question above:\n{response}\n\n"
    "Rate the response from 1 (useless, wrong or incoherent) to 10 (correct, clear and well reasoned). "
    'Reply with "Score: N" only.'
)


def check_quality_template(template: str, source: str = "quality prompt") -> str:
    """Raise :class:`UserError` unless ``template`` holds both ``{question}`` and ``{response}``."""
    missing = [f"{{{name}}}" for name in ("question", "response") if f"{{{name}}}" not in template]
    if missing:
        raise UserError(f"{source}: the template must contain {' and '.join(missing)}")
    return template


def fill_quality_template(template: str, question: str, response: str) -> str:
    """The template with ``{question}`` and ``{response}`` filled in (other braces left alone)."""
    return template.replace("{question}", question).replace("{response}", response)


_SCORE_LABEL = re.compile(r"score\s*(?:\*\*)?\s*[:=：]?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_score(text: str) -> float | None:
    """The score a judge wrote: the number after the last "Score:" label, else the first number
    ("7/10" reads 7); ``None`` when there is none."""
    labelled = _SCORE_LABEL.findall(text)
    if labelled:
        return float(labelled[-1])
    match = _NUMBER.search(text)
    return float(match.group()) if match else None
