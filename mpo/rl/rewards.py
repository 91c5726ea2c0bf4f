"""Rewards of `mpo rl`, from the verdict of `mpo build-pairs correctness` (:mod:`mpo.grading.verdicts`).

Each is a reward function as TRL's GRPOTrainer (1.16) calls it, ``f(prompts, completions, **columns)`` with
one list entry per completion, returning one float per completion (``None``: this reward does not apply to
that row). TRL logs each under its name, ``rewards/<name>/mean`` and ``/std``, and the weighted sum as
``reward`` (``reward_weights``). All three judge a completion with :func:`mpo.grading.verdicts.judge_against`
against :meth:`~mpo.grading.verdicts.Truth.of_row` of the row, the pair builder's own call:

- ``correctness``: 1 when the verdict is ``correct`` (the extracted final answer matches the ground truth;
  with ``check_reasoning`` it must state the row's reference reasoning too), else 0. It also logs the
  accuracy of each group of rows (``accuracy/<group>``, the data's ``accuracy_group`` field);
- ``format``: 1 when a final answer can be extracted ("Final answer: ..", or ``\\boxed{}`` as
  ``answer_style`` says), else 0;
- ``reasoning``: 1 when the response states every step of the row's reference chain of thought (its
  ``reasoning``), else 0; ``None`` for a row without one.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable

from mpo.grading.verdicts import Truth, judge_against


def _verdicts(completions: list, truth: list[str], style: str, check_steps: bool) -> list[dict]:
    """The pair builder's verdict on each completion (a string, or TRL's conversational message list)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [
        judge_against(text.strip(), Truth.of_row(json.loads(t)), style=style, check_steps=check_steps)
        for text, t in zip(texts, truth, strict=True)
    ]


def correctness(
    prompts: list,
    completions: list,
    truth: list[str],
    *,
    style: str = "auto",
    check_steps: bool = False,
    group: list[str] | None = None,
    log_metric: Callable[[str, float], None] | None = None,
    **_,
) -> list[float]:
    """1.0 for each completion whose verdict is ``correct``, else 0.0; logs ``accuracy/<group>``."""
    scores = [float(j["verdict"] == "correct") for j in _verdicts(completions, truth, style, check_steps)]
    if group is not None and log_metric is not None:
        by_group: dict[str, list[float]] = defaultdict(list)
        for name, score in zip(group, scores, strict=True):
            by_group[name].append(score)
        for name, values in sorted(by_group.items()):
            log_metric(f"accuracy/{name}", sum(values) / len(values))
    return scores


def format(prompts: list, completions: list, truth: list[str], *, style: str = "auto", **_) -> list[float]:  # noqa: A001
    """1.0 for each completion with an extractable final answer (verdict not ``format``), else 0.0."""
    return [float(j["verdict"] != "format") for j in _verdicts(completions, truth, style, False)]


def reasoning(
    prompts: list, completions: list, truth: list[str], *, style: str = "auto", **_
) -> list[float | None]:
    """1.0 when the completion states every step of the row's reference reasoning, 0.0 when not, ``None``
    for a row without reference reasoning."""
    return [float(j["sound"]) if "sound" in j else None for j in _verdicts(completions, truth, style, False)]


REWARD_FUNCS: dict[str, Callable] = {"correctness": correctness, "format": format, "reasoning": reasoning}


def reward_funcs(names: list[str], *, style: str = "auto", check_reasoning: bool = False) -> list[Callable]:
    """The reward functions ``names`` (:data:`REWARD_FUNCS`), bound to the answer style and reasoning check;
    ``functools.partial`` keeps each one's name, which TRL logs, and keeps them picklable."""
    out = []
    for name in names:
        options = {"style": style}
        if name == "correctness":
            options["check_steps"] = check_reasoning
        out.append(functools.partial(REWARD_FUNCS[name], **options))
    return out
