"""Test-time scaling in `mpo eval`: majority vote and best-of-N on fixed responses (hand-counted votes),
accuracy against N, resume of a sampled run, N = 1 against plain sampled evaluation on the tiny model,
and the DPO implicit reward against an independent log-prob computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FakeBackend
from PIL import Image

from eval.config import EvalConfig
from eval.reports import compare
from eval.run import evaluate
from eval.scaling import best_of_n, majority, sample_counts, vote_key
from mpo.cli import main as cli_main
from mpo.errors import UserError

# core question -> 8 sampled CoT responses (fake backend); ground truths below
SAMPLES = {
    # votes 3,3,4,-,4,3,4,4 -> N=1: 3 (wrong), N=2: 3, N=4: 3 (2 vs 1), N=8: 4 (4 vs 3)
    "How many dots?": [
        "Final answer: 3",
        "I count three. Final answer: three.",
        "Final answer: 4",
        "no idea",
        "Final answer: 4",
        "Final answer: 3",
        "\\boxed{4}",
        "Final answer: 4",
    ],
    # unparsable first, then 2 votes B, 2 votes A -> tie at N=8 goes to B (voted first, at sample 2)
    "Which colour?": [
        "hmm",
        "Final answer: (B)",
        "Final answer: A",
        "Final answer: B. blue",
        "Final answer: A",
        "nothing",
        "nothing",
        "nothing",
    ],
    # never parsable -> the first response stands, wrong and unparsable at every N
    "Is it raining?": ["maybe"] * 8,
}
ROWS = [
    {"question": "How many dots?", "answer": "4"},
    {"question": "Which colour?", "answer": "B", "choices": {"A": "red", "B": "blue"}},
    {"question": "Is it raining?", "answer": "yes"},
]


@pytest.fixture
def qa(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------- the vote itself


def test_majority_known_votes_ties_and_unparsable():
    assert majority(["3", "3", "4", None, "4", "3", "4", "4"]) == 2  # 4 wins 4:3, first cast at index 2
    assert majority(["3", "3", "4", None]) == 0
    assert majority(["5", "4", "4", "5"]) == 0  # tie: the answer voted first
    assert majority(["4", "5", "5", "4"]) == 0
    assert majority([None, "5", "4", "4", "5"]) == 1
    assert majority([None, None, "7"]) == 2  # unparsable responses vote for nothing
    assert majority([None, None]) == 0  # no vote: the first response stands
    assert sample_counts(8) == [1, 2, 4, 8] and sample_counts(6) == [1, 2, 4, 6] and sample_counts(1) == [1]


def test_vote_keys_group_equal_answers():
    choices = {"A": "red", "B": "blue"}
    assert (
        vote_key("B", choices)
        == vote_key("(B)", choices)
        == vote_key("B. blue", choices)
        == vote_key("blue", choices)
    )
    assert vote_key("A", choices) != vote_key("B", choices)
    assert vote_key("three.", None) == vote_key("3", None) != vote_key("4", None)
    assert vote_key(None, None) is None and vote_key("...", None) is None


def test_best_of_n_picks_highest_earliest_on_ties():
    assert best_of_n([0.1, 0.9, 0.3]) == 1
    assert best_of_n([0.5, 0.2, 0.5]) == 0
    assert best_of_n([-3.0]) == 0


# ------------------------------------------------------------------------- through `mpo eval`


def test_majority_accuracy_against_n(qa, tmp_path):
    out = tmp_path / "maj"
    res = evaluate(
        EvalConfig("fake-model", [str(qa)], out, cot=True, backend=FakeBackend(SAMPLES), num_samples=8)
    )
    # hand-counted from SAMPLES: dots right at N=8 only; colour wrong at N=1 (unparsable), right from N=2
    # ("(B)" alone), N=4 (B 2 : A 1) and N=8 (B 2 : A 2, B voted first); raining never
    curve = {p["n"]: (p["correct"], p["total"]) for p in res["test_time_scaling"]["curve"]}
    assert curve == {1: (0, 3), 2: (1, 3), 4: (1, 3), 8: (2, 3)}
    assert res["overall"]["correct"] == 2 and res["overall"]["unparsable"] == 1
    assert res["temperature"] == 0.7 and res["num_samples"] == 8 and res["aggregate"] == "majority"
    recs = {r["question"]: r for r in lines(out / "predictions.jsonl")}
    dots = recs["How many dots?"]
    assert dots["pick"] == 2 and dots["prediction"] == "4" and dots["response"] == "Final answer: 4"
    assert {k: v["pick"] for k, v in dots["at_n"].items()} == {"1": 0, "2": 0, "4": 0, "8": 2}
    assert recs["Which colour?"]["pick"] == 1 and recs["Which colour?"]["prediction"] == "(B)"
    assert recs["Is it raining?"]["reason"] == "unparsable" and len(recs["Is it raining?"]["responses"]) == 8
    md = (out / "results.md").read_text()
    assert "Accuracy against N" in md and "| 8 | 2 | 3 | 66.7 |" in md and "| 1 | 0 | 3 | 0.0 |" in md
    assert Image.open(out / "scaling.png").size[0] > 100


def test_best_of_n_with_fixed_scores(qa, tmp_path):
    class FixedScores:
        name = "fixed"

        def __init__(self):
            self.calls = []

        def score(self, request, responses):
            self.calls.append(len(responses))
            table = {
                "Final answer: 4": 2.0,
                "Final answer: A": 5.0,
                "Final answer: B. blue": 5.0,
                "maybe": 0.0,
            }
            return [table.get(r, 1.0) for r in responses]

    scorer = FixedScores()
    res = evaluate(
        EvalConfig(
            "fake-model",
            [str(qa)],
            tmp_path / "bon",
            cot=True,
            backend=FakeBackend(SAMPLES),
            num_samples=8,
            aggregate="best-of-n",
            scorer=scorer,
        )
    )
    recs = {r["question"]: r for r in lines(tmp_path / "bon" / "predictions.jsonl")}
    assert scorer.calls == [8, 8, 8]
    # dots: the first 2.0 is sample 2 ("Final answer: 4"); colour: A (sample 2) and "B. blue" (3) tie at 5.0,
    # and at N=2 "hmm" and "(B)" tie at 1.0 -> "hmm" (the earlier)
    assert recs["How many dots?"]["pick"] == 2 and recs["How many dots?"]["correct"]
    assert recs["Which colour?"]["pick"] == 2 and not recs["Which colour?"]["correct"]
    assert {k: v["pick"] for k, v in recs["Which colour?"]["at_n"].items()} == {
        "1": 0,
        "2": 0,
        "4": 2,
        "8": 2,
    }
    curve = {p["n"]: p["correct"] for p in res["test_time_scaling"]["curve"]}
    assert curve == {1: 0, 2: 0, 4: 1, 8: 1}
    assert res["scorer"] == "fixed"


def test_sampled_run_resumes_without_resampling(qa, tmp_path):
    full_backend = FakeBackend(SAMPLES)
    full = evaluate(
        EvalConfig(
            "fake-model",
            [str(qa)],
            tmp_path / "full",
            cot=True,
            backend=full_backend,
            num_samples=8,
            seed=5,
            batch_size=1,
        )
    )
    out = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="backend died"):
        evaluate(
            EvalConfig(
                "fake-model",
                [str(qa)],
                out,
                cot=True,
                backend=FakeBackend(SAMPLES, fail_after=2),
                num_samples=8,
                seed=5,
                batch_size=1,
            )
        )
    assert len(lines(out / "predictions.jsonl")) == 2
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"benchmark": "qa", "index": "2", "respo')  # torn line of the killed write
    second = FakeBackend(SAMPLES)
    res = evaluate(
        EvalConfig(
            "fake-model", [str(qa)], out, cot=True, backend=second, num_samples=8, seed=5, batch_size=1
        )
    )
    assert [r.question for r in second.requests] == [
        full_backend.requests[2].question
    ]  # only the missing item
    assert second.requests[0].seed == full_backend.requests[2].seed  # seeded by the item, not its position
    recs = lines(out / "predictions.jsonl")
    assert len(recs) == 3 and len({(r["benchmark"], r["index"]) for r in recs}) == 3
    assert recs == lines(tmp_path / "full" / "predictions.jsonl")
    assert {k: v for k, v in res.items() if k != "resumed"} == {
        k: v for k, v in full.items() if k != "resumed"
    }
    with pytest.raises(UserError, match=r"num_samples: 8 -> 4"):
        evaluate(
            EvalConfig(
                "fake-model", [str(qa)], out, cot=True, backend=FakeBackend(SAMPLES), num_samples=4, seed=5
            )
        )
    with pytest.raises(UserError, match=r"seed: 5 -> 6"):
        evaluate(
            EvalConfig(
                "fake-model", [str(qa)], out, cot=True, backend=FakeBackend(SAMPLES), num_samples=8, seed=6
            )
        )


def test_bad_flags_are_refused(qa, tmp_path):
    backend = FakeBackend(SAMPLES)
    with pytest.raises(UserError, match="--temperature > 0"):
        evaluate(EvalConfig("m", [str(qa)], tmp_path / "a", backend=backend, num_samples=4, temperature=0.0))
    with pytest.raises(UserError, match="needs --reference"):
        evaluate(
            EvalConfig("m", [str(qa)], tmp_path / "b", backend=backend, num_samples=4, aggregate="best-of-n")
        )
    with pytest.raises(UserError, match="--scorer judge needs --judge-model"):
        evaluate(
            EvalConfig(
                "m",
                [str(qa)],
                tmp_path / "c",
                backend=backend,
                num_samples=4,
                aggregate="best-of-n",
                scorer="judge",
            )
        )
    with pytest.raises(UserError, match="--num-samples must be >= 1"):
        evaluate(EvalConfig("m", [str(qa)], tmp_path / "d", backend=backend, num_samples=0))


def test_compare_shows_both_curves(qa, tmp_path):
    worse = {q: list(reversed(v)) for q, v in SAMPLES.items()}
    evaluate(
        EvalConfig("a", [str(qa)], tmp_path / "a", cot=True, backend=FakeBackend(SAMPLES), num_samples=8)
    )
    evaluate(EvalConfig("b", [str(qa)], tmp_path / "b", cot=True, backend=FakeBackend(worse), num_samples=4))
    report = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp", names=["A", "B"])
    # B's first 4 samples: dots 4, 4, 3, 4 (right at every N); colour three unparsable then A; raining never
    assert [p["correct"] for p in report["test_time_scaling"]["B"]["curve"]] == [1, 1, 1]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| 1 | 0.0 | 33.3 |" in md and "| 4 | 33.3 | 33.3 |" in md and "| 8 | 66.7 | – |" in md
    assert Image.open(tmp_path / "cmp" / "compare_scaling.png").size[0] > 100


# ------------------------------------------------------------------------------ tiny model


def test_n1_of_a_sampled_run_equals_plain_sampled_eval(tiny_model, tmp_path):
    (tmp_path / "red.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), (220, 30, 30)).save(tmp_path / "red.png")
    rows = [
        {"image": str(tmp_path / "red.png"), "question": "<image>\nWhat colour is it?", "answer": "red"},
        {"question": "What is 2 + 2?", "answer": "4"},
        {"image": str(tmp_path / "red.png"), "question": "<image>\nIs it red?", "answer": "yes"},
    ]
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        "eval",
        "--model",
        str(tiny_model),
        "--data",
        str(data),
        "--backend",
        "transformers",
        "--cot",
        "--max-new-tokens",
        "6",
        "--temperature",
        "1.0",
        "--seed",
        "3",
    ]
    assert cli_main([*common, "--num-samples", "4", "--batch-size", "2", "--out", str(tmp_path / "n4")]) == 0
    assert cli_main([*common, "--out", str(tmp_path / "n1")]) == 0
    assert cli_main([*common[:-1], "4", "--out", str(tmp_path / "seed4")]) == 0
    n4 = lines(tmp_path / "n4" / "predictions.jsonl")
    n1 = lines(tmp_path / "n1" / "predictions.jsonl")
    other_seed = lines(tmp_path / "seed4" / "predictions.jsonl")
    assert [r["responses"][0] for r in n4] == [r["response"] for r in n1]
    assert [r["responses"][0] for r in n4] != [r["response"] for r in other_seed]  # the seed matters
    assert all(len(set(r["responses"])) > 1 for r in n4)  # N different samples, not one repeated
    res4 = json.loads((tmp_path / "n4" / "results.json").read_text())
    res1 = json.loads((tmp_path / "n1" / "results.json").read_text())
    assert res4["test_time_scaling"]["curve"][0]["correct"] == res1["overall"]["correct"]
    assert [p["n"] for p in res4["test_time_scaling"]["curve"]] == [1, 2, 4]


def _independent_logp(model, processor, question: str, image: Path | None, response: str) -> float:
    """Σ log p(response tokens) from one unbatched forward pass over the whole conversation text."""
    n_tok = processor.image_seq_length
    pixel_values, body = None, question
    if image is not None:
        out = processor.image_processor(
            images=[Image.open(image).convert("RGB")],
            crop_to_patches=True,
            max_patches=6,
            return_tensors="pt",
        )
        pixel_values = out["pixel_values"]
        tiles = int(out["num_patches"][0])
        body = question.replace("<image>", "<img>" + "<IMG_CONTEXT>" * (n_tok * tiles) + "</img>", 1)
    system = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
    prompt = (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"
    )
    tok = processor.tokenizer
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tok(response + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    kwargs = {"input_ids": ids}
    if pixel_values is not None:
        kwargs["pixel_values"] = pixel_values
    with torch.no_grad():
        logits = model(**kwargs).logits[0].double()
    total = 0.0
    for t in range(len(prompt_ids), ids.shape[1]):
        total += float(torch.log_softmax(logits[t - 1], -1)[ids[0, t]])
    return total


def test_reward_scorer_matches_beta_logratio(tiny_model, perturbed_policy, tmp_path):
    from eval.reward import RewardScorer
    from mpo.generation import GenerationRequest
    from mpo.models.loading import load_model, load_processor

    wide = Image.new("RGB", (128, 64), (30, 70, 220))  # 2 x 1 tiles + thumbnail: features shared by the rows
    wide.paste((220, 30, 30), (0, 0, 64, 64))
    wide.save(tmp_path / "blue.png")
    processor = load_processor(tiny_model)
    policy, reference = load_model(perturbed_policy, training=False), load_model(tiny_model, training=False)
    scorer = RewardScorer(policy, reference, processor, beta=0.5)
    responses = ["It is blue. Final answer: blue", "red", "Final answer: 3 or maybe 4, I am not sure"]
    for image, question in ((tmp_path / "blue.png", "<image>\nWhat colour?"), (None, "What is 1 + 2?")):
        request = GenerationRequest(
            question=question, images=[str(image)] if image else [], max_dynamic_patch=6
        )
        got = scorer.score(request, responses)
        want = [
            0.5
            * (
                _independent_logp(policy, processor, question, image, r)
                - _independent_logp(reference, processor, question, image, r)
            )
            for r in responses
        ]
        assert got == pytest.approx(want, abs=2e-3)
        assert max(abs(w) for w in want) > 0.05  # the policy differs from the reference


def test_best_of_n_reward_through_eval(tiny_model, perturbed_policy, tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    out = tmp_path / "bon"
    res = evaluate(
        EvalConfig(
            str(perturbed_policy),
            [str(data)],
            out,
            cot=True,
            backend="transformers",
            num_samples=4,
            temperature=1.0,
            max_new_tokens=6,
            aggregate="best-of-n",
            reference=str(tiny_model),
            beta=0.1,
        )
    )
    [rec] = lines(out / "predictions.jsonl")
    assert len(rec["scores"]) == 4 and rec["pick"] == max(range(4), key=lambda i: (rec["scores"][i], -i))
    assert res["scorer"] == "reward" and res["reference"] == str(Path(tiny_model).resolve())


def test_demo_report_section_reads_both_curves(qa, tmp_path):
    from mpo.demo import scaling_section

    worse = {q: list(reversed(v)) for q, v in SAMPLES.items()}
    evaluate(
        EvalConfig(
            "sft",
            [str(qa)],
            tmp_path / "eval" / "sft_majority",
            cot=True,
            backend=FakeBackend(worse),
            num_samples=8,
        )
    )
    evaluate(
        EvalConfig(
            "mpo",
            [str(qa)],
            tmp_path / "eval" / "mpo_majority",
            cot=True,
            backend=FakeBackend(SAMPLES),
            num_samples=8,
        )
    )
    compare(
        [tmp_path / "eval" / "sft_majority", tmp_path / "eval" / "mpo_majority"],
        tmp_path / "eval" / "compare_majority",
        names=["SFT", "MPO"],
    )
    text = "\n".join(scaling_section(tmp_path))
    # SFT (reversed samples): dots 4 at N=1 (right), N=8 4:3 (right); colour never right -> 33.3 both.
    # MPO: 0.0 at N=1, 66.7 at N=8 (test_majority_accuracy_against_n).
    assert "| SFT | 33.3 % | 33.3 % | +0.0 |" in text and "| MPO | 0.0 % | 66.7 % | +66.7 |" in text
    assert "+0.0 points for SFT and +66.7 for MPO" in text and "does not narrow" in text
    assert "| 8 | 33.3 | 66.7 |" in text


def test_greedy_folders_from_before_sampling_still_resume(qa, tmp_path):
    out = tmp_path / "greedy"
    first = evaluate(EvalConfig("fake-model", [str(qa)], out, cot=True, backend=FakeBackend(SAMPLES)))
    assert "test_time_scaling" not in first and not (out / "scaling.png").exists()
    run = json.loads((out / "run.json").read_text())
    for key in ("num_samples", "temperature", "seed", "aggregate", "scorer", "reference", "beta"):
        del run[key]  # run.json as written before these settings existed
    (out / "run.json").write_text(json.dumps(run))
    again = evaluate(
        EvalConfig("fake-model", [str(qa)], out, cot=True, backend=FakeBackend(SAMPLES, fail_after=0), seed=9)
    )
    assert again["resumed"] == 3 and again["overall"] == first["overall"]
    with pytest.raises(UserError, match=r"temperature: 0.0 -> 0.7"):
        evaluate(
            EvalConfig("fake-model", [str(qa)], out, cot=True, backend=FakeBackend(SAMPLES), num_samples=2)
        )


def test_best_of_n_by_a_judge(qa, tmp_path):
    class FakeJudge:
        """Grades a response by its text (as a judge model would reply), records the prompts."""

        def __init__(self):
            self.prompts = []

        def generate(self, requests, params):
            self.prompts += requests
            grade = {
                "Final answer: 4": "0.9",
                "Final answer: (B)": "Score: 0.8",
                "Final answer: A": "1.5 (too high)",
            }
            return [
                [next((g for r, g in grade.items() if f"Response:\n{r}\n" in q.question), "no idea")]
                for q in requests
            ]

    judge = FakeJudge()
    res = evaluate(
        EvalConfig(
            "fake-model",
            [str(qa)],
            tmp_path / "judge",
            cot=True,
            backend=FakeBackend(SAMPLES),
            num_samples=8,
            aggregate="best-of-n",
            scorer="judge",
            judge_backend=judge,
        )
    )
    recs = {r["question"]: r for r in lines(tmp_path / "judge" / "predictions.jsonl")}
    assert recs["How many dots?"]["scores"] == [0.0, 0.0, 0.9, 0.0, 0.9, 0.0, 0.0, 0.9]
    assert recs["Which colour?"]["scores"][:3] == [0.0, 0.8, 0.0]  # a grade outside [0, 1] grades 0
    assert recs["Which colour?"]["pick"] == 1 and recs["Which colour?"]["correct"]
    assert len(judge.prompts) == 24 and res["scorer"] == "judge" and res["overall"]["correct"] == 2
