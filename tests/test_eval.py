"""`mpo eval`: loading, prompts, scoring per category (fake backend, hand-computed), resume, errors,
--compare, and one smoke run through the real TransformersBackend on the tiny model."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from conftest import FakeBackend, write_tsv
from PIL import Image

from eval.benchmarks import load_benchmarks
from eval.config import EvalConfig
from eval.prompting import make_prompt
from eval.reports import compare
from eval.run import evaluate
from mpo.cli import main as cli_main
from mpo.errors import DataError, UserError
from mpo.prompts import COT_INSTRUCTION, MC_INSTRUCTION, SHORT_INSTRUCTION, build_question, strip_instruction

COLOURS = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 60)}
TSV_COLUMNS = ["index", "image", "image_path", "question", "A", "B", "C", "D", "answer", "category"]


def png(colour: str, size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).save(buf, format="PNG")
    return buf.getvalue()


def b64(colour: str) -> str:
    return base64.b64encode(png(colour)).decode()


# question (core, unique) -> (fake direct response, whether that response is right)
TSV_ROWS = [
    dict(
        index=0,
        image=b64("red"),
        question="What colour is the shape?",
        A="red",
        B="blue",
        C="green",
        answer="A",
        category="colour",
    ),
    dict(
        index=1,
        image_path="img/blue.png",
        question="What colour is the square?",
        A="red",
        B="blue",
        answer="B",
        category="colour",
    ),
    dict(index=2, image=b64("green"), question="Is there a circle?", answer="Yes", category="compare"),
    dict(index=3, image_path="img/red.png", question="Is there a triangle?", answer="No", category="compare"),
    dict(
        index=4, image="0", question="How many shapes are there?", answer="3", category="count"
    ),  # image of row 0
    dict(
        index=5,
        image_path=json.dumps(["img/red.png", "img/blue.png"]),
        question="Image-1: <image>\nImage-2: <image>\nWhich image is red?",
        answer="Image-1",
        category="multi",
    ),
    dict(index=6, question="What is 2 + 3?", answer="5", category="arithmetic"),  # text only
]
JSONL_ROWS = [
    {
        "image": "img/red.png",
        "question": "<image>\nWhich colour?\nA. red\nB. blue\n" + MC_INSTRUCTION,
        "answer": "A",
        "choices": {"A": "red", "B": "blue"},
        "category": "colour",
    },
    {"question": "Is 7 a prime number?", "answer": "yes", "category": "math"},
    {
        "image": ["img/red.png", "img/blue.png"],
        "question": "Which image is blue?",
        "answer": "Image-2",
        "category": "colour",
    },
]

DIRECT = {  # core question -> response
    "What colour is the shape?": "A",  # right
    "What colour is the square?": "C",  # wrong
    "Is there a circle?": "yes, there is one.",  # right
    "Is there a triangle?": "Yes",  # wrong
    "How many shapes are there?": "3",  # right
    "Which image is red?": "image-1",  # right
    "What is 2 + 3?": "five",  # right (number words)
    "Which colour?": "The answer is B",  # wrong
    "Is 7 a prime number?": "Yes.",  # right
    "Which image is blue?": "Image-2",  # right
}
PERFECT = {
    "What colour is the shape?": "A",
    "What colour is the square?": "B",
    "Is there a circle?": "Yes",
    "Is there a triangle?": "No",
    "How many shapes are there?": "3",
    "Which image is red?": "Image-1",
    "What is 2 + 3?": "5",
    "Which colour?": "A",
    "Is 7 a prime number?": "yes",
    "Which image is blue?": "Image-2",
}
COT = {
    "Which colour?": "The shape is red, option A is red. Final answer: A",  # right
    "Is 7 a prime number?": "Seven has no divisors, so I think yes.",  # unparsable -> wrong
    "Which image is blue?": "The second one is blue. \\boxed{Image-2}",  # right
}


@pytest.fixture
def bench(tmp_path) -> dict[str, Path]:
    (tmp_path / "img").mkdir()
    for colour in COLOURS:
        (tmp_path / "img" / f"{colour}.png").write_bytes(png(colour))
    tsv = write_tsv(tmp_path / "bench.tsv", TSV_ROWS, TSV_COLUMNS)
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in JSONL_ROWS))
    return {"tsv": tsv, "jsonl": jsonl, "root": tmp_path}


def acc(correct: int, total: int) -> dict:
    return {"accuracy": correct / total, "correct": correct, "total": total}


def counts(d: dict) -> dict:
    return {k: d[k] for k in ("accuracy", "correct", "total")}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------- scoring


def test_direct_accuracy_per_benchmark_and_category(bench, tmp_path):
    backend = FakeBackend(DIRECT)
    out = tmp_path / "run"
    res = evaluate(
        EvalConfig("fake-model", [str(bench["tsv"]), str(bench["jsonl"])], out, backend=backend, batch_size=4)
    )
    b, q = res["benchmarks"]["bench"], res["benchmarks"]["qa"]
    assert counts(res["overall"]) == acc(7, 10)
    assert counts(b) == acc(5, 7) and counts(q) == acc(2, 3)
    assert {c: counts(v) for c, v in b["categories"].items()} == {
        "arithmetic": acc(1, 1),
        "colour": acc(1, 2),
        "compare": acc(1, 2),
        "count": acc(1, 1),
        "multi": acc(1, 1),
    }
    assert {c: counts(v) for c, v in q["categories"].items()} == {"colour": acc(1, 2), "math": acc(1, 1)}
    assert json.loads((out / "results.json").read_text())["overall"]["accuracy"] == pytest.approx(0.7)
    md = (out / "results.md").read_text()
    assert "| **overall** |  | 7 | 10 | 70.0 |" in md and "| bench | colour | 1 | 2 | 50.0 |" in md

    # every prediction kept, in order, with the whole response as the direct prediction
    recs = lines(out / "predictions.jsonl")
    assert [(r["benchmark"], r["index"]) for r in recs] == [("bench", str(i)) for i in range(7)] + [
        ("qa", str(i)) for i in range(3)
    ]
    assert {
        "benchmark",
        "index",
        "category",
        "question",
        "answer",
        "response",
        "prediction",
        "correct",
    } <= set(recs[0])
    assert recs[2]["prediction"] == "yes, there is one." and recs[2]["correct"] is True
    assert [r["kind"] for r in recs[:7]] == ["choice", "choice", "yesno", "yesno", "number", "text", "number"]

    # per answer kind: the kept predictions regrouped by kind give the kinds table of results.json
    by_kind: dict[str, list[bool]] = {}
    for r in recs[:7]:
        by_kind.setdefault(r["kind"], []).append(r["correct"])
    assert {k: counts(v) for k, v in b["kinds"].items()} == {
        k: acc(sum(v), len(v)) for k, v in by_kind.items()
    }
    choice = b["kinds"]["choice"]
    assert f"| bench | answer: choice | {choice['correct']} | 2 | {100 * choice['accuracy']:.1f} |" in md

    # prompts: the training format (mpo.prompts.build_question), images handed over as files
    reqs = {r.question: r for r in backend.requests}
    first = build_question("What colour is the shape?", 1, {"A": "red", "B": "blue", "C": "green"})
    assert first in reqs and first.endswith(MC_INSTRUCTION)
    assert build_question("Is there a circle?", 1) in reqs
    assert (
        build_question("What is 2 + 3?", 0) in reqs and not reqs[build_question("What is 2 + 3?", 0)].images
    )
    by_core = {q: r for q in DIRECT for r in backend.requests if q in r.question}
    assert (
        by_core["What colour is the shape?"].images == by_core["How many shapes are there?"].images
    )  # reference
    decoded = Path(by_core["What colour is the shape?"].images[0])
    assert decoded.parent.parent == out / "images" and decoded.read_bytes() == png("red")
    assert [Path(p).name for p in by_core["Which image is red?"].images] == ["red.png", "blue.png"]
    mc_jsonl = by_core["Which colour?"].question
    assert (
        mc_jsonl.count("A. red") == 1
        and mc_jsonl.count(MC_INSTRUCTION) == 1
        and mc_jsonl.startswith("<image>")
    )
    assert by_core["Which image is blue?"].question.startswith("Image-1: <image>\nImage-2: <image>\n")
    assert by_core["Is 7 a prime number?"].question.endswith(SHORT_INSTRUCTION)


def test_cot_extracts_final_answer_and_counts_unparsable(bench, tmp_path):
    backend = FakeBackend(COT)
    res = evaluate(
        EvalConfig("fake-model", [str(bench["jsonl"])], tmp_path / "cot", cot=True, backend=backend)
    )
    assert counts(res["overall"]) == acc(2, 3) and res["overall"]["unparsable"] == 1
    assert {c: counts(v) for c, v in res["benchmarks"]["qa"]["categories"].items()} == {
        "colour": acc(2, 2),
        "math": acc(0, 1),
    }
    recs = lines(tmp_path / "cot" / "predictions.jsonl")
    assert [r["prediction"] for r in recs] == ["A", None, "Image-2"]
    assert [r["reason"] for r in recs] == [None, "unparsable", None]
    for req in backend.requests:
        assert req.question.endswith(COT_INSTRUCTION) and MC_INSTRUCTION not in req.question
    assert "unparsable" in (tmp_path / "cot" / "results.md").read_text()


def test_cot_counts_right_answers_that_state_the_reference_reasoning(tmp_path):
    rows = [
        dict(
            index=0,
            question="How many shapes?",
            answer="2",
            category="count",
            reasoning="I see a red circle and a blue square.  That is 2 shapes.",
        ),
        dict(
            index=1,
            question="How many circles?",
            answer="1",
            category="count",
            reasoning="I see a red circle. That is 1 circle.",
        ),
        dict(
            index=2,
            question="Which colour?",
            answer="red",
            category="colour",
            reasoning="I see a red circle.",
        ),
        dict(index=3, question="What is 1 + 1?", answer="2", category="sum"),  # no reference: not checked
    ]
    tsv = write_tsv(
        tmp_path / "r.tsv", rows, ["index", "image_path", "question", "answer", "category", "reasoning"]
    )
    cot = {
        "How many shapes?": "I see a red circle and a blue square. That is 2 shapes. Final answer: 2",  # sound
        "How many circles?": "I see a blue square. That is 1 circle. Final answer: 1",  # right, unsound
        "Which colour?": "I see a red circle. Final answer: blue",  # sound steps, wrong answer
        "What is 1 + 1?": "Final answer: 2",
    }
    res = evaluate(EvalConfig("fake-model", [str(tsv)], tmp_path / "out", cot=True, backend=FakeBackend(cot)))
    recs = lines(tmp_path / "out" / "predictions.jsonl")
    assert [r.get("sound") for r in recs] == [True, False, True, None]
    assert res["overall"]["correct"] == 3 and res["overall"]["correct_and_sound"] == 1
    categories = res["benchmarks"]["r"]["categories"]
    assert categories["count"]["correct_and_sound"] == 1 and categories["colour"]["correct_and_sound"] == 0
    assert "correct_and_sound" not in categories["sum"]
    # direct answers have no chain of thought to check
    direct = evaluate(
        EvalConfig("fake-model", [str(tsv)], tmp_path / "direct", backend=FakeBackend({q: "2" for q in cot}))
    )
    assert "correct_and_sound" not in direct["overall"]
    # an MMPR-style jsonl carries it as a key
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "index"}) + "\n" for r in rows))
    res = evaluate(
        EvalConfig("fake-model", [str(jsonl)], tmp_path / "jsonl", cot=True, backend=FakeBackend(cot))
    )
    assert [r.get("sound") for r in lines(tmp_path / "jsonl" / "predictions.jsonl")] == [
        True,
        False,
        True,
        None,
    ]
    assert res["overall"]["correct_and_sound"] == 1


# -------------------------------------------------------------------------------------- resume


def test_resume_after_crash_gives_same_results_without_duplicates(bench, tmp_path):
    data = [str(bench["tsv"]), str(bench["jsonl"])]
    full = evaluate(
        EvalConfig("fake-model", data, tmp_path / "full", backend=FakeBackend(DIRECT), batch_size=2)
    )

    out = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="backend died"):
        evaluate(EvalConfig("fake-model", data, out, backend=FakeBackend(DIRECT, fail_after=5), batch_size=2))
    assert len(lines(out / "predictions.jsonl")) == 4  # two whole batches of 2 were saved
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"benchmark": "bench", "ind')  # torn write at the moment of the crash

    second = FakeBackend(DIRECT)
    res = evaluate(EvalConfig("fake-model", data, out, backend=second, batch_size=2))
    assert len(second.requests) == 6  # only what was missing
    recs = lines(out / "predictions.jsonl")
    keys = [(r["benchmark"], r["index"]) for r in recs]
    assert len(keys) == 10 and len(set(keys)) == 10
    strip = lambda r: {k: v for k, v in r.items() if k != "resumed"}  # noqa: E731
    assert strip(res) == strip(full) and res["resumed"] == 4

    # a finished run reruns without generating anything
    again = evaluate(
        EvalConfig("fake-model", data, out, backend=FakeBackend(DIRECT, fail_after=0), batch_size=2)
    )
    assert strip(again) == strip(full) and len(lines(out / "predictions.jsonl")) == 10

    # other settings into the same folder are refused, not mixed
    with pytest.raises(UserError, match="other settings"):
        evaluate(EvalConfig("other-model", data, out, backend=FakeBackend(DIRECT)))


# -------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "image, message",
    [
        ("!!not base64!!" * 8, "corrupt base64 image"),
        (base64.b64encode(b"hello world " * 10).decode(), "not a readable image"),
    ],
)
def test_corrupt_base64_image_names_file_and_row(bench, tmp_path, image, message):
    rows = [dict(TSV_ROWS[0]), dict(TSV_ROWS[2], image=image)]
    tsv = write_tsv(tmp_path / "bad.tsv", rows, TSV_COLUMNS)
    with pytest.raises(DataError, match=message) as err:
        load_benchmarks([str(tsv)], tmp_path / "images")
    assert str(err.value).startswith(f"{tsv}:3: image: ")
    assert (err.value.path, err.value.line, err.value.field) == (str(tsv), 3, "image")


def test_cli_reports_errors_in_one_line(bench, tmp_path, capsys):
    tsv = write_tsv(tmp_path / "bad.tsv", [dict(TSV_ROWS[0], image="%%%%" * 30)], TSV_COLUMNS)
    assert cli_main(["eval", "--model", "m", "--data", str(tsv), "--out", str(tmp_path / "o")]) == 1
    assert f"mpo eval: error: {tsv}:2: image: corrupt base64 image" in capsys.readouterr().err


def test_missing_column_and_bad_rows(bench, tmp_path):
    no_answer = write_tsv(tmp_path / "noanswer.tsv", TSV_ROWS[:2], [c for c in TSV_COLUMNS if c != "answer"])
    with pytest.raises(DataError, match=r"noanswer.tsv:1: answer: missing column"):
        load_benchmarks([str(no_answer)], tmp_path / "images")
    no_image = write_tsv(tmp_path / "noimage.tsv", TSV_ROWS[6:], [c for c in TSV_COLUMNS if "image" not in c])
    with pytest.raises(DataError, match=r"noimage.tsv:1: image: missing column"):
        load_benchmarks([str(no_image)], tmp_path / "images")
    missing_file = write_tsv(
        tmp_path / "nofile.tsv", [TSV_ROWS[0], dict(TSV_ROWS[1], image_path="img/nope.png")], TSV_COLUMNS
    )
    with pytest.raises(DataError, match=r"nofile.tsv:3: image_path: missing image"):
        load_benchmarks([str(missing_file)], tmp_path / "images")
    bad_letter = write_tsv(tmp_path / "letter.tsv", [dict(TSV_ROWS[1], answer="E")], TSV_COLUMNS)
    with pytest.raises(DataError, match=r"letter.tsv:2: answer: 'E' is not one of the options A, B"):
        load_benchmarks([str(bad_letter)], tmp_path / "images")
    duplicate = write_tsv(tmp_path / "dup.tsv", [TSV_ROWS[2], dict(TSV_ROWS[3], index=2)], TSV_COLUMNS)
    with pytest.raises(DataError, match=r"dup.tsv:3: index: duplicate index '2'"):
        load_benchmarks([str(duplicate)], tmp_path / "images")
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps(JSONL_ROWS[1]) + "\n" + json.dumps({"question": "Why?"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: answer: missing"):
        load_benchmarks([str(jsonl)], tmp_path / "images")


# ------------------------------------------------------------------------------------- prompts


def test_prompts_match_the_synthetic_training_format(tmp_path):
    from data_builders.synthetic import generate

    generate(tmp_path / "syn", n_sft=0, n_qa=6, n_eval=12, seed=1)
    items = load_benchmarks(
        [str(tmp_path / "syn" / "eval" / "eval.tsv"), str(tmp_path / "syn" / "qa" / "meta.json")],
        tmp_path / "images",
    )
    assert set(items) == {"eval", "synthetic_qa"}
    for item in items["eval"]:
        assert make_prompt(item, cot=False) == build_question(item.question, len(item.images), item.choices)
        assert make_prompt(item, cot=True) == build_question(
            item.question, len(item.images), item.choices, cot=True
        )
        assert all(Path(p).is_file() for p in item.images)
    qa = [json.loads(line) for line in (tmp_path / "syn" / "qa" / "qa.jsonl").read_text().splitlines()]
    for item, row in zip(items["synthetic_qa"], qa, strict=True):
        assert make_prompt(item, cot=False) == row["question"]  # already a full training prompt: unchanged
        cot = make_prompt(item, cot=True)
        assert cot == strip_instruction(row["question"]) + "\n" + COT_INSTRUCTION


# ------------------------------------------------------------------------------------- compare


def test_compare_table_and_chart(bench, tmp_path):
    data = [str(bench["tsv"]), str(bench["jsonl"])]
    evaluate(EvalConfig("base", data, tmp_path / "sft", backend=FakeBackend(DIRECT)))
    evaluate(EvalConfig("mpo", data, tmp_path / "mpo", backend=FakeBackend(PERFECT)))
    out = tmp_path / "cmp"
    assert (
        cli_main(["eval", "--compare", str(tmp_path / "sft"), str(tmp_path / "mpo"), "--out", str(out)]) == 0
    )
    md = (out / "compare.md").read_text()
    assert "| benchmark | category | n | `sft` | `mpo` |" in md
    assert "| **overall** |  | 10 | 70.0 | 100.0 (+30.0) |" in md
    assert "| bench | all | 7 | 71.4 | 100.0 (+28.6) |" in md
    assert "| bench | colour | 2 | 50.0 | 100.0 (+50.0) |" in md
    assert "| qa | math | 1 | 100.0 | 100.0 (+0.0) |" in md
    choice = json.loads((tmp_path / "sft" / "results.json").read_text())["benchmarks"]["bench"]["kinds"][
        "choice"
    ]
    assert f"| bench | answer: choice | 2 | {100 * choice['accuracy']:.1f} | 100.0 (" in md
    report = json.loads((out / "compare.json").read_text())
    overall = report["rows"][0]
    assert overall["accuracy"] == pytest.approx([0.7, 1.0]) and overall["diff"] == pytest.approx([0.0, 0.3])
    with Image.open(out / "compare.png") as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
        img.verify()
    with pytest.raises(UserError, match="no results.json"):
        compare([tmp_path / "sft", tmp_path / "nothing"], tmp_path / "cmp2")


# --------------------------------------------------------------------------------------- smoke


def test_smoke_transformers_backend_on_tiny_model(bench, tiny_model, tmp_path):
    out = tmp_path / "tiny"
    argv = [
        "eval",
        "--model",
        str(tiny_model),
        "--data",
        str(bench["tsv"]),
        "--out",
        str(out),
        "--backend",
        "transformers",
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
    ]
    assert cli_main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["overall"]["total"] == 3 and 0.0 <= res["overall"]["accuracy"] <= 1.0
    recs = lines(out / "predictions.jsonl")
    assert len(recs) == 3 and all(isinstance(r["response"], str) for r in recs)
