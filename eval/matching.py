"""VLMEvalKit's answer-matching rules, written from its public description and code
(``vlmeval/utils/matching_util.py``, ``vlmeval/smp/misc.py``, ``vlmeval/dataset/utils/yorn.py``,
``OCRBench.evaluate``, ``utils/mathvista.py``), so that a benchmark scored here agrees with the
number VLMEvalKit reports in its exact-matching mode (no judge model).

* :func:`infer_option`: which option a response names (VLMEvalKit ``can_infer``): first a letter
  standing alone among the last few words, then "answer is X", then a unique option text inside a
  short response.
* :func:`yes_no`: "Yes", "No" or "Unknown" (VLMEvalKit ``YOrN_Extraction``).
* :func:`ocrbench_hit`: whether any accepted answer occurs in the response (OCRBench).
* :func:`mathvista_hit`: MathVista's ``post_check`` on one extracted answer.
"""

from __future__ import annotations

import re

__all__ = ["infer_option", "mathvista_hit", "ocrbench_hit", "process_punctuation", "yes_no"]

# Marks replaced by spaces before looking for a standalone option letter.
_OPTION_MARKS = ".()[],:;!*#{}"
# A letter counts only among the last this-many words ("A" early in a sentence is an article).
_OPTION_TAIL_WORDS = 5
# Replies that refuse to answer: they name the pseudo-option "Z" (never a ground truth).
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
REFUSED = "Z"


def _option_letter(response: str, choices: dict[str, str]) -> str | None:
    """The letter standing alone (marks removed) near the end of ``response``, if exactly one
    option letter occurs; "Z" for a refusal or a lone "Z"; else the letter of "answer is X"."""
    if any(refusal in response for refusal in _REFUSALS):
        return REFUSED
    words = response.translate({ord(c): " " for c in _OPTION_MARKS}).split()
    present = [letter for letter in choices if letter in words]
    if len(present) == 1:
        letter = present[0]
        if words.index(letter) > len(words) - _OPTION_TAIL_WORDS:
            return letter
    elif not present and REFUSED in words:
        return REFUSED
    match = _ANSWER_IS.search(response)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def _option_text(response: str, choices: dict[str, str]) -> str | None:
    """The one option whose text (lowercased) occurs in ``response``, for responses at most twice
    as long as all option texts together."""
    text = response.lower()
    if len(text) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    found = [letter for letter, option in choices.items() if str(option).lower() in text]
    return found[0] if len(found) == 1 else None


def infer_option(response: str, choices: dict[str, str]) -> str | None:
    """The option letter a response names, "Z" when it refuses, or ``None`` (VLMEvalKit ``can_infer``)."""
    response = str(response)
    return _option_letter(response, choices) or _option_text(response, choices)


_PUNCT = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_LONE_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
# VLMEvalKit passes ``re.UNICODE`` (32) where ``re.sub`` takes its count: at most 32 periods go.
_PERIODS_REMOVED = 32


def process_punctuation(text: str) -> str:
    """VQA punctuation handling: each mark is deleted when it touches a space somewhere in the text
    (or the text has a digit,digit comma), else replaced by a space; lone periods are deleted."""
    out = text
    digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in _PUNCT:
        spaced = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if spaced or digit_comma else " ")
    return _LONE_PERIOD.sub("", out, count=_PERIODS_REMOVED)


def yes_no(response: str) -> str:
    """``"Yes"`` when the words hold "yes" and not "no", ``"No"`` for the reverse, else ``"Unknown"``."""
    words = process_punctuation(str(response).lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "no" in words and "yes" not in words:
        return "No"
    return "Unknown"


HME_CATEGORY = "Handwritten Mathematical Expression Recognition"


def ocrbench_hit(response: str, answers: list[str], category: str) -> bool:
    """OCRBench: some accepted answer is a substring of the response. Case and surrounding space
    are ignored; for handwritten formulas (:data:`HME_CATEGORY`) all spaces are, and case counts."""
    if category == HME_CATEGORY:
        squeeze = lambda s: s.strip().replace("\n", " ").replace(" ", "")  # noqa: E731
        return any(squeeze(a) in squeeze(str(response)) for a in answers)
    fold = lambda s: s.lower().strip().replace("\n", " ")  # noqa: E731
    return any(fold(a) in fold(str(response)) for a in answers)


def mathvista_hit(
    response: str, answer: str, answer_type: str, choices: dict[str, str] | None, answer_option: str | None
) -> bool:
    """MathVista ``post_check``: a multiple-choice response names ``answer_option``
    (:func:`infer_option`); an ``integer`` / ``float`` response parses (``int()`` / ``float()``,
    whole string) to the ground truth's value; ``text`` / ``list`` answers must equal the ground
    truth after stripping whitespace.

    VLMEvalKit's own check compares the string ``"None"`` for text/list answers, so it never
    credits them; here an exact string match is credited (the only place this module departs).
    """
    if choices:
        return infer_option(response, choices) == answer_option
    cast = {"integer": int, "float": float}.get(answer_type)
    if cast is None:
        return str(response).strip() == str(answer).strip()
    try:
        return cast(response) == cast(answer)
    except ValueError:
        return False
