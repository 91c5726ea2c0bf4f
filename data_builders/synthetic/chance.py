"""The chance level of a record: the accuracy of a uniform random guess, per question type."""

from __future__ import annotations

import re
from functools import cache

from data_builders.synthetic.item import YES_NO
from data_builders.synthetic.samples import LETTERS
from data_builders.synthetic.scenes import COLOURS, MAX_SHAPES, SHAPES


@cache
def _arithmetic_answer_space(difficulty: int) -> int:
    if difficulty == 1:
        values = set(range(0, 61))
    elif difficulty == 2:
        values = set(range(20, 199)) | {a * b for a in range(2, 13) for b in range(2, 13)}
    else:
        values = {s - c for s in range(20, 121) for c in range(1, min(40, s) + 1)}
        values |= {a * b + c for a in range(2, 10) for b in range(2, 10) for c in range(1, 21)}
    return len(values)


def chance_accuracy(record: dict) -> float:
    """Expected accuracy of a uniform random guess for one record (qa/sft line or eval TSV row).

    Multiple choice: 1 / number of options. Short answer: 1 / size of the answer space of its
    question type (yes/no, colours, shapes, images, counts 1..6, arithmetic results); 0 if unknown.
    """
    choices = record.get("choices") or {
        letter: record[letter]
        for letter in LETTERS
        if str(record.get(letter) or "").strip() not in ("", "nan")
    }
    if choices:
        return 1.0 / len(choices)
    answer = str(record.get("answer", "")).strip().lower()
    skill = record.get("skill") or record.get("category")
    if answer in YES_NO:
        return 1 / len(YES_NO)
    if answer in COLOURS:
        return 1 / len(COLOURS)
    if answer in SHAPES:
        return 1 / len(SHAPES)
    if re.fullmatch(r"image-\d+", answer):
        question = str(record.get("question", ""))
        return 1 / max(2, question.count("<image>"))
    if skill == "count":
        return 1 / MAX_SHAPES
    if skill == "arithmetic":
        try:
            difficulty = int(record.get("difficulty") or 2)
        except ValueError:
            difficulty = 2
        return 1 / _arithmetic_answer_space(min(3, max(1, difficulty)))
    return 0.0
