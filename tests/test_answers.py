"""Answer extraction and checking (mpo/grading/answers.py): a table of real-looking cases per kind."""

from __future__ import annotations

from functools import cache

import pytest

from mpo.grading.answers import anls_score, extract_answer, infer_kind, is_correct, normalize_text

ANIMALS = {"A": "dog", "B": "cat", "C": "bird", "D": "fish"}

# --------------------------------------------------------------------------------------------
# extract_answer
# --------------------------------------------------------------------------------------------

EXTRACT_CASES = [
    # (response, style, expected)
    ("The image shows a cat.\nFinal answer: B", "auto", "B"),
    ("Reasoning...\n**Final answer:** B", "auto", "B"),
    ("**Final Answer**: 42.", "auto", "42"),
    ("Final answer: **B**", "auto", "B"),
    ('Final Answer：  "cat".', "auto", "cat"),  # full-width colon, quotes, trailing period
    ("FINAL ANSWER: Yes.", "auto", "Yes"),
    ("Final answer: 3\nWait, I miscounted.\nFinal answer: 4", "auto", "4"),  # last one wins
    ("Final answer: 12 apples\nThat is all.", "auto", "12 apples"),  # up to end of line only
    ("**Final answer:**\n\nC", "auto", "C"),  # label alone on its line: next non-blank line
    ("Final answer: $\\frac{3}{4}$", "auto", "\\frac{3}{4}"),
    ("Final answer: $\\boxed{7}$", "auto", "7"),
    ("so x = 1/2, i.e. \\boxed{\\frac{1}{2}}", "auto", "\\frac{1}{2}"),  # nested braces
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "boxed", "\\frac{\\sqrt{3}}{2}"),  # two levels of nesting
    ("first \\boxed{1}, then \\boxed{2}", "boxed", "2"),  # last box wins
    ("\\boxed{\\text{B}}", "auto", "B"),
    ("Final answer: 5 and \\boxed{6}", "boxed", "6"),
    ("Final answer: the area is \\boxed{6} cm^2", "final_answer", "6"),  # box inside the line
    ("\\boxed{3}\nFinal answer: 4", "auto", "4"),  # auto prefers the Final answer line
    ("The answer is \\boxed{12", "auto", None),  # truncated box: no guess
    ("\\boxed{1} and finally \\boxed{2", "boxed", None),  # last box unclosed: not the earlier one
    ("\\boxed{ }", "boxed", None),
    ("I think the answer is probably B.", "auto", None),  # unparsable -> None
    ("Final answer:", "auto", None),
    ("Final answer: **", "final_answer", None),
    ("The answer is \\boxed{9}", "final_answer", None),
    ("Final answer: 9", "boxed", None),
    ("", "auto", None),
]


@pytest.mark.parametrize(("response", "style", "expected"), EXTRACT_CASES)
def test_extract_answer(response: str, style: str, expected: str | None) -> None:
    assert extract_answer(response, style) == expected


def test_extract_answer_rejects_unknown_style() -> None:
    with pytest.raises(ValueError, match="unknown answer style"):
        extract_answer("Final answer: B", "last_line")


# --------------------------------------------------------------------------------------------
# is_correct
# --------------------------------------------------------------------------------------------

CORRECTNESS_CASES = [
    # (pred, gt, kind, options, expected); kind None means "inferred"; options are keyword arguments
    # --- choice
    ("B", "B", None, {}, True),
    ("(B)", "B", None, {}, True),
    ("B.", "B", None, {}, True),
    ("b", "B", None, {}, True),
    ("**D**", "D", None, {}, True),
    ("B. cat", "B", None, {}, True),
    ("(B) cat", "B", None, {}, True),
    ("The answer is (C)", "C", None, {}, True),
    ("The answer is (C)", "B", None, {}, False),
    ("The correct option is C.", "C", None, {}, True),
    ("option C", "C", "choice", {}, True),
    ("C", "(C)", None, {}, True),
    ("C", "B", None, {}, False),
    ("cat", "B", None, {"choices": ANIMALS}, True),  # option text instead of the letter
    ("Cat.", "B", None, {"choices": ANIMALS}, True),
    ("A cat", "B", None, {"choices": ANIMALS}, True),  # "A" here is an article, not option A
    ("dog", "B", None, {"choices": ANIMALS}, False),
    ("cat", "B", None, {}, False),  # no choices given: the text can't be mapped
    ("A. dog", "B", None, {"choices": ANIMALS}, False),
    ("E", "E", None, {"choices": ANIMALS}, False),  # not one of the options
    ("The answer is B, not option A", "B", None, {}, False),  # names two letters: ambiguous
    ("I'd go with the second one", "B", None, {"choices": ANIMALS}, False),
    # --- yes / no
    ("Yes.", "yes", None, {}, True),
    ("yes, it is", "Yes", None, {}, True),
    ("NO", "no", None, {}, True),
    ("No, there is only one cat.", "No", None, {}, True),
    ("There is no dog in the picture.", "no", None, {}, True),
    ("No", "yes", None, {}, False),
    ("Yes", "No.", None, {}, False),
    ("It is hard to tell.", "yes", None, {}, False),
    # --- number
    ("1/2", "0.5", None, {}, True),
    ("0.5", "1/2", None, {}, True),
    ("\\frac{1}{2}", "0.5", None, {}, True),
    ("\\dfrac{1}{2}", "1/2", None, {}, True),
    ("-\\frac{3}{4}", "-0.75", None, {}, True),
    ("\\frac{3}{4}", "-0.75", None, {}, False),
    ("3 apples", "3", None, {}, True),
    ("4 apples", "3", None, {}, False),
    ("There are three apples", "3", None, {}, True),
    ("1,000", "1000", None, {}, True),
    ("1000", "1,000", None, {}, True),
    ("1,000", "100", None, {}, False),
    ("$1,234.56", "1234.56", None, {}, True),
    ("50%", "50", None, {}, True),  # percent: the value as written ...
    ("50%", "0.5", None, {}, True),  # ... or divided by 100
    ("0.5", "50%", None, {}, True),
    ("50", "0.5", None, {}, False),  # no percent sign on either side: no scaling
    ("50%", "0.5%", None, {}, False),  # percent on both sides: no scaling
    ("12\\%", "12%", None, {}, True),
    ("−2.5", "-2.5", None, {}, True),  # unicode minus
    ("3", "-3", None, {}, False),
    ("x = 1/2", "0.5", None, {}, True),  # after the last "="
    ("between 3 and 5", "3", None, {}, False),  # two numbers: ambiguous
    ("0.3333", "1/3", None, {}, False),  # off by 1e-4 relative: more than 1e-6
    ("0.33333333", "1/3", None, {}, True),
    ("42.", "42", None, {}, True),
    ("COVID-19", "19", "number", {}, False),  # "-19" inside a word is no number
    # --- relaxed (ChartQA, 5 % of the ground truth)
    ("104", "100", "relaxed", {}, True),  # 4 % off
    ("106", "100", "relaxed", {}, False),  # 6 % off
    ("96", "100", "relaxed", {}, True),
    ("94", "100", "relaxed", {}, False),
    ("0.26", "0.25", "relaxed", {}, True),  # 4 % off
    ("1.155", "1.1", "relaxed", {}, True),  # exactly 5 % off (float rounding must not fail it)
    ("108", "100", "relaxed", {"rel_tol": 0.1}, True),
    ("12.9%", "12.5", "relaxed", {}, True),  # 3.2 % off, percent sign ignored as for "number"
    ("0", "0", "relaxed", {}, True),
    ("0.01", "0", "relaxed", {}, False),  # zero ground truth: only zero passes
    ("Apple", "apple", "relaxed", {}, True),  # non-numeric: normalised exact match
    ("Banana", "apple", "relaxed", {}, False),
    # --- ANLS (1 - levenshtein / max length, zeroed below 0.5)
    ("hallo", "hello", "anls", {}, True),  # 1 - 1/5 = 0.8
    ("abcxyz", "abcdef", "anls", {}, True),  # 1 - 3/6 = 0.5: exactly at the threshold, kept
    ("abcwxyz", "abcdefg", "anls", {}, False),  # 1 - 4/7 = 0.43 < 0.5 -> 0
    ("sitting", "kitten", "anls", {}, True),  # 1 - 3/7 = 0.57
    ("January 5, 2020", "Jan 5 2020", "anls", {}, True),  # insert "uary" and "," -> 1 - 5/15 = 0.67
    ("Main St.", "Main Street", "anls", {}, True),  # "." -> "r", insert "eet" -> 1 - 4/11 = 0.64
    ("invoice", "receipt", "anls", {}, False),  # 6 substitutions -> 1 - 6/7 = 0.14 -> 0
    ("TOTAL  Amount", "total amount", "anls", {}, True),  # case and whitespace ignored -> 1.0
    ("1,234.56", "$1,234.56", "anls", {}, True),  # 1 - 1/9 = 0.89
    ("1,234.56", "$1,234.56", "anls", {"anls_threshold": 0.9}, False),  # 0.89 < 0.9
    # --- free text
    ("The Eiffel Tower.", "eiffel tower", None, {}, True),
    ("Eiffel Tower", "Louvre", None, {}, False),
    ("New-York", "new york", None, {}, True),
    ("don't know", "dont know", None, {}, True),
    ("a red car", "red car", None, {}, True),
    ("red car", "blue car", None, {}, False),
    ("three", "3", "text", {}, True),  # number words become digits
    ("3 apples", "three apples", None, {}, True),
    ("4 apples", "three apples", None, {}, False),
    # --- no prediction
    (None, "B", None, {}, False),
    (None, "yes", None, {}, False),
    (None, "0.5", "relaxed", {}, False),
    (None, "", "anls", {}, False),
    (None, "paris", None, {}, False),
]


@pytest.mark.parametrize(("pred", "gt", "kind", "options", "expected"), CORRECTNESS_CASES)
def test_is_correct(pred: str | None, gt: str, kind: str | None, options: dict, expected: bool) -> None:
    assert is_correct(pred, gt, kind, **options) is expected


def test_is_correct_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown answer kind"):
        is_correct("B", "B", "letter")


def test_extracted_answers_check_end_to_end() -> None:
    responses = {
        "Counting the bars...\nFinal answer: 1,000.": True,
        "The boxes add up to \\boxed{1000}": True,
        "Final answer: 1000\nOn reflection, no.\nFinal answer: 900": False,
        "I cannot tell.": False,
    }
    for response, expected in responses.items():
        assert is_correct(extract_answer(response), "1000") is expected, response


# --------------------------------------------------------------------------------------------
# infer_kind and normalize_text
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gt", "choices", "expected"),
    [
        ("B", None, "choice"),
        ("(C)", None, "choice"),
        ("cat", ANIMALS, "choice"),
        ("Yes", None, "yesno"),
        ("no.", None, "yesno"),
        ("1,000", None, "number"),
        ("-3.5", None, "number"),
        ("1/2", None, "number"),
        ("\\frac{1}{2}", None, "number"),
        ("50%", None, "number"),
        ("$5", None, "number"),
        ("3 apples", None, "text"),  # a number with a unit is text: the unit must match too
        ("Route 66", None, "text"),
        ("a", None, "text"),  # a lowercase letter is more likely the article
        ("Paris", None, "text"),
    ],
)
def test_infer_kind(gt: str, choices: dict[str, str] | None, expected: str) -> None:
    assert infer_kind(gt, choices) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Eiffel  Tower!", "eiffel tower"),
        ("Three apples, an orange", "3 apples orange"),
        ("1,000 people", "1000 people"),
        ("3.5 km.", "3.5 km"),
        ("don't", "dont"),
        ("well-known_fact", "well known fact"),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


# --------------------------------------------------------------------------------------------
# anls_score against an independent edit distance
# --------------------------------------------------------------------------------------------


def _reference_distance(a: str, b: str) -> int:
    """Levenshtein distance by the textbook recursion, memoised on suffix positions."""

    @cache
    def dist(i: int, j: int) -> int:
        if i == len(a):
            return len(b) - j
        if j == len(b):
            return len(a) - i
        if a[i] == b[j]:
            return dist(i + 1, j + 1)
        return 1 + min(dist(i + 1, j), dist(i, j + 1), dist(i + 1, j + 1))

    return dist(0, 0)


def _reference_anls(pred: str, gt: str) -> float:
    a, b = " ".join(pred.lower().split()), " ".join(gt.lower().split())
    if not a and not b:
        return 1.0
    score = 1 - _reference_distance(a, b) / max(len(a), len(b))
    return score if score >= 0.5 else 0.0


ANLS_PAIRS = [
    ("hallo", "hello"),
    ("abcxyz", "abcdef"),
    ("abcwxyz", "abcdefg"),
    ("sitting", "kitten"),
    ("kitten", "sitting"),
    ("January 5, 2020", "Jan 5 2020"),
    ("Main St.", "Main Street"),
    ("invoice", "receipt"),
    ("TOTAL  Amount", "total amount"),
    ("", ""),
    ("", "abc"),
    ("abc", ""),
    ("flaw", "lawn"),
    ("intention", "execution"),
    ("Sunday", "Saturday"),
    ("ACME Corp.", "Acme Corporation"),
    ("$12.50", "12.5"),
]


@pytest.mark.parametrize(("pred", "gt"), ANLS_PAIRS)
def test_anls_score_matches_reference(pred: str, gt: str) -> None:
    assert anls_score(pred, gt) == pytest.approx(_reference_anls(pred, gt))


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ("hallo", "hello", 0.8),
        ("abcxyz", "abcdef", 0.5),
        ("abcwxyz", "abcdefg", 0.0),
        ("sitting", "kitten", 4 / 7),
        ("1,234.56", "$1,234.56", 8 / 9),
        ("Sunday", "Saturday", 5 / 8),  # insert "a", "t"; "n" -> "r": 3 edits over 8
        ("", "", 1.0),
    ],
)
def test_anls_score_values(pred: str, gt: str, expected: float) -> None:
    assert anls_score(pred, gt) == pytest.approx(expected)
