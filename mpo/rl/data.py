"""The questions `mpo rl` asks: the QA rows `mpo build-pairs correctness` takes, prompted as it prompts them.

A QA meta.json (``mpo synthetic OUT``'s ``qa/meta.json``, or any InternVL meta.json) lists subsets whose
jsonl lines are ``{"id"?, "image" | "video"?, "question", "answer", "choices"?, "answer_kind"?,
"reasoning"?, ...}``. Each usable line becomes one dataset row:

- ``prompt``: the chain-of-thought question of the pair builder (:func:`mpo.prompts.cot_question`: the
  answer-format instruction replaced by one ending in "Final answer: .."), with its ``<image>``
  placeholders put where the model expects them (:func:`mpo.data.template.normalize_question`), as the
  MMPR pairs built from the same row carry it, so RL, MPO and evaluation ask alike;
- the image fields of a preference record (:func:`mpo.data.records.visual_fields`: files, sizes, the video's
  frames, tiles per image), which :meth:`mpo.data.collator.PreferenceCollator.encode_prompt` turns into the
  prompt's ids and tiles;
- ``truth``: the row's ``answer`` / ``answer_kind`` / ``choices`` / ``reasoning`` as JSON, read by the rewards
  through :meth:`mpo.grading.verdicts.Truth.of_row`, as the pair builder reads them;
- ``key`` (``subset:id``, or ``subset:L<line>`` without an id: the key of the pair builder's records),
  ``group`` (the row's ``accuracy_group`` field, for accuracy by group), ``subset``, ``source`` (``file:line``).

The records name their files ``image_paths``, not ``image``: TRL's GRPOTrainer (1.16) would otherwise run
its own processor and chat template on an ``image`` column (see :mod:`mpo.rl.trainer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from mpo.data.meta import BadRows, DataConfig, Subset, iter_jsonl, read_meta, row_images
from mpo.data.records import visual_fields
from mpo.data.template import normalize_question
from mpo.errors import DataError, UserError
from mpo.prompts import COT_INSTRUCTION, cot_question, parse_choices

TRUTH_KEYS = ("answer", "answer_kind", "choices", "reasoning")  # what mpo.grading.verdicts.Truth.of_row reads


def question_key(subset: str, row: dict, line: int) -> str:
    """The key of a question, as the pair builder writes it in its records (``subset:id`` or ``subset:L<line>``)."""
    ident = row.get("id")
    return f"{subset}:{ident}" if ident is not None else f"{subset}:L{line}"


def parse_question(row: dict, subset: Subset, line: int, instruction: str, group_by: str) -> dict:
    """One QA line -> a dataset row (module docstring); :class:`DataError` naming the field otherwise."""
    path = subset.annotation
    for name in ("question", "answer"):
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
            raise DataError(path, line, "missing or empty", field=name)
    try:
        choices = parse_choices(row.get("choices"))
    except ValueError as err:
        raise DataError(path, line, str(err), field="choices") from None
    visuals = row_images(row, subset, path, line)
    try:
        prompt = normalize_question(
            cot_question(str(row["question"]), instruction, choices),
            len(visuals.sizes),
            video=visuals.is_video,
        )
    except ValueError as err:
        raise DataError(path, line, str(err), field="question") from None
    return {
        "prompt": prompt,
        "question": prompt,  # the key PreferenceCollator.encode_prompt reads
        **visual_fields(visuals, subset),
        "subset_max_dynamic_patch": subset.max_dynamic_patch,  # GenerationRequest's budget (before sharing)
        "truth": json.dumps({k: row[k] for k in TRUTH_KEYS if k in row}, ensure_ascii=False),
        "key": question_key(subset.name, row, line),
        "group": str(row.get(group_by, subset.name)),
        "subset": subset.name,
        "source": f"{path}:{line}",
    }


def load_questions(
    meta_path: str | Path,
    *,
    instruction: str = COT_INSTRUCTION,
    on_bad_row: str = "fail",
    group_by: str = "subset",
    data_root: str | Path | None = None,
    path_map: list[str] | None = None,
) -> tuple[list[dict], BadRows]:
    """Every usable line of every subset of ``meta_path`` as a row (module docstring), in order; bad lines stop
    the load (``fail``) or are skipped and counted (``skip``), as in `mpo train`. ``repeat_time`` is not applied:
    RL samples its questions by rollout accuracy (:mod:`mpo.rl.queries`), not by subset weight."""
    bad_rows = BadRows(on_bad_row)
    rows: list[dict] = []
    seen: set[str] = set()
    for subset in read_meta(meta_path, data_root, path_map):
        for line, row in iter_jsonl(subset.annotation, bad_rows):
            try:
                parsed = parse_question(row, subset, line, instruction, group_by)
                if parsed["key"] in seen:
                    raise DataError(subset.annotation, line, f"duplicate id {row.get('id')!r}", field="id")
            except DataError as err:
                bad_rows.handle(err)
                continue
            seen.add(parsed["key"])
            rows.append(parsed)
    if not rows:
        raise UserError(f"{meta_path}: no usable questions ({len(bad_rows.skipped)} skipped)")
    return rows, bad_rows


def as_dataset(rows: list[dict]) -> Dataset:
    """The rows as the ``datasets.Dataset`` the trainer samples from."""
    return Dataset.from_list(rows)


@dataclass
class QueryDataConfig(DataConfig):
    """Where the QA questions are (``meta_path``: a meta.json of QA subsets, the data of `mpo build-pairs
    correctness`) and what to do with bad rows; ``accuracy_group`` names the row field accuracy is logged by."""

    accuracy_group: str = field(
        default="subset",
        metadata={
            "help": "Row field whose values group the logged accuracy (accuracy/<value>): 'subset' (the "
            "meta.json's subset names), or a field of the rows such as the synthetic task's 'skill'."
        },
    )
