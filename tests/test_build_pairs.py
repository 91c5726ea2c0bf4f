"""`mpo build-pairs`: pairing logic (exact, on scripted responses), filters, DropoutNTP, the MMPR
output that `mpo train` loads, report counts, crash + resume, shards + merge."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pair_backends import Recording, ScriptedBackend, run_tagged
from PIL import Image

from data_builders.build_pairs import merge, run
from data_builders.correctness import (
    apply_cap,
    contains_answer,
    judge,
    plan_pairs,
    question_status,
)
from data_builders.dropout_ntp import join_continuation, truncate_words
from data_builders.filters import FilterConfig, rule_drop
from data_builders.prompts import (
    COT_INSTRUCTION,
    cot_question,
    parse_score,
    strip_answer_format,
    text_only_question,
)
from data_builders.store import parse_shard
from data_builders.synthetic import generate
from mpo.cli import main as cli_main
from mpo.cli.build_pairs import build_parser
from mpo.data.mmpr import load_mmpr
from mpo.errors import UserError
from mpo.generation import question_seed
from mpo.grading.answers import reasoning_steps, states_steps
from mpo.journal import Journal, read_records

REPO = Path(__file__).resolve().parents[1]
GEN = ["--n", "4", "--max-new-tokens", "24", "--temperature", "1.0", "--batch-size", "3"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads on a shared 2-core machine slow tiny generation down ~50x; one is plenty."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, n_sft=10, n_qa=12, n_eval=0, seed=3)
    return out


def _args(pipeline: str, model, data, out, *extra: str):
    return build_parser().parse_args(
        [pipeline, "--model", str(model), "--data", str(data), "--out", str(out), *extra]
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _pairs(out: Path) -> dict[str, list[dict]]:
    meta = json.loads((out / "meta.json").read_text())
    return {name: _lines(out / entry["annotation"]) for name, entry in meta.items()}


def _check_counts(report: dict, n_questions: int) -> None:
    q, p = report["questions"], report["pairs"]
    assert q["in"] == n_questions == sum(q["by_status"].values())
    for entry in [*report["subsets"].values(), p]:
        assert entry["candidates"] == entry["kept"] + sum(entry["dropped"].values())
    assert p["candidates"] == sum(e["candidates"] for e in report["subsets"].values())


# --------------------------------------------------------------------------------- prompts


def test_cot_prompt_replaces_the_answer_format_instruction():
    mc = "<image>\nWhat shape is it?\nA. circle\nB. square\nAnswer with the option's letter from the given choices directly."
    assert cot_question(mc) == f"<image>\nWhat shape is it?\nA. circle\nB. square\n{COT_INSTRUCTION}"
    assert COT_INSTRUCTION.endswith('"Final answer: .."')
    assert strip_answer_format("How many?\nAnswer the question using a single word or phrase.") == "How many?"
    assert (
        strip_answer_format("Is it red?\nPlease answer with the letter of the correct option.")
        == "Is it red?"
    )
    # a last line that is a question, or the only line, stays
    assert (
        strip_answer_format("<image>\nAnswer this: which number is larger?")
        == "<image>\nAnswer this: which number is larger?"
    )
    assert strip_answer_format("Answer with a number.") == "Answer with a number."
    assert (
        text_only_question("Image-1: <image>\nImage-2: <image>\nWhich has more shapes?")
        == "Which has more shapes?"
    )
    assert text_only_question("<image>\nDescribe <image> now.") == "Describe  now."
    assert (
        parse_score("Score: 7/10") == 7
        and parse_score("I'd say 6.5 of 10") == 6.5
        and parse_score("none") is None
    )


# ----------------------------------------------------------------------------- pairing logic


def test_contains_answer_is_whole_word():
    assert contains_answer("4", "3 or 4")
    assert not contains_answer("4", "14")
    assert contains_answer("red", "Red, I think")
    assert not contains_answer("A", "a cat")  # one letter: case-sensitive
    assert contains_answer("B", "B or C")
    assert not contains_answer("1/2", "1/20")


def _judged(texts, gt="4", choices=None):
    return [judge(t, gt, choices=choices) for t in texts]


def test_pairs_every_correct_with_every_incorrect_then_drops_in_order():
    texts = [
        "I count four. Final answer: 4",  # 0 correct
        "I count five. Final answer: 5",  # 1 incorrect
        "Maybe. Final answer: 3 or 4",  # 2 incorrect, contains the correct answer
        "no idea",  # 3 format
        "I count five. Final answer: 5",  # 4 incorrect, same text as 1 -> duplicate pairs
        "Two and two. Final answer: 4",  # 5 correct
        "Fourteen. Final answer: 14",  # 6 incorrect ("4" is not a word of "14")
    ]
    judged = _judged(texts)
    assert [j["verdict"] for j in judged] == [
        "correct",
        "incorrect",
        "incorrect",
        "format",
        "incorrect",
        "correct",
        "incorrect",
    ]
    cands = plan_pairs(judged, FilterConfig())
    got = {(c["subset"], c["c"], c["r"]): c["drop"] for c in cands}
    assert got == {
        ("correctness", 0, 1): None,
        ("correctness", 0, 2): "contains_answer",
        ("correctness", 0, 4): "duplicate",
        ("correctness", 0, 6): None,
        ("correctness", 5, 1): None,
        ("correctness", 5, 2): "contains_answer",
        ("correctness", 5, 4): "duplicate",
        ("correctness", 5, 6): None,
        ("format", 0, 3): None,
        ("format", 5, 3): None,
    }
    apply_cap(cands, 3, random.Random(0))
    kept = [c for c in cands if c["subset"] == "correctness" and c["drop"] is None]
    capped = [c for c in cands if c["drop"] == "over_cap"]
    assert len(kept) == 3 and len(capped) == 1 and capped[0]["subset"] == "correctness"
    assert sum(c["drop"] is None for c in cands if c["subset"] == "format") == 2  # K is per subset
    # the cap is a seeded choice: same seed, same pairs
    again = plan_pairs(judged, FilterConfig())
    apply_cap(again, 3, random.Random(0))
    assert again == cands


def test_all_or_none_correct_is_counted_not_paired():
    assert question_status(_judged(["Final answer: 4", "so Final answer: four"])) == "all_correct"
    assert question_status(_judged(["Final answer: 5", "blah"])) == "none_correct"
    assert plan_pairs(_judged(["Final answer: 4", "Final answer: 4."]), FilterConfig()) == []
    assert plan_pairs(_judged(["Final answer: 5", "no answer"]), FilterConfig()) == []
    # only unparsable besides the correct ones: format pairs only
    cands = plan_pairs(_judged(["Final answer: 4", "no answer"]), FilterConfig())
    assert [(c["subset"], c["c"], c["r"], c["drop"]) for c in cands] == [("format", 0, 1, None)]


def test_reasoning_check_turns_a_lucky_right_answer_into_an_unsound_rejected():
    reference = "I see a red circle,  a blue square and a red square.  That is 3 shapes."
    steps = reasoning_steps(reference)
    assert steps == ["I see a red circle, a blue square and a red square.", "That is 3 shapes."]
    texts = [
        "I see a red circle, a blue square and a red square. That is 3 shapes. Final answer: 3",  # 0 sound
        "i see a red circle, a blue square and a red  square.\nThat is 3 shapes. Final answer: 3",  # 1 sound
        "I see a red circle and a blue square. That is 2 shapes. Final answer: 3",  # 2 lucky
        "I see a red circle, a blue square and a red square. Final answer: 3",  # 3 a step left out
        "I see a red circle, a blue square and a red square. That is 3 shapes. Final answer: 2",  # 4 incorrect
        "That is 3 shapes.",  # 5 format
    ]
    judged = [judge(t, "3", steps=steps, check_steps=True) for t in texts]
    assert [j["verdict"] for j in judged] == [
        "correct",
        "correct",
        "unsound",
        "unsound",
        "incorrect",
        "format",
    ]
    assert [j["sound"] for j in judged] == [True, True, False, False, True, False]
    # not checked, the same answers are all correct and only marked: the check is what tells them apart
    marked = [judge(t, "3", steps=steps) for t in texts[:4]]
    assert [(j["verdict"], j["sound"]) for j in marked] == [("correct", True)] * 2 + [("correct", False)] * 2
    assert not states_steps("That is 3 shapes. I see a red circle.", ["I see a red circle, a blue square."])
    got = {(c["subset"], c["c"], c["r"]): c["drop"] for c in plan_pairs(judged, FilterConfig())}
    # an unsound response has the right answer, so containment does not drop its pairs
    assert got == {
        ("correctness", 0, 4): None,
        ("correctness", 1, 4): None,
        ("format", 0, 5): None,
        ("format", 1, 5): None,
        ("reasoning", 0, 2): None,
        ("reasoning", 0, 3): None,
        ("reasoning", 1, 2): None,
        ("reasoning", 1, 3): None,
    }
    # only unsound right answers: nothing is correct, nothing is paired
    assert question_status(judged[2:4]) == "none_correct" and plan_pairs(judged[2:4], FilterConfig()) == []


def test_check_reasoning_build_counts_unsound_and_needs_the_field(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    rows = [
        {"id": "a", "question": "Qa What is 2 + 3?", "answer": "5", "reasoning": "2 plus 3 is 5."},
        {"id": "b", "question": "Qb What is 1 + 1?", "answer": "2"},
    ]
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "meta.json").write_text(json.dumps({"toy": {"root": ".", "annotation": "qa.jsonl"}}))
    script = {
        "Qa": ["2 plus 3 is 5. Final answer: 5", "It is 5. Final answer: 5", "Final answer: 6", "unsure"],
        "Qb": ["1 plus 1 is 2. Final answer: 2", "Final answer: 3"],
    }
    out = tmp_path / "out"
    args = ("correctness", "scripted", root / "meta.json", out, "--n", "4", "--check-reasoning")
    report = run(_args(*args), backend=ScriptedBackend(script))
    assert report["responses"] == {"correct": 1, "incorrect": 1, "format": 1, "unsound": 1}
    assert report["right_answers"] == {"total": 2, "stating_the_reference_reasoning": 1}
    assert (
        "state every step of the question's reference reasoning: 1 of 2." in (out / "report.md").read_text()
    )
    assert report["bad_rows"]["by_field"] == {"reasoning": 1}
    # unchecked, a row without the field is used, the unsound answer is correct, and the count stays
    report = run(_args(*args[:3], tmp_path / "unchecked", *args[4:-1]), backend=ScriptedBackend(script))
    assert report["responses"] == {"correct": 3, "incorrect": 2, "format": 1}
    assert report["right_answers"] == {"total": 2, "stating_the_reference_reasoning": 1}
    pairs = _pairs(out)
    assert [(p["chosen"], p["rejected"]) for p in pairs["toy_reasoning"]] == [
        ("2 plus 3 is 5. Final answer: 5", "It is 5. Final answer: 5")
    ]
    assert json.loads((out / "build.json").read_text())["settings"]["check_reasoning"] is True


def test_rule_filters():
    cfg = FilterConfig(max_words=5)
    assert rule_drop("", "x", cfg) == "empty"
    assert rule_drop("same", " same ", cfg) == "identical"
    assert rule_drop("a b c", "a b c d e f", cfg) == "too_long"
    loop = "the cat sat on " * 4
    assert rule_drop(loop, "ok", FilterConfig()) == "repetition"
    assert (
        rule_drop("fine answer here", loop, FilterConfig()) is None
    )  # a looping rejected is a good negative
    assert rule_drop("fine answer here", loop, FilterConfig(repetition_in="both")) == "repetition"
    assert rule_drop("a b", "c d", cfg) is None


def _write_qa(root: Path) -> Path:
    """Five scripted questions, one with a missing image, one unreadable line."""
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(root / "img" / "red.png")
    rows = [
        {
            "id": "q1",
            "image": "red.png",
            "question": "<image>\nQ1 How many?\nAnswer the question using a single word or phrase.",
            "answer": "4",
        },
        {
            "id": "q2",
            "image": "red.png",
            "question": "Q2 Which colour?\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly.",
            "answer": "A",
            "choices": {"A": "red", "B": "blue"},
        },
        {"id": "q3", "question": "Q3 What is 2 + 2?", "answer": "4"},
        {"id": "q4", "question": "Q4 What is 3 + 3?", "answer": "6"},
        {"id": "q5", "image": "gone.png", "question": "Q5 missing image", "answer": "1"},
    ]
    text = (
        "".join(json.dumps(r) + "\n" for r in rows[:3])
        + "{not json\n"
        + "".join(json.dumps(r) + "\n" for r in rows[3:])
    )
    (root / "qa.jsonl").write_text(text)
    (root / "meta.json").write_text(
        json.dumps({"toy": {"root": "img", "annotation": "qa.jsonl", "max_dynamic_patch": 2}})
    )
    return root / "meta.json"


SCRIPT = {
    "Q1": [
        "good: Final answer: 4",
        "Final answer: 5",
        "Final answer: 4 or 5",
        "hmm",
        "Final answer: 5",
        "good too: Final answer: 4",
    ],
    "Q2": ["good, it is red. Final answer: A", "Final answer: B", "Final answer: (A)", "no letter"],
    "Q3": ["Final answer: 4", "Final answer: four"],
    "Q4": ["Final answer: 5", "dunno"],
}


def test_correctness_build_on_scripted_backend(tmp_path, processor):
    meta = _write_qa(tmp_path / "data")
    judge_prompt = tmp_path / "judge.txt"
    judge_prompt.write_text("JUDGE {question} RESPONSE: {response}")
    backend = ScriptedBackend(SCRIPT)
    out = tmp_path / "out"
    report = run(
        _args(
            "correctness",
            "scripted",
            meta,
            out,
            "--n",
            "6",
            "--max-pairs-per-question",
            "3",
            "--quality-prompt",
            str(judge_prompt),
        ),
        backend=backend,
    )
    _check_counts(report, 6)
    assert report["questions"]["by_status"] == {
        "paired": 2,
        "no_pair_kept": 0,
        "all_correct": 1,
        "none_correct": 1,
        "bad_row": 2,
    }
    assert report["bad_rows"]["by_field"] == {
        "malformed JSON (Expecting property name enclosed in double quotes)": 1,
        "image": 1,
    }
    # Q1: correct {0, 5} x incorrect {1, 2, 4} -> contains_answer 2, duplicate 2, 2 left; format {0, 5} x {3}
    # Q2: correct {0, 2} x incorrect {1} -> (2, 1) fails quality ("good" only in 0); format (0, 3) kept, (2, 3) quality
    assert report["subsets"]["toy_correctness"] == {
        "candidates": 8,
        "kept": 3,
        "dropped": {"contains_answer": 2, "duplicate": 2, "quality": 1},
    }
    assert report["subsets"]["toy_format"] == {"candidates": 4, "kept": 3, "dropped": {"quality": 1}}
    assert report["responses"] == {"correct": 6, "incorrect": 5, "format": 3}
    assert report["accuracy_histogram"]["0/6"] == 1 and sum(report["accuracy_histogram"].values()) == 4
    # every generation request asked the CoT prompt, seeded per question
    gen = [r for reqs, p in backend.calls if p.n == 6 for r in reqs]
    assert all(
        r.question.endswith(COT_INSTRUCTION) and "Answer with the option" not in r.question for r in gen
    )
    assert {r.seed for r in gen} == {question_seed(0, f"toy:q{i}") for i in (1, 2, 3, 4)}
    pairs = _pairs(out)
    assert sorted((p["chosen"], p["rejected"]) for p in pairs["toy_correctness"]) == sorted(
        [
            ("good: Final answer: 4", "Final answer: 5"),
            ("good too: Final answer: 4", "Final answer: 5"),
            ("good, it is red. Final answer: A", "Final answer: B"),
        ]
    )
    assert all(
        p["image"] == "red.png" and p["source"] in ("toy:q1", "toy:q2") for p in pairs["toy_correctness"]
    )
    dataset, _ = load_mmpr(out / "meta.json", processor)
    assert len(dataset) == 6 and set(dataset["subset"]) == {"toy_correctness", "toy_format"}
    assert Path(dataset[0]["image_paths"][0]).resolve() == (tmp_path / "data" / "img" / "red.png").resolve()
    assert (out / "accuracy_histogram.png").stat().st_size > 1000
    assert "| **in** | 6 |" in (out / "report.md").read_text()


def test_copy_images_and_settings_guard(tmp_path, processor):
    meta = _write_qa(tmp_path / "data")
    out = tmp_path / "out"
    run(
        _args("correctness", "scripted", meta, out, "--n", "6", "--copy-images"),
        backend=ScriptedBackend(SCRIPT),
    )
    entry = json.loads((out / "meta.json").read_text())["toy_correctness"]
    assert entry["root"] == "images/toy" and (out / "images" / "toy" / "red.png").is_file()
    assert len(load_mmpr(out / "meta.json", processor)[0]) > 0
    with pytest.raises(UserError, match="seed"):
        run(
            _args("correctness", "scripted", meta, out, "--n", "6", "--seed", "1"),
            backend=ScriptedBackend(SCRIPT),
        )


def test_duplicated_input_rows_do_not_double_pairs(tmp_path):
    rows = [{"id": f"d{i}", "question": "Q1 What is 2 + 2?", "answer": "4"} for i in range(2)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    report = run(
        _args("correctness", "scripted", tmp_path / "qa.jsonl", out, "--n", "6"),
        backend=ScriptedBackend(SCRIPT),
    )
    _check_counts(report, 2)
    # per question: 2 kept correctness pairs (see above) and 2 format pairs; the second copy's are duplicates
    assert report["subsets"]["qa_correctness"]["kept"] == 2 and report["subsets"]["qa_format"]["kept"] == 2
    assert report["pairs"]["dropped"]["duplicate"] == 2 * 2 + 4
    assert report["questions"]["by_status"]["no_pair_kept"] == 1
    assert {p["source"] for rows in _pairs(out).values() for p in rows} == {"qa:d0"}


# --------------------------------------------------------------------------------- DropoutNTP


def test_truncate_and_join():
    assert truncate_words("one two three four five", 0.5) == "one two"
    assert truncate_words("a\nb  c d", 0.5) == "a\nb"
    assert truncate_words("one two", 0.9) == "one"  # always a word left to continue
    assert truncate_words("single", 0.5) is None
    assert join_continuation("I see", "a red circle.") == "I see a red circle."
    assert join_continuation("I see it", ", clearly") == "I see it, clearly"


def test_dropout_ntp_on_tiny_model(tmp_path, tiny_model, synthetic, processor):
    from mpo.generation import make_backend

    backend = Recording(make_backend("transformers", str(tiny_model), batch_size=4))
    out = tmp_path / "dntp"
    report = run(
        _args(
            "dropout-ntp",
            tiny_model,
            synthetic / "sft" / "meta.json",
            out,
            "--max-new-tokens",
            "24",
            "--batch-size",
            "4",
        ),
        backend=backend,
    )
    _check_counts(report, 10)
    continued = [r for r in backend.requests if r.prefix]
    assert continued and all(r.images == [] and "<image>" not in r.question for r in continued)
    pairs = _pairs(out)["synthetic_sft_dropout_ntp"]
    assert len(pairs) == report["pairs"]["kept"] > 0
    by_prefix = {r.prefix: r for r in continued}
    for p in pairs:
        words = p["chosen"].split()
        prefix = truncate_words(p["chosen"], 0.5)
        assert prefix.split() == words[: max(1, len(words) // 2)] and prefix in by_prefix
        assert p["rejected"].startswith(prefix) and p["rejected"] != p["chosen"]
    dataset, _ = load_mmpr(out / "meta.json", processor)
    assert len(dataset) == len(pairs)


def test_dropout_ntp_chosen_from_data(tmp_path, synthetic):
    backend = ScriptedBackend({"": ["and then it continues"]})
    report = run(
        _args(
            "dropout-ntp",
            "scripted",
            synthetic / "sft" / "meta.json",
            tmp_path / "o",
            "--chosen-from",
            "data",
        ),
        backend=backend,
    )
    _check_counts(report, 10)
    sft = {
        f"synthetic_sft:{r['id']}": r["conversations"][1]["value"]
        for r in _lines(synthetic / "sft" / "train.jsonl")
    }
    pairs = _pairs(tmp_path / "o")["synthetic_sft_dropout_ntp"]
    short = sum(len(v.split()) < 2 for v in sft.values())
    assert report["subsets"]["synthetic_sft_dropout_ntp"]["dropped"].get("too_short", 0) == short
    assert len(pairs) == 10 - short
    for p in pairs:
        assert p["chosen"] == sft[p["source"]]
        assert p["rejected"] == truncate_words(p["chosen"], 0.5) + " and then it continues"


# ------------------------------------------------------------------------- journal and shards


def test_journal_discards_a_half_written_line_and_locks(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.append({"key": "a", "index": 0})
        j.append({"key": "b", "index": 1})
    with open(path, "ab") as f:
        f.write(b'{"key": "c", "ind')
    with Journal(path) as j:
        assert set(j.done) == {"a", "b"} and j.discarded_bytes == len(b'{"key": "c", "ind')
        with pytest.raises(UserError, match="another process"):
            Journal(path)
        j.append({"key": "c", "index": 2})
    assert [r["key"] for r in read_records(path)[0]] == ["a", "b", "c"]
    path.write_text('{"key": "a"}\nbroken\n{"key": "b"}\n')
    with pytest.raises(UserError, match=r"j.jsonl:2: damaged"):
        Journal(path)


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    assert parse_shard(None, {}) == (0, 1)
    assert parse_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(UserError):
            parse_shard(bad)


def correctness_argv(model: Path, synthetic: Path, out: Path) -> list[str]:
    return [
        "correctness",
        "--model",
        str(model),
        "--data",
        str(synthetic / "qa" / "meta.json"),
        "--out",
        str(out),
        *GEN,
    ]


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory, tiny_model, synthetic) -> Path:
    """The uninterrupted, unsharded reference build on the tiny model (answers tagged)."""
    out = tmp_path_factory.mktemp("runs") / "whole"
    run_tagged(correctness_argv(tiny_model, synthetic, out))
    return out


def test_correctness_on_tiny_model_loads_for_training(unsharded, processor):
    report = json.loads((unsharded / "report.json").read_text())
    _check_counts(report, 12)
    assert (
        report["responses"]["correct"] + report["responses"]["incorrect"] + report["responses"]["format"]
        == 12 * 4
    )
    assert report["pairs"]["kept"] > 0
    dataset, _ = load_mmpr(unsharded / "meta.json", processor)
    assert len(dataset) == report["pairs"]["kept"]
    assert set(dataset["subset"]) <= {"synthetic_qa_correctness", "synthetic_qa_format"}


def _journal_records(out: Path) -> list[dict]:
    return [r for path in sorted((out / "shards").glob("*.jsonl")) for r in read_records(path)[0]]


@pytest.mark.slow
def test_killed_build_resumes_to_the_uninterrupted_result(tmp_path, tiny_model, synthetic, unsharded):
    out = tmp_path / "killed"
    argv = correctness_argv(tiny_model, synthetic, out)
    argv[argv.index("--batch-size") + 1] = "1"  # one line per question: kill lands between questions
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "pair_backends.py"), "0.4", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    journal = out / "shards" / "shard-00000-of-00001.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = journal.read_bytes().count(b"\n")
    assert 3 <= done < 12 and not (out / "meta.json").exists()
    with open(journal, "ab") as f:  # as if killed in the middle of a write
        f.write(b'{"key": "synthetic_qa:synthetic-qa-0000')
    run_tagged(argv)  # the same command again
    records = _journal_records(out)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 12  # no duplicate, no gap
    assert sorted(records, key=lambda r: r["index"]) == sorted(
        _journal_records(unsharded), key=lambda r: r["index"]
    )
    assert _pairs(out) == _pairs(unsharded)
    assert json.loads((out / "report.json").read_text()) == json.loads(
        (unsharded / "report.json").read_text()
    )


def test_two_shards_merged_equal_one_run(tmp_path, tiny_model, synthetic, unsharded):
    out = tmp_path / "sharded"
    argv = correctness_argv(tiny_model, synthetic, out)
    assert run_tagged([*argv, "--shard", "1/2"]) is None  # shard 0 not done: no merge yet
    with pytest.raises(UserError, match="shard 0/2: 6 questions"):
        merge(out)
    report = run_tagged([*argv, "--shard", "0/2", "--batch-size", "5"])  # the last shard merges
    assert report is not None
    for name, rows in _pairs(unsharded).items():
        assert sorted(map(json.dumps, _pairs(out)[name])) == sorted(map(json.dumps, rows))
    assert set(_pairs(out)) == set(_pairs(unsharded))
    whole = json.loads((unsharded / "report.json").read_text())
    assert {k: v for k, v in report.items() if k != "settings"} == {
        k: v for k, v in whole.items() if k != "settings"
    }
    assert cli_main(["build-pairs", "merge", str(out)]) == 0


def test_cli_lists_build_pairs(capsys):
    assert cli_main(["--help"]) == 0
    assert "build-pairs" in capsys.readouterr().out


def test_python_dash_m_mpo_is_the_mpo_command():
    done = subprocess.run(
        [sys.executable, "-m", "mpo", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "build-pairs" in done.stdout
