"""Answer extraction and checking, shared by the preference-data builders and evaluation.

Two steps:

* :func:`extract_answer` pulls the final answer out of a model response (the text after the last
  ``Final answer:`` or the content of the last ``\\boxed{...}``). It returns ``None`` when the
  response has no parsable answer; the data builders count those as "format" failures, so it never
  guesses.
* :func:`is_correct` compares an extracted answer with the ground truth under one of six kinds:
  ``choice``, ``yesno``, ``number``, ``relaxed``, ``anls`` and ``text`` (see :data:`KINDS`).
  :func:`infer_kind` picks the kind from the ground truth when none is given.

Where the data hold a reference chain of thought, :func:`states_steps` checks that a response states
each of its steps (:func:`reasoning_steps`): a right final answer without them is right by luck.

Every rule errs towards "incorrect" when the prediction is ambiguous (two different option letters,
two numbers, both "yes" and "no"): a wrong "correct" label poisons a preference pair, while a
missed one only loses it.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ANSWER_STYLES",
    "KINDS",
    "anls_score",
    "extract_answer",
    "infer_kind",
    "is_correct",
    "levenshtein",
    "normalize_text",
]

ANSWER_STYLES = ("final_answer", "boxed", "auto")
KINDS = ("choice", "yesno", "number", "relaxed", "anls", "text")

# Two numbers are "equal" for kind "number" when they agree to this relative tolerance
# (or this absolute one, for values near zero).
NUMBER_REL_TOL = 1e-6
NUMBER_ABS_TOL = 1e-9
# ANLS scores below this are zeroed (the DocVQA threshold tau).
ANLS_ZERO_BELOW = 0.5
# Slack added to the relaxed-accuracy bound so that an error of exactly ``rel_tol`` passes
# despite float rounding (e.g. 1.155 vs 1.1 at 5 %).
_RELAXED_SLACK = 1e-9

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

# "Final answer:", any case, ASCII or full-width colon, optionally bold before the colon
# ("**Final Answer**: B"); bold around the whole label is stripped from the answer afterwards.
_FINAL_ANSWER = re.compile(r"final\s+answer\s*(?:\*\*|__)?\s*[:：]", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")
# A whole boxed answer wrapped in a text command: \boxed{\text{B}} -> B.
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf)\s*\{([^{}]*)\}")
# Characters that enclose an answer only in matching pairs ("B", $\frac{1}{2}$, 'cat').
_PAIRED_WRAPPERS = {'"': '"', "'": "'", "“": "”", "‘": "’", "$": "$", "「": "」"}
# Markdown emphasis / code marks, stripped from either end on their own ("** B" -> "B").
_MARKDOWN_MARKS = "*`"


def _clean(text: str) -> str:
    """Strip surrounding whitespace, markdown marks, paired quotes or ``$``, and trailing periods.

    Repeats until nothing changes, so ``**"B".**`` becomes ``B``. A ``$`` is only removed when it
    also closes the answer, so a currency sign (``$5``) survives.
    """
    previous = None
    while text != previous:
        previous = text
        text = text.strip().strip(_MARKDOWN_MARKS).strip()
        text = text.rstrip(".。").rstrip()
        if len(text) >= 2 and _PAIRED_WRAPPERS.get(text[0]) == text[-1]:
            text = text[1:-1]
    return text


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced (``\\boxed{\\frac{1}{2}}``).

    ``None`` when there is no ``\\boxed{`` or the last one is never closed (a truncated response:
    an earlier box would be an intermediate result, not the answer). A box holding only
    ``\\text{...}`` yields the text inside.
    """
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    depth, begin = 1, starts[-1].end()
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            content = text[begin:i].strip()
            unwrapped = _TEXT_COMMAND.fullmatch(content)
            content = _clean(unwrapped.group(1) if unwrapped else content)
            return content or None
    return None


def _last_final_answer(text: str) -> str | None:
    """Text after the last ``Final answer:`` label, to the end of its line, cleaned by :func:`_clean`.

    When the label ends its line ("**Final answer:**\\n\\nB"), the first non-blank line after it is
    the answer. A ``\\boxed{}`` inside the answer line yields the boxed content.
    """
    labels = list(_FINAL_ANSWER.finditer(text))
    if not labels:
        return None
    for line in text[labels[-1].end() :].splitlines():
        answer = _clean(line)
        if answer:
            return _last_boxed(answer) or answer
    return None


def extract_answer(text: str, style: str = "auto") -> str | None:
    """The final answer in a model response, or ``None`` when there is none to parse.

    ``style`` is ``"final_answer"`` (last ``Final answer:`` line), ``"boxed"`` (last
    ``\\boxed{...}``) or ``"auto"`` (the former, else the latter).
    """
    if style == "final_answer":
        return _last_final_answer(text)
    if style == "boxed":
        return _last_boxed(text)
    if style == "auto":
        return _last_final_answer(text) or _last_boxed(text)
    raise ValueError(f"unknown answer style {style!r}; expected one of {', '.join(ANSWER_STYLES)}")


# ---------------------------------------------------------------------------------------------
# Text normalisation and ANLS
# ---------------------------------------------------------------------------------------------

_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NON_DECIMAL_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_APOSTROPHES = re.compile(r"['’]")
_PUNCTUATION = re.compile(r"[^\w\s.]|_")


def normalize_text(s: str) -> str:
    """VQA-style normalisation for free-text comparison.

    Lowercase; drop thousands commas (``1,000`` -> ``1000``) and apostrophes (``don't`` ->
    ``dont``); every other punctuation mark becomes a space, except a period between digits
    (``3.5`` stays); drop the articles a/an/the; number words zero..twenty become digits
    (``three`` -> ``3``); collapse whitespace.
    """
    s = _THOUSANDS_COMMA.sub("", s.lower())
    s = _APOSTROPHES.sub("", s)
    s = _PUNCTUATION.sub(" ", _NON_DECIMAL_PERIOD.sub(" ", s))
    return " ".join(_NUMBER_WORDS.get(token, token) for token in s.split() if token not in _ARTICLES)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions; each costs 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls_score(pred: str, gt: str) -> float:
    """ANLS of one prediction against one ground truth, in [0, 1].

    Both strings are lowercased with whitespace collapsed (the DocVQA convention); the score is
    ``1 - levenshtein / max(len)``, set to 0 when it falls below 0.5. Note a score of exactly 0.5 is
    kept (DocVQA zeroes it); two empty strings score 1.
    """
    a, b = " ".join(pred.lower().split()), " ".join(gt.lower().split())
    if not a and not b:
        return 1.0
    score = 1.0 - levenshtein(a, b) / max(len(a), len(b))
    return score if score >= ANLS_ZERO_BELOW else 0.0


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_SIGNED = rf"[-+−]?\s*(?:{_DIGITS})"
# One number: optional sign; a LaTeX fraction (\frac, \dfrac, \tfrac), a plain fraction "a/b" or a
# decimal with optional thousands commas; optional percent sign. It may not start inside a word or
# right after a period, hyphen or slash ("COVID-19", "v2", "2.5.1" hold no number of their own).
_NUMBER = re.compile(
    rf"""(?<![\w.\-−/])
    (?P<sign>[-+−]\s*)?
    (?:
        \\[dt]?frac\s*\{{\s*(?P<frac_num>{_SIGNED})\s*\}}\s*\{{\s*(?P<frac_den>{_SIGNED})\s*\}}
      | (?P<num>{_DIGITS})(?:\s*/\s*(?P<den>{_DIGITS}))?
    )
    (?P<percent>\s*(?:\\?%|percent\b))?""",
    re.VERBOSE,
)
# A number word standing alone; hyphenated ones ("twenty-one") are left as words, not misread as 20.
_NUMBER_WORD = re.compile(r"(?<![\w-])(?:" + "|".join(_NUMBER_WORDS) + r")(?![\w-])", re.IGNORECASE)
# LaTeX spacing and grouping inside numbers: 1\,000, 1{,}000, 3\ cm.
_LATEX_SPACING = re.compile(r"\\[,!;: ]|\{,\}")


@dataclass(frozen=True)
class _Number:
    """A parsed number; ``percent`` records a trailing ``%`` (the value itself is not divided)."""

    value: float
    percent: bool


def _to_float(digits: str) -> float:
    return float(re.sub(r"[\s,]", "", digits).replace("−", "-"))


def _scan_numbers(s: str) -> tuple[str, list[tuple[_Number, re.Match[str]]]]:
    """Every number in ``s`` after number words become digits and LaTeX spacing is removed.

    Returns the rewritten string (the matches index into it) and the numbers with their matches.
    A fraction with a zero denominator is no number.
    """
    s = _LATEX_SPACING.sub("", _NUMBER_WORD.sub(lambda m: _NUMBER_WORDS[m.group(0).lower()], s))
    found = []
    for m in _NUMBER.finditer(s):
        numerator, denominator = m.group("frac_num", "frac_den") if m["frac_num"] else m.group("num", "den")
        value = _to_float(numerator)
        if denominator is not None:
            if _to_float(denominator) == 0:
                continue
            value /= _to_float(denominator)
        if m["sign"] and m["sign"].strip() in "-−":
            value = -value
        found.append((_Number(value, bool(m["percent"])), m))
    return s, found


def _parse_number(s: str) -> _Number | None:
    """The one number in ``s``, units and words around it allowed ("3 apples", "about $1,000").

    When ``s`` holds an ``=`` or ``≈``, only the part after the last one counts ("x = 1/2"). Two or
    more numbers there make it ambiguous: ``None``, as for no number at all.
    """
    tail = re.split(r"[=≈]", s)[-1]
    numbers = _scan_numbers(tail)[1]
    return numbers[0][0] if len(numbers) == 1 else None


def _is_pure_number(s: str) -> bool:
    """Whether ``s`` is one number and nothing else but ``$``, whitespace and a final period."""
    rewritten, numbers = _scan_numbers(s)
    if len(numbers) != 1:
        return False
    match = numbers[0][1]
    rest = rewritten[: match.start()] + rewritten[match.end() :]
    return not rest.strip().strip("$").rstrip(".").strip()


def _numbers_match(pred: _Number, gt: _Number, close: Callable[[float, float], bool]) -> bool:
    """Percent-aware comparison of two numbers under ``close(pred_value, gt_value)``.

    When exactly one side carries ``%``, its value matches either as written or divided by 100:
    "50%" equals both "50" and "0.5". When both or neither do, values compare as written, so
    "50%" never equals "0.5%" and "50" never equals "0.5".
    """
    if pred.percent == gt.percent:
        return close(pred.value, gt.value)
    if pred.percent:
        return close(pred.value, gt.value) or close(pred.value / 100, gt.value)
    return close(pred.value, gt.value) or close(pred.value, gt.value / 100)


def _exactly_close(pred: float, gt: float) -> bool:
    return math.isclose(pred, gt, rel_tol=NUMBER_REL_TOL, abs_tol=NUMBER_ABS_TOL)


def _relaxed_close(rel_tol: float) -> Callable[[float, float], bool]:
    """ChartQA relaxed accuracy: ``|pred - gt| / |gt| <= rel_tol`` (relative to the ground truth)."""

    def close(pred: float, gt: float) -> bool:
        if gt == 0:
            return abs(pred) <= NUMBER_ABS_TOL
        return abs(pred - gt) / abs(gt) <= rel_tol + _RELAXED_SLACK

    return close


# ---------------------------------------------------------------------------------------------
# Multiple choice and yes/no
# ---------------------------------------------------------------------------------------------

# "B", "(B)", "B.", "B)", "[B]", "b"
_BARE_LETTER = re.compile(r"[(\[]?([A-Za-z])[)\].:]?")
# "B. cat", "(B) cat", "B) cat", "B: cat" (punctuation required: "A cat" is an article)
_LEADING_LABEL = re.compile(r"[(\[]?([A-Z])[)\].:]\s")
# "The answer is (C)", "option C", "Answer: B", "the correct choice is [D]" (capital letter only)
_LABEL_PHRASE = re.compile(r"(?i:answer|option|choice)\s*(?:(?i:is)\s*|:\s*)?[(\[]?([A-Z])\b")
# "(C)" anywhere in the text
_PARENTHESISED = re.compile(r"\(([A-Z])\)")


def _choice_letter(text: str, choices: dict[str, str] | None) -> str | None:
    """The option letter an answer names, or ``None`` when it names none or several.

    Tried in order, first hit wins: the whole answer is a letter ("B", "(B)", "b."); it starts with
    a punctuated label ("B. cat"); a phrase names one letter ("The answer is (C)", "option C");
    exactly one distinct "(X)" appears; with ``choices``, the answer's text equals exactly one
    option's text under :func:`normalize_text`. Letters outside ``choices`` (when given) don't count.
    """
    valid = {key.strip().upper() for key in choices} if choices else set(string.ascii_uppercase)
    s = _clean(text)
    bare = _BARE_LETTER.fullmatch(s)
    if bare:
        letter = bare.group(1).upper()
        return letter if letter in valid else None
    leading = _LEADING_LABEL.match(s)
    if leading and leading.group(1) in valid:
        return leading.group(1)
    for pattern in (_LABEL_PHRASE, _PARENTHESISED):
        letters = {letter for letter in pattern.findall(s) if letter in valid}
        if letters:
            return letters.pop() if len(letters) == 1 else None
    if choices:
        wanted = normalize_text(s)
        matching = [
            key.strip().upper() for key, option in choices.items() if normalize_text(option) == wanted
        ]
        if len(matching) == 1:
            return matching[0]
    return None


def _yes_no(text: str) -> str | None:
    """``yes`` or ``no`` when the answer starts with one ("Yes, it is") or holds only one of the two."""
    tokens = normalize_text(text).split()
    if tokens and tokens[0] in ("yes", "no"):
        return tokens[0]
    found = {token for token in tokens if token in ("yes", "no")}
    return found.pop() if len(found) == 1 else None


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------


def infer_kind(gt: str, choices: dict[str, str] | None = None) -> str:
    """The kind to check a ground truth by, when the data doesn't say.

    ``choices`` given, or the ground truth a single capital letter ("B", "(B)") -> ``choice``;
    "yes"/"no" (any case, punctuation ignored) -> ``yesno``; exactly one number, fraction or
    percentage and nothing else but ``$`` ("1,000", "1/2", "50%", "\\frac{1}{2}") -> ``number``;
    anything else -> ``text``.
    """
    if choices or re.fullmatch(r"\(?[A-Z]\)?\.?", gt.strip()):
        return "choice"
    if normalize_text(gt) in ("yes", "no"):
        return "yesno"
    if _is_pure_number(gt):
        return "number"
    return "text"


def _text_equal(pred: str, gt: str) -> bool:
    return normalize_text(pred) == normalize_text(gt)


def _check_number(pred: str, gt: str, close: Callable[[float, float], bool]) -> bool:
    """Numeric comparison when both sides parse as one number, else :func:`normalize_text` equality."""
    pred_number, gt_number = _parse_number(pred), _parse_number(gt)
    if pred_number is None or gt_number is None:
        return _text_equal(pred, gt)
    return _numbers_match(pred_number, gt_number, close)


def is_correct(
    pred: str | None,
    gt: str,
    kind: str | None = None,
    *,
    choices: dict[str, str] | None = None,
    anls_threshold: float = 0.5,
    rel_tol: float = 0.05,
) -> bool:
    """Whether an extracted answer matches the ground truth. A ``None`` prediction is never correct.

    ``kind`` (default: :func:`infer_kind`) selects the rule:

    * ``choice``: both sides name the same option letter (:func:`_choice_letter`; ``choices`` maps
      letters to option texts, so the option's text counts as its letter).
    * ``yesno``: both sides say the same of yes/no (:func:`_yes_no`).
    * ``number``: both parse as one number (units, thousands commas, fractions, LaTeX
      ``\\frac``/``\\dfrac``, negatives, percent) equal to a relative 1e-6; "50%" equals "50" and
      "0.5" (see :func:`_numbers_match`). Non-numeric sides fall back to ``text``.
    * ``relaxed``: as ``number`` but within ``rel_tol`` of the ground truth (ChartQA relaxed
      accuracy, 5 %).
    * ``anls``: :func:`anls_score` at least ``anls_threshold``.
    * ``text``: equal after :func:`normalize_text`.
    """
    kind = kind or infer_kind(gt, choices)
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
    if pred is None:
        return False
    if kind == "choice":
        gt_letter = _choice_letter(gt, choices)
        return gt_letter is not None and _choice_letter(pred, choices) == gt_letter
    if kind == "yesno":
        gt_answer = _yes_no(gt)
        return gt_answer is not None and _yes_no(pred) == gt_answer
    if kind == "number":
        return _check_number(pred, gt, _exactly_close)
    if kind == "relaxed":
        return _check_number(pred, gt, _relaxed_close(rel_tol))
    if kind == "anls":
        return anls_score(pred, gt) >= anls_threshold
    return _text_equal(pred, gt)


def reasoning_steps(reasoning: str) -> list[str]:
    """The steps of a reference chain of thought: its sentences, whitespace collapsed."""
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(reasoning.split())) if s]


def states_steps(text: str, steps: list[str]) -> bool:
    """Whether ``text`` states every step, each as written (case and whitespace aside)."""
    said = " ".join(text.split()).casefold()
    return all(step.casefold() in said for step in steps)
