"""The files of the three splits: ``sft/`` and ``qa/`` (InternVL meta.json + jsonl) and ``eval/eval.tsv``
(VLMEvalKit TSV). Images are written as they are drawn (:mod:`data_builders.synthetic.splits`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from data_builders.synthetic.samples import LETTERS, Sample

EVAL_COLUMNS = [
    *("index", "image_path", "question", "A", "B", "C", "D", "answer", "category", "difficulty"),
    "reasoning",  # the true chain of thought: `mpo eval --cot` counts the right answers that state it
]


def _images_field(names: list[str]) -> str | list[str] | None:
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def _meta(name: str, root: str, annotation: str, length: int) -> dict:
    return {
        name: {
            "root": root,
            "annotation": annotation,
            "repeat_time": 1,
            "max_dynamic_patch": 6,
            "data_augment": False,
            "length": length,
        }
    }


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _record(split: str, i: int, s: Sample, files: list[str], **fields) -> dict:
    """One jsonl line of the SFT or QA split: id, images, the split's own ``fields``, then the labels."""
    row: dict = {"id": f"synthetic-{split}-{i:06d}"}
    if files:
        row["image"] = _images_field(files)
    row.update(fields, skill=s.item.skill, difficulty=s.item.difficulty, format=s.fmt, answer=s.answer)
    if s.choices:
        row["choices"] = s.choices
    return row


def _write_split(out: Path, split: str, annotation: str, rows: list[dict]) -> None:
    (out / split).mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / split / annotation, rows)
    _write_json(
        out / split / "meta.json", _meta(f"synthetic_{split}", f"../images/{split}", annotation, len(rows))
    )


def write_sft(out: Path, samples: list[Sample], names: list[list[str]]) -> None:
    """``out/sft``: one conversation per sample (the prompt, then the SFT response), and whether it is CoT."""
    rows = [
        _record(
            "sft",
            i,
            s,
            files,
            conversations=[{"from": "human", "value": s.prompt}, {"from": "gpt", "value": s.response}],
            cot=s.cot,
        )
        for i, (s, files) in enumerate(zip(samples, names, strict=True))
    ]
    _write_split(out, "sft", "train.jsonl", rows)


def write_qa(out: Path, samples: list[Sample], names: list[list[str]]) -> None:
    """``out/qa``: questions with their ground truth and true chain of thought, for the pair builders."""
    rows = [
        _record("qa", i, s, files, question=s.prompt, reasoning=s.item.reasoning)
        for i, (s, files) in enumerate(zip(samples, names, strict=True))
    ]
    _write_split(out, "qa", "qa.jsonl", rows)


def write_eval(out: Path, samples: list[Sample], names: list[list[str]]) -> None:
    """``out/eval/eval.tsv``: a VLMEvalKit TSV (:data:`EVAL_COLUMNS`), options in the A-D columns."""
    (out / "eval").mkdir(parents=True, exist_ok=True)
    with (out / "eval" / "eval.tsv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(EVAL_COLUMNS)
        for i, (s, files) in enumerate(zip(samples, names, strict=True)):
            paths = [f"../images/eval/{name}" for name in files]
            image_path = "" if not paths else paths[0] if len(paths) == 1 else json.dumps(paths)
            choices = s.choices or {}
            options = [choices.get(letter, "") for letter in LETTERS]
            writer.writerow(
                [
                    i,
                    image_path,
                    s.item.question,
                    *options,
                    s.answer,
                    s.item.skill,
                    s.item.difficulty,
                    s.item.reasoning,
                ]
            )
