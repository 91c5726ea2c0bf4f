"""Test-time scaling (``mpo eval --num-samples N``): sample N responses per item, pick one, and report
accuracy against N.

Two ways to pick (``--aggregate``):

* ``majority``: every response's final answer is extracted as the pair builders extract it
  (:func:`mpo.grading.answers.extract_answer` with ``--cot``; the whole response in direct mode) and votes
  for its *vote key*: for an item with options, the option letter VLMEvalKit's ``can_infer``
  reads from it (so "B", "(B)" and "B. blue" agree); otherwise the answer after
  :func:`mpo.grading.answers.normalize_text` (case, punctuation, articles, number words: "Three." and "3"
  agree). An unparsable response, or one whose key is empty, votes for nothing. The answer with
  the most votes wins; a tie goes to the tied answer whose first vote came earliest (sample order
  is the order the backend returned them, fixed by the seed). The item is then scored on the
  first response that voted for the winner, by the benchmark's own rule. When no response votes,
  the first response stands (it is unparsable, so the item counts as wrong and unparsable).
* ``best-of-n``: every response gets a score (:mod:`eval.reward` or :class:`eval.judge.JudgeScorer`)
  and the highest-scored one is scored by the benchmark's rule; equal scores go to the earliest.

Accuracy against N: for each k in 1, 2, 4, ... up to N (and N itself), the same rule over the first
k samples of every item, so one sampling run gives the whole curve. At k = 1 both rules keep the
first sample, which is what a plain sampled evaluation (``--num-samples 1``, same seed) scores. With
two samples a majority vote either agrees with the first or ties and keeps it: N = 2 equals N = 1.
"""

from __future__ import annotations

from collections.abc import Callable

from eval.benchmarks import EvalItem
from eval.matching import infer_option
from eval.scoring import score
from mpo.grading.answers import extract_answer, normalize_text

AGGREGATES = ("majority", "best-of-n")


def sample_counts(n: int) -> list[int]:
    """The N of the accuracy curve: the powers of two below ``n``, then ``n``."""
    counts, k = [], 1
    while k < n:
        counts.append(k)
        k *= 2
    return counts + [n]


def vote_key(prediction: str | None, choices: dict[str, str] | None) -> str | None:
    """What a prediction votes for (see the module docstring); None: no vote."""
    if prediction is None:
        return None
    if choices:
        letter = infer_option(prediction, choices)
        if letter in choices:
            return f"option {letter}"
    return normalize_text(prediction) or None


def majority(keys: list[str | None]) -> int:
    """Index of the response that carries the winning vote: the key with the most votes, ties to the
    key first voted for earliest; the first response of that key. No votes at all: 0."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, i)
    if not counts:
        return 0
    winner = min(counts, key=lambda key: (-counts[key], first[key]))
    return first[winner]


def best_of_n(scores: list[float]) -> int:
    """Index of the highest score; equal scores go to the earliest response."""
    return min(range(len(scores)), key=lambda i: (-scores[i], i))


def prediction_of(response: str, cot: bool) -> str | None:
    """The final answer of one response, extracted as :func:`eval.scoring.score` extracts it."""
    return extract_answer(response, "auto") if cot else response.strip()


def aggregate_record(
    item: EvalItem, responses: list[str], cot: bool, aggregate: str, scores: list[float] | None = None
) -> dict:
    """The prediction record of one item from its sampled ``responses`` (``scores`` for best-of-n).

    ``response`` and the scoring fields (:func:`eval.scoring.score`) are those of the response picked
    from all N; ``at_n`` maps each k of :func:`sample_counts` to ``{"pick", "correct"}`` over the
    first k responses; ``votes`` (majority) are the vote keys, ``scores`` (best-of-n) the scores.
    """
    if not responses:
        raise ValueError(f"{item.path}:{item.line}: the backend returned no response")
    if aggregate == "majority":
        keys = [vote_key(prediction_of(r, cot), item.choices) for r in responses]
        pick: Callable[[int], int] = lambda k: majority(keys[:k])  # noqa: E731
        extra = {"votes": keys}
    elif aggregate == "best-of-n":
        if scores is None or len(scores) != len(responses):
            raise ValueError(f"best-of-n needs one score per response, got {scores!r} for {len(responses)}")
        pick = lambda k: best_of_n(scores[:k])  # noqa: E731
        extra = {"scores": scores}
    else:
        raise ValueError(f"unknown aggregate {aggregate!r}: expected one of {', '.join(AGGREGATES)}")
    at_n = {}
    for k in sample_counts(len(responses)):
        i = pick(k)
        at_n[str(k)] = {"pick": i, "correct": score(item, responses[i], cot)["correct"]}
    chosen = pick(len(responses))
    return {
        "response": responses[chosen],
        **score(item, responses[chosen], cot),
        "pick": chosen,
        "responses": responses,
        **extra,
        "at_n": at_n,
    }


def records_at(records: list[dict], k: int) -> list[dict]:
    """The records as scored with the first ``k`` samples (``correct`` of ``at_n[k]``)."""
    return [{**r, "correct": r["at_n"][str(k)]["correct"]} for r in records]
