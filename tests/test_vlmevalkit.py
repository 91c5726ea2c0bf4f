"""VLMEvalKit benchmark TSVs as VLMEvalKit publishes them, scored as VLMEvalKit scores them.

Each benchmark gets a small TSV in its published column layout (written here), a fake model with
fixed responses, and an expected score computed in the test from VLMEvalKit's rule, written out
here row by row (``# VLMEvalKit: ...`` says which rule decides each row), never by the project's
scorer. The issue-13 cases (MathVista letters, OCRBench answer lists, MMStar's inline options,
MMBench circular copies, MMMU list-literal images, build-pairs without options) go through the
public entry points that existed before the fix (``evaluate``, ``load_benchmarks``, the pair
builder), so they fail on the code before it.
"""

from __future__ import annotations

import base64
import io
import json
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import write_tsv
from PIL import Image

from eval.benchmarks import load_benchmarks
from eval.config import EvalConfig
from eval.run import evaluate
from mpo.errors import DataError
from mpo.prompts import MC_INSTRUCTION, SHORT_INSTRUCTION

COLOURS = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 60), "grey": (120, 120, 120)}


def b64(colour: str) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), COLOURS[colour]).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def truncated_jpeg() -> str:
    """A JPEG cut in half, base64-encoded: its header reads (and ``verify()`` passes), decoding fails."""
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 40).convert("RGB").save(buf, format="JPEG", quality=95)
    return base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()


class Model:
    """Answers each prompt with the response of the one marker it contains; keeps every prompt."""

    name = "fake"

    def __init__(self, responses: dict[str, str]) -> None:
        self.responses, self.prompts = responses, []

    def generate(self, requests, params):
        out = []
        for req in requests:
            self.prompts.append(req.question)
            found = [m for m in self.responses if m in req.question]
            assert len(found) == 1, (found, req.question)
            out.append([self.responses[found[0]]])
        return out


def run(tmp_path: Path, name: str, columns: list[str], rows: list[dict], responses: dict[str, str], **kw):
    tsv = write_tsv(tmp_path / f"{name}.tsv", rows, columns)
    model = Model(responses)
    res = evaluate(EvalConfig("fake-model", [str(tsv)], tmp_path / f"out-{name}", backend=model, **kw))
    return res, res["benchmarks"][name], model


# ----------------------------------------------------------------------------------------- MMBench


MMB_COLUMNS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "answer",
    "category",
    "image",
    "l2-category",
    "split",
]
MMB_ITEMS = [  # question, options (in the main row's order), answer text, category
    ("Which animal is shown?", ["cat", "dog", "bird"], "cat", "coarse_perception"),
    ("Which colour dominates?", ["red", "green", "blue"], "red", "coarse_perception"),
    ("What is the weather?", ["sunny", "rainy", "snowy"], "snowy", "logic_reasoning"),
]


def mmbench_rows() -> list[dict]:
    """MMBench_DEV_EN with its circular copies: row ``k * 1e6 + i`` is item i with options rotated k
    times; copies hold the main row's index in ``image`` (VLMEvalKit stores each image once)."""
    rows = []
    for k in range(3):
        for i, (question, options, answer, category) in enumerate(MMB_ITEMS):
            rotated = options[k:] + options[:k]
            rows.append(
                {
                    "index": k * 1_000_000 + i,
                    "question": question,
                    "hint": "",
                    **dict(zip("ABC", rotated, strict=True)),
                    "answer": "ABC"[rotated.index(answer)],
                    "category": category,
                    "image": b64("red") if k == 0 else str(i),
                    "l2-category": "x",
                    "split": "dev",
                }
            )
    return rows


def test_mmbench_is_scored_circularly(tmp_path):
    rows = mmbench_rows()

    def marker(row):
        return f"{row['question']}\nA. {row['A']}"

    # the model always names the right option's letter, except on item 1's second rotation (row
    # 1000001), where it says "A" (its options are green, blue, red: the answer is C)
    responses = {marker(r): r["answer"] for r in rows}
    responses[marker(rows[4])] = "A"
    assert rows[4]["index"] == 1_000_001
    res, mmb, model = run(tmp_path, "MMBench_DEV_EN", MMB_COLUMNS, rows, responses)

    # VLMEvalKit (mcq_circular_eval): group rows by index % 1e6; an item is a hit only when every
    # row of its group names its own ground truth (can_infer of a bare letter is that letter)
    hit_of_row = {r["index"]: responses[marker(r)] == r["answer"] for r in rows}
    groups = defaultdict(list)
    for index, hit in hit_of_row.items():
        groups[index % 1_000_000].append(hit)
    expected = sum(all(g) for g in groups.values()) / len(groups)
    assert expected == pytest.approx(2 / 3)
    assert (mmb["correct"], mmb["total"]) == (2, 3)  # not 8 right of 9 rows
    assert mmb["rows"] == 9
    assert mmb["accuracy"] == pytest.approx(expected)
    assert mmb["categories"]["coarse_perception"]["correct"] == 1  # item 1 (coarse) failed
    # the copies reuse the main row's image (index reference), one prompt per row
    assert len(model.prompts) == 9
    assert (
        "circular evaluation, 3 items from 9 rows"
        in (tmp_path / "out-MMBench_DEV_EN" / "results.md").read_text()
    )


# ------------------------------------------------------------------------------------------ MMStar


def test_mmstar_shows_its_options_once(tmp_path):
    columns = ["index", "question", "answer", "category", "l2_category", "A", "B", "C", "D", "image"]
    rows = [
        {
            "index": 0,
            "question": "What is on the table?\nOptions: A: a cup, B: a book, C: a lamp, D: a pen",
            "A": "a cup",
            "B": "a book",
            "C": "a lamp",
            "D": "a pen",
            "answer": "B",
            "category": "fine-grained perception",
            "image": b64("red"),
        },
        {
            "index": 1,
            "question": "Which season is it?\nOptions: A: spring, B: summer, C: autumn, D: winter",
            "A": "spring",
            "B": "summer",
            "C": "autumn",
            "D": "winter",
            "answer": "D",
            "category": "logical reasoning",
            "image": b64("blue"),
        },
    ]
    responses = {"What is on the table?": "B", "Which season is it?": "The answer is A"}
    res, star, model = run(tmp_path, "MMStar", columns, rows, responses)
    for prompt, row in zip(model.prompts, rows, strict=True):
        assert "Options:" not in prompt
        for letter in "ABCD":
            assert prompt.count(row[letter]) == 1, prompt  # each option shown once
        assert prompt.endswith(MC_INSTRUCTION)
    # VLMEvalKit (can_infer): "B" -> B (right); "The answer is A" -> A (wrong, the answer is D)
    assert (star["correct"], star["total"]) == (1, 2)


# -------------------------------------------------------------------------------------------- AI2D


def test_ai2d_multiple_choice(tmp_path):
    columns = ["index", "question", "A", "B", "C", "D", "answer", "category", "image"]
    rows = [
        {
            "index": 0,
            "question": "Which stage comes first?",
            "A": "egg",
            "B": "larva",
            "C": "pupa",
            "D": "adult",
            "answer": "A",
            "category": "lifeCycles",
            "image": b64("green"),
        },
        {
            "index": 1,
            "question": "What eats the grass?",
            "A": "hawk",
            "B": "rabbit",
            "C": "snake",
            "D": "sun",
            "answer": "B",
            "category": "foodChainsWebs",
            "image": b64("green"),
        },
        {
            "index": 2,
            "question": "Which part is the root?",
            "A": "top",
            "B": "middle",
            "C": "bottom",
            "D": "leaf",
            "answer": "C",
            "category": "partsOfA",
            "image": b64("green"),
        },
        {
            "index": 3,
            "question": "What is the label of the moon?",
            "A": "E",
            "B": "F",
            "C": "G",
            "D": "H",
            "answer": "D",
            "category": "moonPhaseEquinox",
            "image": b64("grey"),
        },
    ]
    responses = {
        "Which stage comes first?": "egg",  # no letter; "egg" is one option's text in a short reply -> A: hit
        "What eats the grass?": "I think it is B because rabbits eat grass",  # B is not among the last 5 words
        # ... and "answer is" is absent, option texts: "rabbit" occurs but the reply is too long -> miss
        "Which part is the root?": "(C)",  # marks stripped -> C: hit
        "What is the label of the moon?": "D. H",  # words D and H; only D is an option letter -> D: hit
    }
    res, ai2d, _ = run(tmp_path, "AI2D_TEST", columns, rows, responses)
    assert (ai2d["correct"], ai2d["total"]) == (3, 4)
    assert {k: v["correct"] for k, v in ai2d["categories"].items()} == {
        "foodChainsWebs": 0,
        "lifeCycles": 1,
        "moonPhaseEquinox": 1,
        "partsOfA": 1,
    }


# -------------------------------------------------------------------------------------------- MMMU


MMMU_COLUMNS = [
    "index",
    "question",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "image_path",
    "split",
    "question_type",
    "id",
]


def mmmu_rows() -> list[dict]:
    two = [b64("red"), b64("blue")]
    return [
        {
            "index": 1,
            "question": "Compare <image 1> and <image 2>. Which one is red?",
            "A": "<image 1>",
            "B": "<image 2>",
            "answer": "A",
            "category": "Art",
            "image": repr(two),
            "image_path": repr(["1_1.png", "1_2.png"]),
            "split": "validation",
            "question_type": "multiple-choice",
            "id": "validation_Art_1",
        },
        {
            "index": 2,
            "question": "<image 1> How many sides does the shape have?",
            "answer": "5",
            "category": "Math",
            "image": b64("green"),
            "image_path": "2.png",
            "split": "validation",
            "question_type": "open",
            "id": "validation_Math_2",
        },
        {
            "index": 3,
            "question": "<image 1> What is the area in square metres?",
            "answer": "5",
            "category": "Math",
            "image": b64("grey"),
            "image_path": "3.png",
            "split": "validation",
            "question_type": "open",
            "id": "validation_Math_3",
        },
        {
            "index": 4,
            "question": "<image 1> What is the boiling point of water in Celsius?",
            "A": "50",
            "B": "100",
            "C": "150",
            "D": "200",
            "answer": "B",
            "category": "Chemistry",
            "image": b64("grey"),
            "image_path": "4.png",
            "split": "validation",
            "question_type": "multiple-choice",
            "id": "validation_Chemistry_4",
        },
    ]


def test_mmmu_multi_image_list_literals_and_open_questions(tmp_path):
    rows = mmmu_rows()
    assert rows[0]["image"].startswith("['")  # Python list literal, single quotes, as VLMEvalKit writes it
    responses = {
        "Which one is red?": "A",  # can_infer -> A: hit
        "How many sides": "5",  # open: MC with A = "5", B = "Other Answers"; "5" is A's text -> hit
        "area in square metres": "15",  # "5" occurs in "15": VLMEvalKit's text match picks A -> hit
        "boiling point": "C",  # -> C, the answer is B: miss
    }
    res, mmmu, model = run(tmp_path, "MMMU_DEV_VAL", MMMU_COLUMNS, rows, responses)
    assert (mmmu["correct"], mmmu["total"]) == (3, 4)
    first = next(p for p in model.prompts if "Which one is red?" in p)
    # two images: one "Image-k: <image>" line each, first; the question keeps its <image k> references
    assert (
        first.startswith("Image-1: <image>\nImage-2: <image>\n")
        and "Compare <image 1> and <image 2>" in first
    )
    open_prompt = next(p for p in model.prompts if "How many sides" in p)
    assert open_prompt.endswith("Answer the question directly.")


def test_mmmu_image_paths_as_list_literals(tmp_path):
    """The meta-only layout: no ``image`` column, ``image_path`` a list literal of files."""
    (tmp_path / "imgs").mkdir()
    for colour in ("red", "blue"):
        (tmp_path / "imgs" / f"{colour}.png").write_bytes(base64.b64decode(b64(colour)))
    columns = [c for c in MMMU_COLUMNS if c != "image"]
    row = dict(mmmu_rows()[0], image_path="['imgs/red.png', 'imgs/blue.png']")
    tsv = write_tsv(tmp_path / "MMMU_DEV_VAL.tsv", [row], columns)
    [item] = load_benchmarks([str(tsv)], tmp_path / "images")["MMMU_DEV_VAL"]
    assert [Path(p).name for p in item.images] == ["red.png", "blue.png"]


def test_mmmu_reference_to_a_missing_image_is_a_bad_row(tmp_path):
    row = dict(mmmu_rows()[1], question="<image 2> How many sides does the shape have?")
    tsv = write_tsv(tmp_path / "MMMU_DEV_VAL.tsv", [row], MMMU_COLUMNS)
    with pytest.raises(
        DataError, match=r"MMMU_DEV_VAL.tsv:2: question: mentions <image 2> but the row has 1 image"
    ):
        load_benchmarks([str(tsv)], tmp_path / "images")


# ---------------------------------------------------------------------------------- HallusionBench


def test_hallusionbench_yes_no_with_figure_and_question_accuracy(tmp_path):
    columns = ["index", "category", "l2-category", "question", "answer", "image"]
    # index: category_subcategory_n_set_figure_question (VLMEvalKit reads fields 4-6)
    spec = [  # set, figure, question, answer, response
        (0, 0, 0, "Yes", "Yes, it is."),
        (0, 0, 1, "No", "No"),
        (0, 1, 0, "No", "no."),
        (0, 1, 1, "Yes", "No, it is not."),  # wrong
        (1, 0, 0, "Yes", "yes"),
        (1, 1, 0, "No", "Yes or no? Hard to say"),  # both words: Unknown -> wrong
    ]
    rows, responses = [], {}
    for n, (s, fig, q, answer, response) in enumerate(spec):
        question = f"Question {n}: is the bar for {s}-{fig}-{q} the tallest?"
        rows.append(
            {
                "index": f"VS_chart_{n}_{s}_{fig}_{q}",
                "category": "VS",
                "l2-category": "chart",
                "question": question,
                "answer": answer,
                "image": b64("grey"),
            }
        )
        responses[question] = response
    rows.append(
        {
            "index": "VS_chart_9_2_0_0",
            "category": "VS",
            "l2-category": "chart",
            "question": "Question 9: no figure here?",
            "answer": "Yes",
            "image": "",
        }
    )
    res, hb, model = run(tmp_path, "HallusionBench", columns, rows, responses)

    # VLMEvalKit: the row without an image is dropped; YOrN_Extraction: "yes" among the words and
    # not "no" -> Yes, the reverse -> No, both or neither -> Unknown; score = extracted == answer
    hits = [True, True, True, False, True, False]
    by_figure, by_question = defaultdict(list), defaultdict(list)
    for (s, fig, q, *_), hit in zip(spec, hits, strict=True):
        by_figure[(s, fig)].append(hit)
        by_question[(s, q)].append(hit)
    a_acc = 100 * sum(hits) / len(hits)
    f_acc = 100 * sum(all(v) for v in by_figure.values()) / len(by_figure)
    q_acc = 100 * sum(all(v) for v in by_question.values()) / len(by_question)
    assert (a_acc, f_acc, q_acc) == pytest.approx((400 / 6, 200 / 4, 100 / 3))
    assert (hb["correct"], hb["total"]) == (4, 6)
    assert hb["metrics"] == pytest.approx(
        {"aAcc": a_acc, "fAcc": f_acc, "qAcc": q_acc, "overall": (a_acc + f_acc + q_acc) / 3}
    )
    assert res["data"][0]["dropped_no_image"] == 1 and len(model.prompts) == 6
    assert all(p.endswith("Please answer yes or no. " + SHORT_INSTRUCTION) for p in model.prompts)


# ---------------------------------------------------------------------------------------- OCRBench


def test_ocrbench_accepts_any_listed_answer(tmp_path):
    columns = ["index", "image", "question", "answer", "category"]
    hme = "Handwritten Mathematical Expression Recognition"
    spec = [  # question, answer cell, category, response, VLMEvalKit hit
        ("What is the price?", "['1,000', '1000']", "Key Information Extraction", "1000", True),  # 2nd answer
        (
            "What does the sign say?",
            "['hello']",
            "Regular Text Recognition",
            "It says HELLO world",
            True,
        ),  # substring
        ("What is the total?", "['42.50', '$42.50']", "Doc-oriented VQA", "42.5", False),
        ("Recognise the formula.", "['x^2 + 1']", hme, "$x^2 + 1$", True),  # spaces dropped, substring
        ("Recognise this formula.", "['x^2 + 1']", hme, "X^2+1", False),  # case counts for formulas
        ("Which street is it?", "['Main St']", "Scene Text-centric VQA", "main st.", True),
    ]
    rows = [
        {"index": i, "image": b64("grey"), "question": q, "answer": a, "category": c}
        for i, (q, a, c, _, _) in enumerate(spec)
    ]
    res, ocr, model = run(tmp_path, "OCRBench", columns, rows, {q: r for q, _, _, r, _ in spec})
    expected = [hit for *_, hit in spec]
    assert (ocr["correct"], ocr["total"]) == (sum(expected), len(expected))
    assert ocr["metrics"] == {"final_score": 4, "final_score_norm": 0.4}
    assert all(p.endswith(SHORT_INSTRUCTION) for p in model.prompts)


# --------------------------------------------------------------------------------------- MathVista


MATHVISTA_COLUMNS = [
    "index",
    "image",
    "question",
    "answer",
    "question_type",
    "answer_type",
    "choices",
    "precision",
    "unit",
    "answer_option",
    "task",
    "skills",
    "category",
]
MC_HINT = (
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
)
INT_HINT = (
    "Hint: Please answer the question requiring an integer answer and provide the final value, "
    "e.g., 1, 2, 3, at the end."
)
FLOAT_HINT = (
    "Hint: Please answer the question requiring a floating-point number with two decimal places and "
    "provide the final value, e.g., 1.23, 1.34, 1.45, at the end."
)


def mathvista_rows() -> list[dict]:
    common = {
        "image": b64("grey"),
        "unit": "",
        "task": "figure question answering",
        "skills": "['arithmetic']",
    }
    return [
        {
            **common,
            "index": 1,
            "question": f"{MC_HINT}\nQuestion: What fraction of the shape is blue?\n"
            "Choices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5",
            "answer": "8/11",
            "question_type": "multi_choice",
            "answer_type": "text",
            "choices": "['3/11', '8/11', '6/11', '3/5']",
            "answer_option": "B",
        },
        {
            **common,
            "index": 2,
            "question": f"{MC_HINT}\nQuestion: Which bar is the tallest?\nChoices:\n(A) red\n"
            "(B) green\n(C) blue",
            "answer": "blue",
            "question_type": "multi_choice",
            "answer_type": "text",
            "choices": "['red', 'green', 'blue']",
            "answer_option": "C",
        },
        {
            **common,
            "index": 3,
            "question": f"{INT_HINT}\nQuestion: Which number is missing?",
            "answer": "14",
            "question_type": "free_form",
            "answer_type": "integer",
        },
        {
            **common,
            "index": 4,
            "question": f"{INT_HINT}\nQuestion: How many cubes are there?",
            "answer": "7",
            "question_type": "free_form",
            "answer_type": "integer",
        },
        {
            **common,
            "index": 5,
            "question": f"{FLOAT_HINT}\nQuestion: How much does the candy cost? (Unit: $)",
            "answer": "1.45",
            "question_type": "free_form",
            "answer_type": "float",
            "precision": "2.0",
        },
    ]


MATHVISTA_RESPONSES = {
    "What fraction of the shape is blue?": "B",  # can_infer -> B == answer_option: hit
    # no option letter, no "answer is", and too long for the option-text match: no option -> miss
    "Which bar is the tallest?": "The tallest bar is the red one.",
    "Which number is missing?": "14",  # int("14") == 14: hit
    "How many cubes are there?": "There are 7 cubes.",  # int() fails: not a hit without a judge
    "How much does the candy cost?": "1.45",  # float("1.45") == 1.45: hit
}


def test_mathvista_multiple_choice_gold_is_the_letter(tmp_path):
    res, mv, model = run(tmp_path, "MathVista_MINI", MATHVISTA_COLUMNS, mathvista_rows(), MATHVISTA_RESPONSES)
    assert (mv["correct"], mv["total"]) == (3, 5)
    recs = [
        json.loads(x)
        for x in (tmp_path / "out-MathVista_MINI" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [r["answer"] for r in recs[:2]] == ["B", "C"]  # the option letter, not "8/11"
    mc = next(p for p in model.prompts if "What fraction" in p)
    assert mc.endswith(MC_INSTRUCTION) and SHORT_INSTRUCTION not in mc
    assert mc.count("8/11") == 1  # the options the question lists are not listed again
    free = next(p for p in model.prompts if "Which number is missing?" in p)
    assert SHORT_INSTRUCTION not in free and free.endswith("Question: Which number is missing?")
    assert mv["judged"] is None
    assert "exact match only" in (tmp_path / "out-MathVista_MINI" / "results.md").read_text()


class Judge:
    """A judge model: writes ``replies[response]`` for the response a judge prompt quotes (after
    "Response:" for extraction, "Model answer:" for grading)."""

    name = "fake-judge"

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies, self.prompts = replies, []

    def generate(self, requests, params):
        out = []
        for req in requests:
            self.prompts.append(req.question)
            assert not req.images
            if "Model answer:" in req.question:
                response = req.question.split("Model answer:")[1].split("\n")[0].strip()
            else:
                response = req.question.split("Response:\n")[1].split("\n\nFinal answer:")[0]
            out.append([self.replies[response]])
        return out


def test_mathvista_judge_is_opt_in_and_reported_separately(tmp_path):
    judge = Judge({"There are 7 cubes.": "7", "The tallest bar is the red one.": "A"})
    res, mv, _ = run(
        tmp_path,
        "MathVista_MINI",
        MATHVISTA_COLUMNS,
        mathvista_rows(),
        MATHVISTA_RESPONSES,
        judge_backend=judge,
    )
    # VLMEvalKit: responses right by exact match are not sent to the judge ("prefetch"); the two others
    # are, and the judge's extraction is checked by the same rule: int("7") == 7 (hit); "A" names
    # option A, the answer is C (miss). Judged: 3 + 1 of 5.
    assert len(judge.prompts) == 2 and all("Response:" in p for p in judge.prompts)
    assert (mv["correct"], mv["total"]) == (3, 5)  # exact match unchanged
    assert mv["judged"] == {"accuracy": pytest.approx(4 / 5), "judged": 5, "total": 5}
    assert res["judge_model"] == "fake-judge"
    # a rerun judges nothing again
    again = Judge({})
    evaluate(
        EvalConfig(
            "fake-model",
            [str(tmp_path / "MathVista_MINI.tsv")],
            tmp_path / "out-MathVista_MINI",
            backend=Model(MATHVISTA_RESPONSES),
            judge_backend=again,
        )
    )
    assert again.prompts == []


# ------------------------------------------------------------------------------------------- MMVet


def test_mmvet_exact_match_and_judged_grade(tmp_path):
    columns = ["index", "image", "question", "answer", "category"]
    spec = [  # question, answer, response, judge grade
        ("What is x in the equation?", "-1 <AND> -5", "x = -1 or x = -5", "1.0"),
        ("What is written on the sign?", "stop <OR> stop sign", "Stop", "1.0"),
        ("What colour is the car?", "red", "It is blue.", "0.0"),
        (
            "Explain the joke.",
            "The cat is pretending to be a loaf of bread.",
            "A cat looks like bread.",
            "0.6",
        ),
    ]
    rows = [
        {"index": f"v{i}", "image": b64("grey"), "question": q, "answer": a, "category": "rec,ocr"}
        for i, (q, a, _, _) in enumerate(spec)
    ]
    judge = Judge({r: g for *_, r, g in spec})
    res, vet, _ = run(tmp_path, "MMVet", columns, rows, {q: r for q, _, r, _ in spec}, judge_backend=judge)
    # judged (VLMEvalKit MMVet_acc): the mean grade of every item, each graded by the judge
    assert vet["judged"]["accuracy"] == pytest.approx((1.0 + 1.0 + 0.0 + 0.6) / 4)
    assert len(judge.prompts) == 4
    # exact match (this project's rule; VLMEvalKit has none): all <AND> parts, or one <OR> alternative,
    # occur as whole words: rows 0 and 1
    assert (vet["correct"], vet["total"]) == (2, 4)


# ------------------------------------------------------------------------------- generic VLMEvalKit


def test_generic_tsv_uses_vlmevalkit_matching_for_options_and_yes_no(tmp_path):
    columns = ["index", "image", "question", "A", "B", "answer", "category"]
    rows = [
        {
            "index": 0,
            "image": b64("red"),
            "question": "Which colour is the square?",
            "A": "red",
            "B": "blue",
            "answer": "A",
            "category": "c",
        },
        {
            "index": 1,
            "image": b64("red"),
            "question": "Which colour is the circle?",
            "A": "red",
            "B": "blue",
            "answer": "B",
            "category": "c",
        },
        {"index": 2, "image": b64("red"), "question": "Is the image red?", "answer": "Yes", "category": "c"},
        {"index": 3, "image": b64("red"), "question": "Is the image blue?", "answer": "No", "category": "c"},
        {"index": 4, "image": "", "question": "What is 2 + 2?", "answer": "4", "category": "c"},  # text only
    ]
    responses = {
        "Which colour is the square?": "I am sure it is A here",  # A among the last 5 words: hit
        "Which colour is the circle?": "A, B",  # two option letters, no "answer is": no option -> miss
        "Is the image red?": "Yes, it is red.",  # Yes: hit
        "Is the image blue?": "Not sure, no.",  # "not" is not "no"; "no" present -> No: hit
        "What is 2 + 2?": "four",  # number words (mpo.grading.answers): hit
    }
    res, bench, model = run(tmp_path, "custom", columns, rows, responses)
    assert (bench["correct"], bench["total"]) == (4, 5)
    assert res["data"][0]["dropped_no_image"] == 0  # a file of this project's own keeps text-only rows


# -------------------------------------------------------------------------------------- bad rows


def test_on_bad_row_skip_lists_and_counts_bad_rows(tmp_path):
    columns = ["index", "image", "question", "A", "B", "answer", "category"]
    rows = [
        {"index": 0, "image": b64("red"), "question": "Good one?", "A": "x", "B": "y", "answer": "A"},
        {"index": 1, "image": "!!not base64!!" * 8, "question": "Broken image?", "answer": "Yes"},
        {"index": 2, "image": b64("red"), "question": "", "answer": "Yes"},
        {
            "index": 3,
            "image": b64("red"),
            "question": "Letter out of range?",
            "A": "x",
            "B": "y",
            "answer": "E",
        },
        {"index": 4, "image": "77", "question": "Reference to nothing?", "answer": "No"},
        {"index": 5, "image": b64("blue"), "question": "Also good?", "answer": "No"},
        {"index": 6, "image": truncated_jpeg(), "question": "Cut short?", "answer": "No"},
    ]
    tsv = write_tsv(tmp_path / "bench.tsv", rows, columns)
    with pytest.raises(DataError, match=rf"{tsv}:3: image: corrupt base64 image"):
        evaluate(EvalConfig("m", [str(tsv)], tmp_path / "err", backend=Model({})))

    res = evaluate(
        EvalConfig(
            "m",
            [str(tsv)],
            tmp_path / "skip",
            backend=Model({"Good one?": "A", "Also good?": "no"}),
            on_bad_row="skip",
        )
    )
    assert (res["overall"]["correct"], res["overall"]["total"]) == (2, 2)
    report = json.loads((tmp_path / "skip" / "bad_rows.json").read_text())
    assert report["skipped"] == 5
    assert sorted((r["file"], r["line"], r["field"]) for r in report["rows"]) == [
        (str(tsv), 3, "image"),
        (str(tsv), 4, "question"),
        (str(tsv), 5, "answer"),
        (str(tsv), 6, "image"),
        (str(tsv), 8, "image"),
    ]
    assert "image file is truncated" in next(r["reason"] for r in report["rows"] if r["line"] == 8)
    assert sum(report["by_reason"].values()) == 5
    assert res["bad_rows"] == {"skipped": 5, "by_field": {"answer": 1, "image": 3, "question": 1}}
    assert (
        "5 bad rows skipped (answer 1, image 3, question 1)" in (tmp_path / "skip" / "results.md").read_text()
    )


def test_truncated_image_file_is_a_bad_row(tmp_path):
    (tmp_path / "cut.jpg").write_bytes(base64.b64decode(truncated_jpeg()))
    (tmp_path / "ok.png").write_bytes(base64.b64decode(b64("red")))
    rows = [
        {"index": 0, "image_path": "cut.jpg", "question": "Cut?", "answer": "No"},
        {"index": 1, "image_path": "ok.png", "question": "Fine?", "answer": "Yes"},
    ]
    tsv = write_tsv(tmp_path / "bench.tsv", rows, ["index", "image_path", "question", "answer"])
    with pytest.raises(DataError, match=rf"{tsv}:2: image_path: .*image file is truncated"):
        load_benchmarks([str(tsv)], tmp_path / "images")
    res = evaluate(
        EvalConfig("m", [str(tsv)], tmp_path / "skip", backend=Model({"Fine?": "yes"}), on_bad_row="skip")
    )
    assert res["overall"]["total"] == 1 and res["bad_rows"] == {"skipped": 1, "by_field": {"image_path": 1}}


def test_cli_skip_prints_one_summary_line(tmp_path, tiny_model, capsys):
    rows = [
        {"index": 0, "image": b64("red"), "question": "Is it red?", "answer": "Yes"},
        {"index": 1, "image": "%%%%" * 30, "question": "Broken?", "answer": "No"},
        {"index": 2, "image": b64("red"), "question": "No answer?", "answer": ""},
    ]
    tsv = write_tsv(tmp_path / "bench.tsv", rows, ["index", "image", "question", "answer"])
    out = tmp_path / "run"
    argv = [
        "eval",
        "--model",
        str(tiny_model),
        "--data",
        str(tsv),
        "--out",
        str(out),
        "--backend",
        "transformers",
        "--max-new-tokens",
        "2",
        "--on-bad-row",
        "skip",
    ]
    from mpo.cli import main as cli_main

    assert cli_main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"mpo eval: skipped 2 bad rows (answer 1, image 1) -> {out}/bad_rows.json"
    assert printed[-2].startswith("mpo eval: 1 items")


# ------------------------------------------------------------------------------------ build-pairs


def test_build_pairs_correctness_shows_the_options(tmp_path):
    from data_builders.correctness import CorrectnessBuilder
    from data_builders.inputs import load_questions
    from eval.prompting import make_prompt
    from mpo.generation import SamplingParams

    (tmp_path / "red.png").write_bytes(base64.b64decode(b64("red")))
    row = {
        "id": "q1",
        "image": "red.png",
        "question": "<image>\nWhich colour is the square?",
        "choices": {"A": "red", "B": "blue"},
        "answer": "A",
    }
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps(row) + "\n")
    [q] = load_questions(data)
    builder = CorrectnessBuilder(backend=None, params=SamplingParams(n=2, temperature=1.0))
    prompt = builder.request(q).question
    assert "A. red\nB. blue" in prompt
    # one prompt builder: mpo eval --cot shows the same row the same way
    [item] = load_benchmarks([str(data)], tmp_path / "images")["qa"]
    assert make_prompt(item, cot=True) == prompt


def test_build_pairs_report_names_the_file_of_bad_rows(tmp_path):
    from data_builders.inputs import bad_row_record, load_questions
    from data_builders.report import build_report, render_markdown

    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"id": "q1", "question": "Why?"}) + "\n")
    [q] = load_questions(data)
    report = build_report(
        [bad_row_record(q, "answer: missing or empty")], {"pipeline": "correctness", "settings": {"n": 2}}
    )
    assert report["bad_rows"]["examples"][0]["file"] == str(data)
    assert f"{data}:1" in render_markdown(report)


# -------------------------------------------------------------------------------- matching rules


def test_vlmevalkit_option_matching_rules():
    from eval.matching import infer_option, process_punctuation, yes_no

    choices = {"A": "cat", "B": "dog", "C": "bird"}
    # a lone letter only counts among the last words: "A" early in a long sentence is an article
    assert infer_option("B", choices) == "B"
    assert infer_option("A cat is sitting on the mat in this image", choices) is None
    assert infer_option("It is C", choices) == "C"
    assert infer_option("The correct answer is **B** because dogs bark", choices) == "B"
    assert infer_option("A or B", choices) is None  # two letters, no "answer is"
    assert infer_option("dog", choices) == "B"  # option text in a short reply
    assert infer_option("Cannot determine the answer", choices) == "Z"  # a refusal names no option
    assert yes_no("Yes.") == "Yes" and yes_no("No, not at all") == "No" and yes_no("yes and no") == "Unknown"
    assert process_punctuation("a-b") == "a b" and process_punctuation("a - b") == "a  b"


def test_list_cells_are_parsed_safely(tmp_path):
    from eval.rules import literal_list

    assert literal_list("['a', \"b\"]", "f", 1, "image") == ["a", "b"]
    assert literal_list("plain", "f", 1, "image") == ["plain"]
    with pytest.raises(DataError, match="f:3: image: not a list literal"):
        literal_list("[__import__('os').system('echo hi')]", "f", 3, "image")


def test_cli_judge_model_on_tiny_model(tmp_path, tiny_model, capsys):
    """``--judge-model`` loads a checkpoint through the generation backend and judges MathVista."""
    tsv = write_tsv(tmp_path / "MathVista_MINI.tsv", mathvista_rows()[2:4], MATHVISTA_COLUMNS)
    out = tmp_path / "run"
    argv = [
        "eval",
        "--model",
        str(tiny_model),
        "--data",
        str(tsv),
        "--out",
        str(out),
        "--backend",
        "transformers",
        "--max-new-tokens",
        "3",
        "--judge-model",
        str(tiny_model),
    ]
    from mpo.cli import main as cli_main

    assert cli_main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    judged = res["benchmarks"]["MathVista_MINI"]["judged"]
    assert judged["judged"] == 2 and res["judge_model"] == str(tiny_model)
    rows = [json.loads(x) for x in (out / "judgements.jsonl").read_text().splitlines()]
    # the tiny model's random responses are never exact-match hits: both were sent to the judge
    assert len(rows) == 2 and all(isinstance(r["judge_output"], str) for r in rows)
    assert "mpo eval: 2 items" in capsys.readouterr().out
