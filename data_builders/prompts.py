"""Prompts of the preference-data builders: the image-free question of DropoutNTP and the
quality-scoring prompt.

The answer-format instructions and the chain-of-thought question (:func:`mpo.prompts.cot_question`)
live in :mod:`mpo.prompts` (shared with SFT, evaluation and `mpo rl`); this module only adds what the
builders need on top.
"""

from __future__ import annotations

import re

from mpo.data.template import IMAGE_PLACEHOLDER
from mpo.errors import UserError
from mpo.prompts import COT_INSTRUCTION, cot_question, strip_answer_format

__all__ = [
    "COT_INSTRUCTION",
    "DEFAULT_QUALITY_TEMPLATE",
    "cot_question",
    "fill_quality_template",
    "parse_score",
    "strip_answer_format",
    "text_only_question",
]

# A line that only shows an image, labelled or not: "<image>", "Image-1: <image>", "Frame3: <image>".
_IMAGE_LINE = re.compile(
    r"^[ \t]*(?:(?:Image|Frame)[-_ ]?\d+[ \t]*:[ \t]*)?<image>[ \t]*(?:\n|$)", re.IGNORECASE | re.MULTILINE
)


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
