"""Correctness-based preference pairs (docs/design.md#preference-pairs): sample N chain-of-thought responses per
question, check each final answer against the ground truth, pair correct with incorrect.

Per question:

1. ask the question without its answer-format instruction, with the CoT instruction that ends in
   "Final answer: ..", and sample ``n`` responses (seeded per question);
2. extract the final answer (:func:`mpo.grading.answers.extract_answer`) and check it
   (:func:`mpo.grading.answers.is_correct`), both through :func:`mpo.grading.verdicts.judge`, the one
   verdict `mpo rl`'s rewards use too: each response is ``correct``, ``incorrect`` or ``format``
   (no parsable answer). A question with a reference chain of thought (its ``reasoning`` field) has
   each response marked ``sound`` when it states every step of it (:func:`states_steps`), and the
   report counts the right answers that do; with ``check_reasoning`` a right answer that does not is
   ``unsound``, right by luck and not for the right reason;
3. questions where no response is correct (``none_correct``) or every response is
   (``all_correct``) are counted, not paired;
4. otherwise every correct response is paired with every incorrect one (subset ``correctness``),
   with every unparsable one (subset ``format``) and with every unsound one (subset ``reasoning``).
   A candidate is dropped, with the first reason that applies: ``contains_answer`` (correctness
   pairs whose incorrect answer contains the correct one as a whole word, e.g. "3 or 4" against "4":
   the checker may be wrong there), the rule filters of :mod:`data_builders.filters` (``empty``,
   ``identical``, ``too_long``, ``repetition``), ``duplicate`` (same chosen and rejected text as an
   earlier candidate), ``quality`` (optional judge), and ``over_cap``: at most ``max_pairs`` per
   question and subset are kept, a seeded random choice.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from data_builders.filters import FilterConfig, QualityScorer, rule_drop
from data_builders.inputs import Question, bad_row_record, check_question
from data_builders.prompts import COT_INSTRUCTION, cot_question
from mpo.generation import GenerationBackend, GenerationRequest, SamplingParams, question_seed
from mpo.grading.verdicts import VERDICTS, Truth, judge, judge_against
from mpo.prompts import parse_choices

__all__ = [
    "VERDICTS",
    "CorrectnessBuilder",
    "apply_cap",
    "contains_answer",
    "judge",
    "plan_pairs",
    "question_status",
]

SUBSETS = ("correctness", "format", "reasoning")
REJECTED_SUBSET = {"incorrect": "correctness", "format": "format", "unsound": "reasoning"}
STATUSES = ("mixed", "all_correct", "none_correct", "bad_row")


def contains_answer(correct: str, incorrect: str) -> bool:
    """Whether the correct answer string occurs in the incorrect one as a whole word or phrase.

    Case-insensitive, except for one-character answers (the option letter "A" is not the article
    "a"). Whole words only: "4" is not inside "14".
    """
    correct, incorrect = " ".join(correct.split()), " ".join(incorrect.split())
    if not correct:
        return False
    flags = 0 if len(correct) == 1 else re.IGNORECASE
    return re.search(rf"(?<!\w){re.escape(correct)}(?!\w)", incorrect, flags) is not None


def question_status(judged: list[dict]) -> str:
    """``none_correct``, ``all_correct`` or ``mixed`` (at least one correct and one other)."""
    n_correct = sum(j["verdict"] == "correct" for j in judged)
    if n_correct == 0:
        return "none_correct"
    return "all_correct" if n_correct == len(judged) else "mixed"


def plan_pairs(judged: list[dict], filters: FilterConfig) -> list[dict]:
    """Every candidate pair ``{"subset", "c", "r", "drop"}`` (indices into ``judged``), with the
    drops that need no model: containment, rule filters, duplicates. Empty unless ``mixed``."""
    if question_status(judged) != "mixed":
        return []
    correct = [i for i, j in enumerate(judged) if j["verdict"] == "correct"]
    candidates = [
        {"subset": subset, "c": c, "r": r, "drop": None}
        for verdict, subset in REJECTED_SUBSET.items()
        for c in correct
        for r, j in enumerate(judged)
        if j["verdict"] == verdict
    ]
    seen: set[tuple[str, str]] = set()
    for cand in candidates:
        chosen, rejected = judged[cand["c"]], judged[cand["r"]]
        if cand["subset"] == "correctness" and contains_answer(chosen["answer"], rejected["answer"]):
            cand["drop"] = "contains_answer"
        elif reason := rule_drop(chosen["text"], rejected["text"], filters):
            cand["drop"] = reason
        elif (chosen["text"], rejected["text"]) in seen:
            cand["drop"] = "duplicate"
        else:
            seen.add((chosen["text"], rejected["text"]))
    return candidates


def apply_cap(candidates: list[dict], max_pairs: int, rng: random.Random) -> None:
    """Keep at most ``max_pairs`` surviving candidates per subset (a seeded random choice, kept in
    order); the others are dropped as ``over_cap``."""
    for subset in SUBSETS:
        alive = [c for c in candidates if c["subset"] == subset and c["drop"] is None]
        if len(alive) > max_pairs:
            keep = set(rng.sample(range(len(alive)), max_pairs))
            for k, cand in enumerate(alive):
                if k not in keep:
                    cand["drop"] = "over_cap"


@dataclass
class CorrectnessBuilder:
    """Turns a batch of questions into journal records (one per question)."""

    backend: GenerationBackend
    params: SamplingParams
    seed: int = 0
    max_pairs: int = 15
    filters: FilterConfig = field(default_factory=FilterConfig)
    scorer: QualityScorer | None = None
    answer_style: str = "auto"
    instruction: str = COT_INSTRUCTION
    check_reasoning: bool = False  # also check each question's reference chain of thought (``reasoning``)

    pipeline = "correctness"
    subsets = SUBSETS

    def request(self, q: Question) -> GenerationRequest:
        """The CoT prompt of ``q``, its options listed (as ``mpo eval`` lists them) when it has ``choices``."""
        question = cot_question(str(q.row["question"]), self.instruction, parse_choices(q.row.get("choices")))
        return q.request(question, q.subset.max_dynamic_patch, seed=question_seed(self.seed, q.key))

    def process(self, questions: list[Question]) -> list[dict]:
        records: dict[str, dict] = {}
        good: list[Question] = []
        for q in questions:
            need = ("question", "answer", "reasoning") if self.check_reasoning else ("question", "answer")
            reason = check_question(q, need)
            if reason is None:
                good.append(q)
            else:
                records[q.key] = bad_row_record(q, reason)
        requests = [self.request(q) for q in good]
        outputs = self.backend.generate(requests, self.params) if requests else []
        for q, req, texts in zip(good, requests, outputs, strict=True):
            truth = Truth.of_row(q.row)
            judged = [
                judge_against(t, truth, style=self.answer_style, check_steps=self.check_reasoning)
                for t in texts
            ]
            record = {
                "key": q.key,
                "index": q.index,
                "subset": q.subset.name,
                "line": q.line,
                "status": question_status(judged),
                "question": req.question,
                "answer": truth.answer,
                "answer_kind": truth.kind,
                "n_correct": sum(j["verdict"] == "correct" for j in judged),
                "responses": judged,
                "pairs": plan_pairs(judged, self.filters),
            }
            record.update(q.visual_fields())
            records[q.key] = record
        if self.scorer is not None:
            self._score(
                [(q, records[q.key]) for q in good], dict(zip((q.key for q in good), requests, strict=True))
            )
        for q in good:
            apply_cap(records[q.key]["pairs"], self.max_pairs, random.Random(question_seed(self.seed, q.key)))
        return [records[q.key] for q in questions]

    def _score(self, items: list[tuple[Question, dict]], requests: dict[str, GenerationRequest]) -> None:
        """Score the chosen response of every surviving candidate once; drop those below the bar."""
        wanted = sorted({(q.key, c["c"]) for q, rec in items for c in rec["pairs"] if c["drop"] is None})
        by_key = {q.key: rec for q, rec in items}
        scores = self.scorer.score([(requests[k], by_key[k]["responses"][i]["text"]) for k, i in wanted])
        for (key, i), score in zip(wanted, scores, strict=True):
            by_key[key]["responses"][i]["score"] = score
        for _, rec in items:
            for cand in rec["pairs"]:
                if cand["drop"] is None and not self.scorer.keeps(rec["responses"][cand["c"]]["score"]):
                    cand["drop"] = "quality"
