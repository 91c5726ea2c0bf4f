"""Per-benchmark rules: how a VLMEvalKit benchmark is read, prompted and scored, in one table.

A benchmark is recognised by its name (the TSV's file stem, or ``NAME`` in ``--data NAME=FILE``),
matched in full against each entry's ``pattern`` (VLMEvalKit's dataset names, e.g.
``MMBench_DEV_EN_V11``); any other name gets :data:`GENERIC`. Each :class:`Rule` says:

* **reading**: where the ground truth and the options are (``read_answer``); whether rows without
  an image are dropped (VLMEvalKit drops them: ``drop_imageless``);
* **prompting** (direct mode; ``--cot`` always ends with the CoT instruction): the question after
  ``clean_question``, the options, then ``mc_instruction`` or ``open_instruction`` (``""``: none;
  the question already says how to answer). The instructions are the ones InternVL's VLMEvalKit
  wrapper uses for that benchmark;
* **scoring**: ``hit(item, prediction)``, VLMEvalKit's exact-matching rule (:mod:`eval.matching`);
  ``circular``: MMBench's circular evaluation (rows with index >= 1e6 are rotations of item
  ``index % 1e6``; an item counts only if all its rows are right); ``metrics``: the benchmark's own
  summary numbers; ``judge``: the judge task (:mod:`eval.judge`) that VLMEvalKit needs a model for.

Which VLMEvalKit rule each entry follows:

=============== ============ =====================================================================
benchmark       type         rule
=============== ============ =====================================================================
MMBench         MCQ circular ``can_infer`` on every rotation; all right -> item right
MMStar          MCQ          ``can_infer``; the question's inline "Options: A: ..." is dropped
AI2D            MCQ          ``can_infer``
MMMU            MCQ          ``can_infer``; an open question is MC with A = answer, B = "Other Answers"
HallusionBench  Y/N          ``YOrN_Extraction`` == answer; aAcc, fAcc (per figure), qAcc (per question)
OCRBench        VQA          any accepted answer (list cell) is a substring of the response
MathVista       VQA          MC: ``can_infer`` == ``answer_option``; integer/float: ``int()``/``float()``
                             of the whole response equals the answer (``precision`` is only in the
                             question's hint: VLMEvalKit's check ignores it, and so does this one)
MMVet           VQA          judge grade in [0, 1]; exact match here is this project's heuristic
(generic)       MCQ/YN/VQA   options: ``can_infer``; yes/no: ``YOrN_Extraction``; else mpo.grading.answers
=============== ============ =====================================================================
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eval.matching import infer_option, mathvista_hit, ocrbench_hit, yes_no
from mpo.errors import DataError
from mpo.grading.answers import infer_kind, is_correct, normalize_text
from mpo.prompts import MC_INSTRUCTION, SHORT_INSTRUCTION

if TYPE_CHECKING:
    from eval.benchmarks import EvalItem

# MMBench circular copies: row index = item index + k * CIRCULAR_OFFSET.
CIRCULAR_OFFSET = 1_000_000
YES_NO_INSTRUCTION = "Please answer yes or no. " + SHORT_INSTRUCTION
DIRECT_INSTRUCTION = "Answer the question directly."
# MMMU open questions are scored as MC with the answer as option A and this as option B.
MMMU_OTHER = "Other Answers"
# MathVista answer types with a numeric comparison (others compare as text).
MATHVISTA_TYPES = ("integer", "float", "text", "list")
_INLINE_OPTIONS = re.compile(r"\s*\bOptions:\s*A\s*[:.].*\Z", re.DOTALL)
_IMAGE_REF = re.compile(r"<image (\d+)>")


def literal_list(cell: str, path, line: int, field: str) -> list[str]:
    """A cell holding a Python/JSON list literal of strings (VLMEvalKit writes ``['a', 'b']``), parsed
    with :func:`ast.literal_eval` (never ``eval``); a cell not starting with ``[`` is one value."""
    text = cell.strip()
    if not text.startswith("["):
        return [text]
    try:
        values = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise DataError(path, line, f"not a list literal: {text[:60]!r}", field) from None
    if not isinstance(values, list) or not values:
        raise DataError(path, line, "expected a non-empty list", field)
    return [str(v) for v in values]


def check_answer(answer: str, choices: dict[str, str] | None, path, line) -> str:
    """The ground truth; for multiple choice, the option letter (an option's exact text also names it)."""
    answer = answer.strip()
    if not answer:
        raise DataError(path, line, "empty answer (a split without ground truth cannot be scored)", "answer")
    if choices:
        letter = answer.strip("().").upper()
        if len(letter) == 1 and letter in choices:
            return letter
        named = [key for key, text in choices.items() if text.strip() == answer]
        if len(named) == 1:
            return named[0]
        raise DataError(path, line, f"{answer!r} is not one of the options {', '.join(choices)}", "answer")
    return answer


# ------------------------------------------------------------------------------------ reading


def _read_default(cells: dict[str, str], choices, path, line) -> tuple[str, dict[str, str] | None]:
    return check_answer(cells["answer"], choices, path, line), choices


def _read_mathvista(cells: dict[str, str], choices, path, line) -> tuple[str, dict[str, str] | None]:
    """MathVista: ``question_type`` multi_choice -> options from the ``choices`` list cell and the
    gold letter from ``answer_option``; free_form -> ``answer`` of ``answer_type``."""
    qtype = cells.get("question_type", "").strip()
    if qtype == "multi_choice":
        options = literal_list(cells.get("choices", ""), path, line, "choices")
        if not all(o.strip() for o in options):
            raise DataError(
                path, line, "missing or empty options (a list literal of option texts)", "choices"
            )
        choices = {chr(ord("A") + i): text for i, text in enumerate(options)}
        letter = cells.get("answer_option", "").strip()
        if letter not in choices:
            raise DataError(
                path, line, f"{letter!r} is not one of the options {', '.join(choices)}", "answer_option"
            )
        return letter, choices
    if qtype != "free_form":
        raise DataError(path, line, f"expected multi_choice or free_form, got {qtype!r}", "question_type")
    if cells.get("answer_type", "").strip() not in MATHVISTA_TYPES:
        raise DataError(path, line, f"expected one of {', '.join(MATHVISTA_TYPES)}", "answer_type")
    return check_answer(cells["answer"], None, path, line), None


def _read_answer_list(cells: dict[str, str], choices, path, line) -> tuple[str, dict[str, str] | None]:
    """OCRBench: ``answer`` is a list literal of accepted answers (or one answer); kept as written."""
    literal_list(cells["answer"], path, line, "answer")
    return check_answer(cells["answer"], None, path, line), None


def _read_yes_no(cells: dict[str, str], choices, path, line) -> tuple[str, dict[str, str] | None]:
    answer = yes_no(check_answer(cells["answer"], None, path, line))
    if answer == "Unknown":
        raise DataError(path, line, f"expected Yes or No, got {cells['answer'].strip()!r}", "answer")
    return answer, None


def _strip_inline_options(question: str, choices: dict[str, str] | None) -> str:
    """MMStar writes the options into the question too ("...\\nOptions: A: x, B: y"): drop them."""
    return _INLINE_OPTIONS.sub("", question) if choices else question


def _as_is(question: str, choices: dict[str, str] | None) -> str:
    return question


# ------------------------------------------------------------------------------------ scoring


def _mcq_hit(item: EvalItem, prediction: str) -> bool:
    return infer_option(prediction, item.choices or {}) == item.answer


def _mmmu_hit(item: EvalItem, prediction: str) -> bool:
    if item.choices:
        return _mcq_hit(item, prediction)
    return infer_option(prediction, {"A": item.answer, "B": MMMU_OTHER}) == "A"


def _yes_no_hit(item: EvalItem, prediction: str) -> bool:
    return yes_no(prediction) == yes_no(item.answer)


def _ocrbench_hit(item: EvalItem, prediction: str) -> bool:
    answers = literal_list(item.answer, item.path, item.line, "answer")
    return ocrbench_hit(prediction, answers, item.fields.get("category", ""))


def _mathvista_hit(item: EvalItem, prediction: str) -> bool:
    return mathvista_hit(
        prediction,
        item.answer,
        item.fields.get("answer_type", ""),
        item.choices,
        item.answer if item.choices else None,
    )


def open_answer_hit(item: EvalItem, prediction: str) -> bool:
    """This project's exact-match for MMVet-style answers (VLMEvalKit only has a judge): right when,
    for some ``<OR>`` alternative of the ground truth, every ``<AND>`` part occurs in the prediction
    as whole words (both sides :func:`mpo.grading.answers.normalize_text`)."""
    pred = f" {normalize_text(prediction)} "
    for alternative in item.answer.split("<OR>"):
        parts = [normalize_text(p) for p in alternative.split("<AND>")]
        if all(parts) and all(f" {p} " in pred for p in parts):
            return True
    return False


def _generic_hit(item: EvalItem, prediction: str) -> bool:
    """Options: ``can_infer``; a yes/no ground truth: ``YOrN_Extraction``; else (or with a ``kind``
    column) :func:`mpo.grading.answers.is_correct` of that kind."""
    kind = item.kind or ("choice" if item.choices else infer_kind(item.answer))
    if item.kind is None and kind == "choice" and item.choices:
        return _mcq_hit(item, prediction)
    if item.kind is None and kind == "yesno":
        return _yes_no_hit(item, prediction)
    return is_correct(prediction, item.answer, kind, choices=item.choices)


# ------------------------------------------------------------------------------------ metrics


def _pct(hits: list[bool]) -> float:
    return 100.0 * sum(hits) / len(hits) if hits else 0.0


def _hallusion_metrics(records: list[dict]) -> dict:
    """HallusionBench: aAcc (every question), fAcc (a figure counts when all its questions are right)
    and qAcc (a question counts when it is right on every figure); groups by ``l2-category`` and the
    set / figure / question ids in fields 4-6 of the ``_``-separated index; ``overall`` = their mean."""
    figures, questions = defaultdict(list), defaultdict(list)
    for r in records:
        parts = str(r["index"]).split("_")
        l2 = r.get("l2_category", "")
        figures[(l2, parts[3], parts[4])].append(r["correct"])
        questions[(l2, parts[3], parts[5])].append(r["correct"])
    a = _pct([r["correct"] for r in records])
    f = _pct([all(v) for v in figures.values()])
    q = _pct([all(v) for v in questions.values()])
    return {"aAcc": a, "fAcc": f, "qAcc": q, "overall": (a + f + q) / 3}


def _ocrbench_metrics(records: list[dict]) -> dict:
    """OCRBench's "Final Score" (items right, out of 1000 on the full set) and its tenth."""
    hits = sum(bool(r["correct"]) for r in records)
    return {"final_score": hits, "final_score_norm": hits / 10}


def _check_hallusion_index(item: EvalItem) -> None:
    if len(item.index.split("_")) < 6:
        raise DataError(
            item.path,
            item.line,
            f"{item.index!r}: expected 6 '_'-separated fields "
            "(..._set_figure_question) as HallusionBench writes them",
            "index",
        )


def _check_circular_index(item: EvalItem) -> None:
    if not re.fullmatch(r"\d+", item.index):
        raise DataError(
            item.path, item.line, f"{item.index!r}: circular evaluation needs integer indices", "index"
        )


def check_image_refs(item: EvalItem) -> None:
    """Every ``<image k>`` the question mentions (MMMU) must be one of the row's images."""
    for k in _IMAGE_REF.findall(item.question):
        if not 1 <= int(k) <= len(item.images):
            raise DataError(
                item.path,
                item.line,
                f"mentions <image {k}> but the row has {len(item.images)} image(s)",
                "question",
            )


# -------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Rule:
    """How one benchmark is read, prompted and scored (see the module docstring)."""

    name: str
    pattern: str
    hit: Callable[[EvalItem, str], bool]
    read_answer: Callable[..., tuple[str, dict[str, str] | None]] = _read_default
    clean_question: Callable[[str, dict[str, str] | None], str] = _as_is
    mc_instruction: str = MC_INSTRUCTION
    open_instruction: str = SHORT_INSTRUCTION
    drop_imageless: bool = True
    circular: bool = False
    check_item: Callable[[EvalItem], None] | None = None
    metrics: Callable[[list[dict]], dict] | None = None
    judge: str | None = None  # a task of eval.judge.JUDGE_TASKS

    def instruction(self, has_choices: bool) -> str:
        return self.mc_instruction if has_choices else self.open_instruction


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "MMBench",
            r"MMBench(_(DEV|TEST)_(EN|CN))?(_V11)?",
            _mcq_hit,
            circular=True,
            check_item=_check_circular_index,
        ),
        Rule("MMStar", r"MMStar", _mcq_hit, clean_question=_strip_inline_options),
        Rule("AI2D", r"AI2D_TEST(_NO_MASK)?", _mcq_hit),
        Rule("MMMU", r"MMMU_(DEV_VAL|TEST)", _mmmu_hit, open_instruction=DIRECT_INSTRUCTION),
        Rule(
            "HallusionBench",
            r"HallusionBench",
            _yes_no_hit,
            read_answer=_read_yes_no,
            open_instruction=YES_NO_INSTRUCTION,
            check_item=_check_hallusion_index,
            metrics=_hallusion_metrics,
        ),
        Rule(
            "OCRBench", r"OCRBench", _ocrbench_hit, read_answer=_read_answer_list, metrics=_ocrbench_metrics
        ),
        Rule(
            "MathVista",
            r"MathVista_MINI",
            _mathvista_hit,
            read_answer=_read_mathvista,
            open_instruction="",
            judge="extract",
        ),
        Rule("MMVet", r"MMVet", open_answer_hit, open_instruction="", judge="grade"),
    )
}
GENERIC = Rule("generic", r".*", _generic_hit, drop_imageless=False)


def rule_for(name: str) -> Rule:
    """The rule of the VLMEvalKit TSV benchmark called ``name`` (its last ``/`` part), else :data:`GENERIC`."""
    base = name.rsplit("/", 1)[-1]
    for rule in RULES.values():
        if re.fullmatch(rule.pattern, base):
            return rule
    return GENERIC
