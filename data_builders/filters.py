"""Filters on candidate preference pairs: rules (empty, identical, over length), n-gram repetition,
and an optional quality score from a judge model (the same generation backend, a prompt file).

Every dropped pair gets exactly one reason, the first that applies in :data:`RULE_ORDER` order, so
the report's counts add up: candidates = kept + dropped by reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from data_builders.prompts import (
    DEFAULT_QUALITY_TEMPLATE,
    check_quality_template,
    fill_quality_template,
    parse_score,
)
from mpo.data.repetition import is_repetitive
from mpo.errors import UserError
from mpo.generation import GenerationBackend, GenerationRequest, SamplingParams

# Drop reasons, in the order they are tested. The pipelines add their own in front
# ("contains_answer", "duplicate", "too_short") and after ("quality", "over_cap").
RULE_ORDER = ("empty", "identical", "too_long", "repetition")


@dataclass(frozen=True)
class FilterConfig:
    """``max_words``: longest response kept, in whitespace-separated words (0: no limit).
    ``repetition_n`` / ``repetition_threshold``: a response is repetitive when more than this
    fraction of its word n-grams repeat (see :mod:`mpo.data.repetition`). ``repetition_in``:
    ``chosen`` (a looping chosen teaches loops; a looping rejected is a fine negative) or ``both``."""

    max_words: int = 1000
    repetition_n: int = 4
    repetition_threshold: float = 0.3
    repetition_in: str = "chosen"

    def __post_init__(self) -> None:
        if self.repetition_in not in ("chosen", "both"):
            raise UserError(f"--repetition-in must be chosen or both, got {self.repetition_in!r}")
        if self.max_words < 0:
            raise UserError(f"--max-words must be >= 0, got {self.max_words}")
        if not 0 <= self.repetition_threshold <= 1:
            raise UserError(f"--repetition-threshold must be in [0, 1], got {self.repetition_threshold}")


def rule_drop(chosen: str, rejected: str, cfg: FilterConfig) -> str | None:
    """The first rule of :data:`RULE_ORDER` that drops the pair, or ``None`` to keep it."""
    if not chosen.strip() or not rejected.strip():
        return "empty"
    if chosen.strip() == rejected.strip():
        return "identical"
    if cfg.max_words and max(len(chosen.split()), len(rejected.split())) > cfg.max_words:
        return "too_long"
    texts = (chosen,) if cfg.repetition_in == "chosen" else (chosen, rejected)
    if any(is_repetitive(t, cfg.repetition_n, cfg.repetition_threshold) for t in texts):
        return "repetition"
    return None


class QualityScorer:
    """Scores responses with a judge prompt on the same backend (greedy decoding).

    The template holds ``{question}`` and ``{response}``; the judge's reply is read by
    :func:`data_builders.prompts.parse_score`. A pair is dropped (reason ``quality``) when its chosen
    response scores below ``threshold`` or the reply holds no score.
    """

    def __init__(
        self,
        backend: GenerationBackend,
        template: str = DEFAULT_QUALITY_TEMPLATE,
        threshold: float = 5.0,
        max_new_tokens: int = 16,
    ) -> None:
        self.backend, self.template, self.threshold = backend, check_quality_template(template), threshold
        self.params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)

    @classmethod
    def from_file(cls, backend: GenerationBackend, path: str | Path, threshold: float) -> QualityScorer:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--quality-prompt: no such file {path}")
        return cls(backend, check_quality_template(path.read_text(encoding="utf-8"), str(path)), threshold)

    def score(self, items: list[tuple[GenerationRequest, str]]) -> list[float | None]:
        """One score per (request of the question, response) item."""
        if not items:
            return []
        requests = [
            dataclasses.replace(
                req,
                question=fill_quality_template(self.template, req.question, response),
                prefix="",
                seed=None,
            )
            for req, response in items
        ]
        return [parse_score(out[0]) if out else None for out in self.backend.generate(requests, self.params)]

    def keeps(self, score: float | None) -> bool:
        return score is not None and score >= self.threshold
