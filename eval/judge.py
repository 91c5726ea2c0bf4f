"""Judged scores (opt-in, ``mpo eval --judge-model M``): the benchmarks whose VLMEvalKit score needs
a judge model, judged by a checkpoint through the project's own generation backend (greedy, text only).

Two tasks (a benchmark's ``Rule.judge``):

* ``extract`` (MathVista): a response the exact-match rule cannot read is given to the judge with
  the question; the judge writes only the final answer, which is then checked by the benchmark's
  rule. A response that is already right by exact match is not sent (VLMEvalKit's "prefetch").
  ``judged`` is 1 or 0.
* ``grade`` (MMVet): every response is graded against the ground truth (``<AND>``: every part
  needed; ``<OR>``: any one suffices); the judge writes a number in [0, 1], which is ``judged``.
  Output without such a number grades 0 (as VLMEvalKit does after its retries).

The prompts are :data:`JUDGE_PROMPTS` (this project's wording). Judgements are appended to
``judgements.jsonl`` as they are made, so a rerun judges only what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

from eval.benchmarks import EvalItem
from mpo.generation import GenerationBackend, GenerationRequest, SamplingParams
from mpo.journal import Journal

JUDGEMENTS = "judgements.jsonl"
JUDGE_MAX_NEW_TOKENS = 32
JUDGE_PROMPTS = {
    "extract": (
        "Below are a question and a model's response to it. Copy the final answer the response gives, "
        "in the form the question asks for (an option letter, an integer, a decimal number or a list). "
        "Write only that answer and nothing else.\n\n"
        "Question:\n{question}\n\nResponse:\n{response}\n\nFinal answer:"
    ),
    "grade": (
        "Compare a model's answer with the ground truth and grade how correct it is. In the ground truth, "
        "<AND> joins parts that must all be present, and <OR> joins alternatives of which one is enough. "
        "Reply with one number only: 0.0 (wrong), 0.1, 0.2, ..., 0.9 or 1.0 (fully correct).\n\n"
        "Question: {question}\nGround truth: {answer}\nModel answer: {response}\n\nGrade:"
    ),
}
_GRADE = re.compile(r"\d+(?:\.\d+)?")


def judge_prompt(item: EvalItem, record: dict) -> str | None:
    """The judge's prompt for one prediction record, or None when no judge call is needed."""
    task = item.rule.judge
    if task == "extract" and record["correct"]:
        return None
    return JUDGE_PROMPTS[task].format(question=item.question, answer=item.answer, response=record["response"])


def parse_grade(text: str) -> float:
    """The first number of the judge's reply, when it lies in [0, 1]; otherwise 0."""
    match = _GRADE.search(text)
    value = float(match.group()) if match else 0.0
    return value if 0.0 <= value <= 1.0 else 0.0


def judged_value(item: EvalItem, record: dict, output: str | None) -> float:
    """``judged`` of one record: 1.0 for an exact-match hit of an ``extract`` benchmark, else the
    rule's check of the extracted answer (1/0), or the grade of a ``grade`` benchmark."""
    if item.rule.judge == "extract":
        if record["correct"]:
            return 1.0
        return float(bool(output and output.strip() and item.rule.hit(item, output.strip())))
    return parse_grade(output or "")


def judgement_key(row: dict) -> tuple[str, str, str]:
    """A judgement's key in ``judgements.jsonl`` (a :class:`mpo.journal.Journal`): judge, benchmark, index."""
    return row["judge"], row["benchmark"], str(row["index"])


def judge_records(
    items: list[EvalItem],
    records: dict[tuple[str, str], dict],
    backend: GenerationBackend,
    out: Path,
    batch_size: int,
    judge: str,
) -> int:
    """Judge every record of an item whose benchmark has a judge task; sets ``record["judged"]`` and
    ``record["judge_output"]``; ``judge`` names the judge in ``judgements.jsonl``. Returns how many
    judge calls were made."""
    journal = Journal(Path(out) / JUDGEMENTS, judgement_key, "judgement")
    done = {
        (b, i): row for (j, b, i), row in journal.done.items() if j == judge
    }  # another judge's: judged again
    todo: list[tuple[EvalItem, dict, str]] = []
    for item in items:
        if item.rule.judge is None:
            continue
        key = (item.benchmark, item.index)
        record = records[key]
        if key in done:
            record.update(judged=done[key]["judged"], judge_output=done[key]["judge_output"])
            continue
        prompt = judge_prompt(item, record)
        if prompt is None:
            record.update(judged=judged_value(item, record, None), judge_output=None)
        else:
            todo.append((item, record, prompt))
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=JUDGE_MAX_NEW_TOKENS)
    with journal:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            outputs = backend.generate(
                [GenerationRequest(question=p, images=[]) for _, _, p in chunk], params
            )
            for (item, record, _), samples in zip(chunk, outputs, strict=True):
                output = samples[0] if samples else ""
                record.update(judged=judged_value(item, record, output), judge_output=output)
                journal.append(
                    {
                        "benchmark": item.benchmark,
                        "index": item.index,
                        "judge": judge,
                        "judge_output": output,
                        "judged": record["judged"],
                    },
                    sync=False,
                )
            journal.sync()
    return len(todo)


# Best-of-N by a judge (``mpo eval --aggregate best-of-n --scorer judge --judge-model M``).
SCORE_PROMPT = (
    "Below are a question and one candidate response to it. Judge whether the response's reasoning and final "
    "answer are correct. Reply with one number only: 0.0 (surely wrong), 0.1, ..., 0.9 or 1.0 (surely "
    "correct).\n\nQuestion:\n{question}\n\nResponse:\n{response}\n\nScore:"
)


class JudgeScorer:
    """Scores each sampled response by a judge model's grade in [0, 1] (:func:`parse_grade` of its
    greedy reply to :data:`SCORE_PROMPT`). The judge sees the item's images too: the question keeps
    its ``<image>`` placeholders and the request its image files."""

    def __init__(self, backend: GenerationBackend) -> None:
        self.backend = backend

    def score(self, request: GenerationRequest, responses: list[str]) -> list[float]:
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=JUDGE_MAX_NEW_TOKENS)
        prompts = [
            GenerationRequest(
                question=SCORE_PROMPT.format(question=request.question, response=r),
                images=list(request.images),
                max_dynamic_patch=request.max_dynamic_patch,
                frames=list(request.frames),
                video=request.video,
            )
            for r in responses
        ]
        return [parse_grade(out[0] if out else "") for out in self.backend.generate(prompts, params)]
