"""The verdict on one sampled response: one implementation for the correctness pair builder
(`mpo build-pairs correctness`) and the rewards of online RL (`mpo rl`, :mod:`mpo.rl.rewards`).

A response is ``correct``, ``incorrect`` or ``format`` (no parsable final answer): the answer is
extracted by :func:`mpo.grading.answers.extract_answer` and checked by
:func:`mpo.grading.answers.is_correct` against the row's ground truth. Where the row carries a
reference chain of thought (``reasoning``), the response is also marked ``sound`` when it states every
step of it (:func:`mpo.grading.answers.states_steps`); with ``check_steps`` a right answer that is not
sound is ``unsound`` (right by luck, not for the right reason).

What a row contributes to the verdict (the answer, its kind, the options, the steps) is read in one
place too, :class:`Truth`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpo.grading.answers import extract_answer, infer_kind, is_correct, reasoning_steps, states_steps
from mpo.prompts import parse_choices

VERDICTS = ("correct", "incorrect", "format", "unsound")


@dataclass(frozen=True)
class Truth:
    """What a response of one question is checked against: the ground truth ``answer``, its ``kind``
    (:func:`mpo.grading.answers.infer_kind` unless the row names an ``answer_kind``), the options
    (``choices``) and the reference chain of thought's ``steps`` (``None``: the row has none)."""

    answer: str
    kind: str
    choices: dict[str, str] | None
    steps: list[str] | None

    @classmethod
    def of_row(cls, row: dict) -> Truth:
        """The truth of a QA row (``answer``, optional ``choices``, ``answer_kind``, ``reasoning``)."""
        gt, choices = str(row["answer"]), parse_choices(row.get("choices"))
        kind = row.get("answer_kind") or infer_kind(gt, choices)
        reasoning = row.get("reasoning")
        steps = reasoning_steps(reasoning) if isinstance(reasoning, str) and reasoning.strip() else None
        return cls(gt, kind, choices, steps)


def judge(
    text: str,
    gt: str,
    *,
    kind: str | None = None,
    choices: dict[str, str] | None = None,
    style: str = "auto",
    steps: list[str] | None = None,
    check_steps: bool = False,
) -> dict:
    """``{"text", "answer", "verdict"}`` for one response; with ``steps`` (a reference chain of thought's)
    also ``sound``, whether it states them all, and with ``check_steps`` a right answer that is not sound
    is ``unsound``."""
    answer = extract_answer(text, style)
    if answer is None:
        verdict = "format"
    else:
        verdict = "correct" if is_correct(answer, gt, kind, choices=choices) else "incorrect"
    judged = {"text": text, "answer": answer, "verdict": verdict}
    if steps is not None:
        judged["sound"] = states_steps(text, steps)
        if check_steps and verdict == "correct" and not judged["sound"]:
            judged["verdict"] = "unsound"
    return judged


def judge_against(text: str, truth: Truth, *, style: str = "auto", check_steps: bool = False) -> dict:
    """:func:`judge` of ``text`` against a row's :class:`Truth`."""
    return judge(
        text,
        truth.answer,
        kind=truth.kind,
        choices=truth.choices,
        style=style,
        steps=truth.steps,
        check_steps=check_steps,
    )
