"""Dropout Next-Token Prediction pairs (docs/design.md#preference-pairs), for data without ground truth.

Per question: ``chosen`` is the model's own full answer (``--chosen-from model``, sampled with the
image) or the answer the data gives (``--chosen-from data``: the row's ``chosen``, else the first
assistant turn of ``conversations``, else ``answer``). It is cut after its first ``keep_ratio`` of
words, and the model continues that prefix WITHOUT the image (the question's ``<image>``
placeholders removed): ``rejected`` = prefix + continuation, an answer that drifts from what the
image shows. One candidate per question, dropped with one reason: ``empty``, ``too_short`` (fewer
than two words to cut), a rule filter of :mod:`data_builders.filters` (``identical``,
``too_long``, ``repetition``) or ``quality`` (optional judge).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from data_builders.filters import FilterConfig, QualityScorer, rule_drop
from data_builders.inputs import Question, bad_row_record, check_question
from data_builders.prompts import text_only_question
from mpo.errors import UserError
from mpo.generation import GenerationBackend, GenerationRequest, SamplingParams, question_seed

SUBSETS = ("dropout_ntp",)
CHOSEN_FROM = ("model", "data")
_NO_SPACE_BEFORE = tuple(",.;:!?)]}%'\"")


def truncate_words(text: str, keep_ratio: float) -> str | None:
    """``text`` up to the end of its first ``floor(words * keep_ratio)`` words (at least one, and
    at least one word left to continue), whitespace inside kept; ``None`` under two words."""
    words = list(re.finditer(r"\S+", text))
    if len(words) < 2:
        return None
    k = min(len(words) - 1, max(1, int(len(words) * keep_ratio)))
    return text[: words[k - 1].end()]


def join_continuation(prefix: str, continuation: str) -> str:
    """prefix + continuation, with a space between unless the continuation starts with punctuation
    (generation backends return stripped text)."""
    if not continuation:
        return prefix
    return prefix + ("" if continuation.startswith(_NO_SPACE_BEFORE) else " ") + continuation


def question_text(row: dict) -> str | None:
    """The row's question, or the first user turn of an SFT ``conversations`` row."""
    if row.get("question") is not None:
        return str(row["question"])
    for turn in row.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") == "human":
            return str(turn.get("value", ""))
    return None


def given_answer(row: dict) -> str | None:
    """The answer the data gives: ``chosen``, else the first assistant turn of ``conversations``,
    else ``answer``."""
    value = row.get("chosen")
    if isinstance(value, str):
        return value
    for turn in row.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") == "gpt":
            return str(turn.get("value", ""))
    value = row.get("answer")
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


@dataclass
class DropoutNTPBuilder:
    """Turns a batch of questions into journal records (one per question)."""

    backend: GenerationBackend
    params: SamplingParams
    seed: int = 0
    keep_ratio: float = 0.5
    chosen_from: str = "model"
    filters: FilterConfig = field(default_factory=FilterConfig)
    scorer: QualityScorer | None = None

    pipeline = "dropout_ntp"
    subsets = SUBSETS

    def __post_init__(self) -> None:
        if not 0 < self.keep_ratio < 1:
            raise UserError(f"--keep-ratio must be between 0 and 1 (exclusive), got {self.keep_ratio}")
        if self.chosen_from not in CHOSEN_FROM:
            raise UserError(
                f"--chosen-from must be one of {', '.join(CHOSEN_FROM)}, got {self.chosen_from!r}"
            )
        if self.params.n != 1:
            raise UserError("DropoutNTP samples one answer per question: n must be 1")

    def _check(self, q: Question) -> str | None:
        if (
            q.error is None
            and q.row is not None
            and "question" not in q.row
            and question_text(q.row) is not None
        ):
            q.row = {**q.row, "question": question_text(q.row)}
        reason = check_question(q, ("question",))
        if reason is None and self.chosen_from == "data" and not (given_answer(q.row) or "").strip():
            reason = "chosen: missing or empty (no chosen, answer or assistant turn)"
        return reason

    def process(self, questions: list[Question]) -> list[dict]:
        records: dict[str, dict] = {}
        good: list[Question] = []
        for q in questions:
            reason = self._check(q)
            if reason is None:
                good.append(q)
            else:
                records[q.key] = bad_row_record(q, reason)
        with_image = [
            q.request(
                str(q.row["question"]), q.subset.max_dynamic_patch, seed=question_seed(self.seed, q.key)
            )
            for q in good
        ]
        if self.chosen_from == "model":
            chosen = [out[0] for out in self.backend.generate(with_image, self.params)] if good else []
        else:
            chosen = [given_answer(q.row).strip() for q in good]
        prefixes = [truncate_words(c, self.keep_ratio) for c in chosen]
        todo = [k for k, p in enumerate(prefixes) if p is not None]
        continue_requests = [
            GenerationRequest(
                text_only_question(str(good[k].row["question"])),
                [],
                good[k].subset.max_dynamic_patch,
                prefix=prefixes[k],
                seed=question_seed(self.seed, good[k].key + "\x00continue"),
            )
            for k in todo
        ]
        outputs = self.backend.generate(continue_requests, self.params) if todo else []
        continuations = dict(zip(todo, (out[0] for out in outputs), strict=True))
        for k, q in enumerate(good):
            responses = [{"text": chosen[k], "role": "chosen", "source": self.chosen_from}]
            pair = {"subset": "dropout_ntp", "c": 0, "r": None, "drop": None}
            if not chosen[k].strip():
                pair["drop"] = "empty"
            elif prefixes[k] is None:
                pair["drop"] = "too_short"
            else:
                rejected = join_continuation(prefixes[k], continuations[k])
                responses.append(
                    {
                        "text": rejected,
                        "role": "rejected",
                        "prefix": prefixes[k],
                        "continuation": continuations[k],
                    }
                )
                pair.update(r=1, drop=rule_drop(chosen[k], rejected, self.filters))
            record = {
                "key": q.key,
                "index": q.index,
                "subset": q.subset.name,
                "line": q.line,
                "status": "candidate",
                "question": str(q.row["question"]),
                "responses": responses,
                "pairs": [pair],
            }
            record.update(q.visual_fields())
            records[q.key] = record
        if self.scorer is not None:
            alive = [(k, q) for k, q in enumerate(good) if records[q.key]["pairs"][0]["drop"] is None]
            scores = self.scorer.score([(with_image[k], chosen[k]) for k, _ in alive])
            for (_, q), score in zip(alive, scores, strict=True):
                records[q.key]["responses"][0]["score"] = score
                if not self.scorer.keeps(score):
                    records[q.key]["pairs"][0]["drop"] = "quality"
        return [records[q.key] for q in questions]
