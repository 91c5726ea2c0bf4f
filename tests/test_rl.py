"""`mpo rl`: GSPO on TRL's GRPOTrainer (mpo.rl), its rewards, query selection and prompts.

- the GSPO loss of the trainer against the formula written out here, on a hand-made batch;
- the rewards against the verdicts `mpo build-pairs correctness` wrote for the same responses;
- the query filter at its boundaries, and the accuracies read back from a real pair build;
- a prompt under RL byte for byte the prompt of the MPO collator and of the generation backend (evaluation,
  pair building);
- `mpo rl` end to end from another directory, then `mpo eval` and `mpo push --dry-run` on its output;
- two ZeRO-2 / ZeRO-3 ranks on the CPU, one with an image question and one without, whose logged rewards are
  the checker's verdicts on the logged completions; a batch without images runs the vision tower on a blank
  tile without changing a number.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, accelerate_launch, free_port

from data_builders.build_pairs import run
from data_builders.synthetic import generate
from mpo.cli.build_pairs import build_parser
from mpo.generation import GenerationRequest, SamplingParams
from mpo.grading.verdicts import Truth, judge_against
from mpo.prompts import COT_INSTRUCTION
from mpo.rl.config import GSPOConfig, parse_range
from mpo.rl.data import as_dataset, load_questions
from mpo.rl.queries import Accuracy, build_accuracy, in_range, select
from mpo.rl.rewards import reward_funcs


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, n_sft=8, n_qa=10, n_eval=6, seed=5)
    return out


@pytest.fixture(scope="module")
def trainer(tiny_model, synthetic, processor, tmp_path_factory):
    """A GSPOTrainer on the tiny model (nothing trained)."""
    from mpo.models.loading import load_model
    from mpo.rl.trainer import GSPOTrainer

    rows, _ = load_questions(synthetic / "qa" / "meta.json")
    args = GSPOConfig(
        output_dir=str(tmp_path_factory.mktemp("gspo")),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        report_to=[],
        gradient_checkpointing=False,
    )
    return GSPOTrainer(
        load_model(tiny_model), args=args, train_dataset=as_dataset(rows), processing_class=processor
    )


# ---- the GSPO objective ------------------------------------------------------------------------------


def gspo_loss(logps, old_logps, mask, advantages, eps_low: float, eps_high: float) -> torch.Tensor:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071, eq. 5 and 7), written out:
    s_i = exp( Σ_t m_it (logp_it − old_it) / Σ_t m_it ),
    J = (1/G) Σ_i min( s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i ), loss = −J."""
    s = torch.exp(((logps - old_logps) * mask).sum(-1) / mask.sum(-1))
    clipped = torch.clamp(s, 1 - eps_low, 1 + eps_high)
    return -torch.minimum(s * advantages, clipped * advantages).mean()


@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.2, 0.28)])
def test_gspo_loss_is_the_sequence_level_objective(trainer, monkeypatch, eps):
    """The trainer's loss, its gradient and its clip ratios on a hand-made batch against the formula above."""
    gen = torch.Generator().manual_seed(0)
    batch, length = 6, 5
    old = -torch.rand(batch, length, generator=gen) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]] * 2)
    # per sequence, a mean log-ratio of shift (token noise of zero mean over its mask): some sequences inside
    # the clipping range, some outside, on either side
    noise = 0.2 * torch.randn(batch, length, generator=gen) * mask
    noise -= (noise.sum(-1) / mask.sum(-1))[:, None] * mask
    shift = torch.tensor([0.3, -0.3, 0.1, -0.1, 1e-4, -0.5])[:, None]
    new = (old + shift + noise).requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    monkeypatch.setattr(trainer, "epsilon_low", eps[0])
    monkeypatch.setattr(trainer, "epsilon_high", eps[1])
    monkeypatch.setattr(
        trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: (new, torch.ones_like(new), None)
    )
    inputs = {
        "prompt_ids": torch.ones(batch, 2, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 2, dtype=torch.long),
        "completion_ids": torch.ones(batch, length, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    trainer.model.eval()  # evaluation: no accumulation normaliser
    trainer._metrics["eval"].clear()
    loss = trainer._compute_loss(trainer.model, inputs)
    (grad,) = torch.autograd.grad(loss, new)
    leaf = new.detach().clone().requires_grad_(True)
    expected = gspo_loss(leaf, old, mask, advantages, *eps)
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)
    s = torch.exp(((new - old) * mask).sum(-1) / mask.sum(-1)).detach()
    high = ((s > 1 + eps[1]) & (advantages > 0)).float().mean().item()
    low = ((s < 1 - eps[0]) & (advantages < 0)).float().mean().item()
    assert trainer._metrics["eval"]["clip_ratio/high_mean"][-1] == pytest.approx(high)
    assert trainer._metrics["eval"]["clip_ratio/low_mean"][-1] == pytest.approx(low)
    assert 0 < high + low < 1  # some sequences clipped, some not


def test_gspo_defaults():
    # read from the fields: building a TrainingArguments here would reset the accelerate state of the trainer
    args = {f.name: f.default for f in dataclasses.fields(GSPOConfig)}
    assert (args["importance_sampling_level"], args["loss_type"], args["beta"]) == ("sequence", "grpo", 0.0)
    assert (args["epsilon"], args["epsilon_high"], args["query_accuracy"]) == (3e-4, 4e-4, "0.2,0.8")
    assert parse_range("0,1") == (0.0, 1.0) and parse_range([0.3, 0.6]) == (0.3, 0.6)
    for bad in ("0.8,0.2", "0.2", "a,b", "0.2,1.5"):
        with pytest.raises(ValueError, match="query_accuracy"):
            parse_range(bad)
    with pytest.raises(ValueError, match="reward_funcs"):
        GSPOConfig(output_dir="unused", report_to=[], reward_funcs=["length"])


# ---- rewards = the pair builder's verdicts -----------------------------------------------------------


class TruthBackend:
    """Per question: its reasoning and answer (correct and sound), the answer alone (correct, unsound),
    a wrong answer, and no answer."""

    name = "truth"

    def __init__(self, qa_jsonl: Path) -> None:
        from mpo.prompts import cot_question, parse_choices

        rows = [json.loads(line) for line in qa_jsonl.read_text().splitlines() if line.strip()]
        self.rows = {cot_question(r["question"], choices=parse_choices(r.get("choices"))): r for r in rows}

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[str]]:
        out = []
        for req in requests:
            row = self.rows[req.question]
            out.append(
                [
                    f"{row['reasoning']}\nFinal answer: {row['answer']}",
                    f"Final answer: {row['answer']}",
                    "It is hard to say.\nFinal answer: 97",
                    "I do not know",
                ][: params.n]
            )
        return out


def build(tmp_path: Path, synthetic: Path, tiny_model, *extra: str) -> Path:
    out = tmp_path / "pairs"
    meta = synthetic / "qa" / "meta.json"
    argv = [
        "correctness",
        "--model",
        str(tiny_model),
        "--data",
        str(meta),
        "--out",
        str(out),
        "--n",
        "4",
        *extra,
    ]
    run(build_parser().parse_args(argv), backend=TruthBackend(synthetic / "qa" / "qa.jsonl"))
    return out


def build_records(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for shard in sorted(out.glob("shards/*.jsonl"))
        for line in shard.read_text().splitlines()
    ]


@pytest.mark.parametrize("check", [False, True])
def test_rewards_are_the_pair_builders_verdicts(tmp_path, synthetic, tiny_model, check):
    """Every response `mpo build-pairs correctness` judged, rewarded by mpo.rl.rewards on the same text and row."""
    extra = ("--check-reasoning",) if check else ()
    out = build(tmp_path, synthetic, tiny_model, *extra)
    rows = {r["key"]: r for r in load_questions(synthetic / "qa" / "meta.json")[0]}
    correctness, fmt, reasoning = reward_funcs(["correctness", "format", "reasoning"], check_reasoning=check)
    records = [r for r in build_records(out) if r["responses"]]
    assert len(records) == len(rows) == 10
    seen = set()
    for record in records:
        texts = [j["text"] for j in record["responses"]]
        truth = [rows[record["key"]]["truth"]] * len(texts)
        verdicts = [j["verdict"] for j in record["responses"]]
        seen.update(verdicts)
        assert correctness(None, texts, truth) == [float(v == "correct") for v in verdicts]
        assert fmt(None, texts, truth) == [float(v != "format") for v in verdicts]
        assert reasoning(None, texts, truth) == [float(j["sound"]) for j in record["responses"]]
    assert seen == (
        {"correct", "unsound", "incorrect", "format"} if check else {"correct", "incorrect", "format"}
    )
    # the per-question accuracy the query filter reads is the build's n_correct / n
    settings = {"instruction": COT_INSTRUCTION, "answer_style": "auto", "check_reasoning": check}
    accuracy = build_accuracy(out, settings)
    assert {k: (a.correct, a.sampled) for k, a in accuracy.items()} == {
        r["key"]: (r["n_correct"], 4) for r in records
    }


def test_reward_without_reference_reasoning_is_none():
    (reasoning,) = reward_funcs(["reasoning"])
    truth = json.dumps({"answer": "4"})
    assert reasoning(None, ["Final answer: 4"], [truth]) == [None]
    logged = {}
    (correctness,) = reward_funcs(["correctness"])
    scores = correctness(
        None,
        ["Final answer: 4", "Final answer: 5", "x"],
        [truth] * 3,
        group=["a", "a", "b"],
        log_metric=logged.__setitem__,
    )
    assert scores == [1.0, 0.0, 0.0] and logged == {"accuracy/a": 0.5, "accuracy/b": 0.0}
    assert judge_against("Final answer: 4", Truth.of_row({"answer": "4"}))["verdict"] == "correct"


# ---- query selection ---------------------------------------------------------------------------------


def test_query_filter_keeps_exactly_the_range():
    """LO <= a <= HI, both ends kept; a question without a measured accuracy is dropped and counted."""
    measured = {
        "q0": (0, 5),
        "q1": (1, 5),
        "q2": (2, 5),
        "q3": (4, 5),
        "q4": (5, 5),
        "q5": (3, 8),
        "q6": (0, 0),
    }
    rows = [{"key": k} for k in [*measured, "q7"]]
    accuracy = {k: Accuracy(*v) for k, v in measured.items()}
    kept, dropped = select(rows, accuracy, 0.2, 0.8)
    assert [r["key"] for r in kept] == ["q1", "q2", "q3", "q5"]  # 0.2 and 0.8 kept, 0 and 1 not
    assert dropped == {"below": 1, "above": 1, "unmeasured": 2}
    kept, _ = select(rows, accuracy, 0.25, 0.75)
    assert [r["key"] for r in kept] == ["q2", "q5"]
    assert [r["key"] for r in select(rows, accuracy, 0.0, 1.0)[0]] == [f"q{i}" for i in range(6)]
    assert in_range(0.2, 0.2, 0.8) and in_range(0.8, 0.2, 0.8) and not in_range(0.19999, 0.2, 0.8)


def test_query_build_with_other_settings_is_refused(tmp_path, synthetic, tiny_model):
    from mpo.errors import UserError

    out = build(tmp_path, synthetic, tiny_model)
    settings = {"instruction": "Think.", "answer_style": "auto", "check_reasoning": False}
    with pytest.raises(UserError, match="instruction"):
        build_accuracy(out, settings)
    with pytest.raises(UserError, match="not a pair build"):
        build_accuracy(tmp_path, settings)


# ---- prompts: RL = MPO = evaluation ---------------------------------------------------------------------


def test_prompt_is_the_mpo_and_eval_prompt_byte_for_byte(trainer, synthetic, processor, tmp_path):
    """The prompt ids and tiles the trainer scores a rollout with, against (a) the MPO collator's batch for a
    pair built from the same row, (b) the transformers generation backend's (evaluation, pair building)."""
    from mpo.data.collator import PreferenceCollator
    from mpo.data.mmpr import load_mmpr
    from mpo.generation import TransformersBackend
    from mpo.prompts import cot_question, parse_choices
    from mpo.rl.queries import request

    rows = load_questions(synthetic / "qa" / "meta.json")[0]
    qa = {
        json.loads(line)["id"]: json.loads(line)
        for line in (synthetic / "qa" / "qa.jsonl").read_text().splitlines()
    }
    picked = [r for r in rows if r["image_paths"]][:2]
    assert len({len(r["image_paths"]) for r in rows}) > 1  # single and multi-image rows among them
    inputs = [r for r in picked for _ in range(2)]  # two rollouts each, as TRL's sampler repeats them
    trainer.model.train()
    out = trainer._generate_and_score_completions(inputs)
    # an MMPR file of pairs from the same rows, as build-pairs writes them
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    lines = []
    for row in picked:
        source = qa[row["key"].split(":", 1)[1]]
        question = cot_question(source["question"], choices=parse_choices(source.get("choices")))
        image = source["image"]
        lines.append({"image": image, "question": question, "chosen": "Final answer: x", "rejected": "no"})
    (pairs / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    meta = json.loads((synthetic / "qa" / "meta.json").read_text())["synthetic_qa"]
    root = (synthetic / "qa" / meta["root"]).resolve()
    (pairs / "meta.json").write_text(
        json.dumps(
            {
                "p": {
                    "root": str(root),
                    "annotation": "p.jsonl",
                    "max_dynamic_patch": meta["max_dynamic_patch"],
                }
            }
        )
    )
    records = load_mmpr(pairs / "meta.json", processor)[0]
    backend = TransformersBackend(trainer.model, processor, progress=False)
    tiles = 0
    for i, row in enumerate(picked):
        for copy in (2 * i, 2 * i + 1):
            rl_ids = out["prompt_ids"][copy][out["prompt_mask"][copy].bool()].tolist()
            mpo_ids, _, _, mpo_tiles = PreferenceCollator(processor).encode(records[i])
            assert rl_ids == mpo_ids
            n = out["num_tiles"][copy]
            torch.testing.assert_close(out["pixel_values"][tiles : tiles + n], mpo_tiles, rtol=0, atol=0)
            tiles += n
        text, eval_tiles = backend._encode(request(row, seed=0))
        assert backend.tokenize([text])["input_ids"][0].tolist() == rl_ids
        torch.testing.assert_close(eval_tiles, mpo_tiles, rtol=0, atol=0)
    assert tiles == len(out["pixel_values"])
    # and the MPO collator's own batch begins with the same prompt (the first RL rollout's)
    batch = PreferenceCollator(processor)(list(records))
    first = out["prompt_ids"][0][out["prompt_mask"][0].bool()].tolist()
    assert batch["input_ids"][0, : len(first)].tolist() == first


# ---- end to end ------------------------------------------------------------------------------------------


def mpo(*argv: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mpo.cli", *argv],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_mpo_rl_from_another_directory_then_eval_and_push(tmp_path, tiny_model, synthetic):
    """`mpo rl --config tiny/gspo ... --max_steps 2` from another directory; `mpo eval` and `mpo push --dry-run`
    take what it wrote."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    meta = synthetic / "qa" / "meta.json"
    done = mpo(
        "rl", "--config", "tiny/gspo", "--model_name_or_path", str(tiny_model), "--meta_path", str(meta),
        "--output_dir", "out", "--max_steps", "2", cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = cwd / "out"
    record = json.loads((out / "mpo_config.json").read_text())
    assert record["stage"] == "gspo" and record["args"]["importance_sampling_level"] == "sequence"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logged = [h for h in state["log_history"] if "rewards/correctness/mean" in h]
    assert len(logged) == 2 and all(
        "clip_ratio/region_mean" in h and "completions/mean_length" in h for h in logged
    )
    evaluated = mpo(
        "eval", "--model", "out", "--data", f"synthetic={synthetic / 'eval' / 'eval.tsv'}", "--out", "evals",
        "--limit", "3", "--max-new-tokens", "4", cwd=cwd,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    pushed = mpo(
        "push", "--model", "out", "--repo-id", "org/tiny-gspo", "--eval", "evals", "--dry-run", cwd=cwd
    )
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert "GSPO" in (out / "README.md").read_text() or "gspo" in pushed.stdout.lower()


def image_and_text_questions(synthetic: Path, out: Path) -> Path:
    """A QA meta.json of two questions: the synthetic task's first (one image) and a text-only one, in
    subsets of their own. With 4 rollouts a rank and 2 ranks, every step gives one rank each."""
    qa = synthetic / "qa"
    meta = json.loads((qa / "meta.json").read_text())
    [(name, subset)] = meta.items()
    first = (qa / subset["annotation"]).read_text().splitlines()[0]
    text = {"id": "t0", "question": "What is 2 + 2?", "answer": "4", "reasoning": "2 + 2 is 4."}
    out.mkdir()
    (out / "image.jsonl").write_text(first + "\n")
    (out / "text.jsonl").write_text(json.dumps(text) + "\n")
    root = str((qa / subset["root"]).resolve())
    subsets = {
        name: {**subset, "root": root, "annotation": "image.jsonl", "length": 1},
        "text": {**subset, "root": root, "annotation": "text.jsonl", "length": 1},
    }
    (out / "meta.json").write_text(json.dumps(subsets))
    return out / "meta.json"


@pytest.mark.slow
@pytest.mark.parametrize(
    "zero, options",
    [("zero2", []), ("zero3", []), ("zero3", ["--ds3_gather_for_generation", "false"])],
    ids=["zero2", "zero3", "zero3-sharded-generation"],
)
def test_two_ranks_one_without_images_reward_the_checkers_verdicts(
    tmp_path, tiny_model, synthetic, zero, options
):
    """Two DeepSpeed ranks on the CPU complete 2 steps while one rank's question has an image and the other's
    none (under ZeRO-3 the text-only rank must still run the vision tower, in the same place: DeepSpeed
    gathers its shards collectively and checks that ranks run modules in one order; with the rollouts on
    the shards too, in the prefill). The rewards logged for step 1 are the checker's verdicts on the
    completions logged with them (TRL's completions parquet)."""
    import pandas as pd

    meta = image_and_text_questions(synthetic, tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        *accelerate_launch(2, "--main_process_port", str(free_port()), zero=zero),
        "rl", "--config", "tiny/gspo", "--model_name_or_path", str(tiny_model), "--meta_path", str(meta),
        "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--log_completions", "true",
        "--reward_funcs", "correctness", "format", "reasoning", "--save_strategy", "no", *options,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    table = pd.read_parquet(tmp_path / "out" / "completions" / "completions_00001.parquet")
    rows = {r["prompt"]: r for r in load_questions(meta)[0]}
    assert len(table) == 8 and set(table["prompt"]) == set(rows)  # both questions, 4 rollouts each
    assert sorted(bool(rows[p]["image_paths"]) for p in rows) == [False, True]
    for _, line in table.iterrows():
        judged = judge_against(
            line["completion"].strip(), Truth.of_row(json.loads(rows[line["prompt"]]["truth"]))
        )
        assert line["correctness"] == float(judged["verdict"] == "correct")
        assert line["format"] == float(judged["verdict"] != "format")
        assert line["reasoning"] == float(judged["sound"])


def test_trls_rollouts_on_shards_with_text_only_questions_are_refused(
    tiny_model, synthetic, processor, tmp_path, monkeypatch
):
    from mpo.errors import UserError
    from mpo.models.loading import load_model
    from mpo.rl import trainer as rl_trainer

    monkeypatch.setattr(rl_trainer, "is_deepspeed_zero3_enabled", lambda: True)
    meta = image_and_text_questions(synthetic, tmp_path / "data")
    rows, _ = load_questions(meta)

    def build(**settings):
        args = GSPOConfig(
            output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2, report_to=[],
            gradient_checkpointing=False, **settings,
        )  # fmt: skip
        return rl_trainer.GSPOTrainer(
            load_model(tiny_model), args=args, train_dataset=as_dataset(rows), processing_class=processor
        )

    with pytest.raises(
        UserError, match=r"text\.jsonl:1: a question without images \(1 in all\).*shared_prefill"
    ):
        build(shared_prefill=False, ds3_gather_for_generation=False)
    build(shared_prefill=True, ds3_gather_for_generation=False)  # the prefill's blank tile runs them
    build(shared_prefill=False, ds3_gather_for_generation=True)  # gathered weights: no rank waits


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_batch_without_images_runs_the_tower_on_a_blank_tile_and_scores_the_same(
    tiny_model, processor, lora
):
    """The blank tile changes no number, and the vision tower's trainable parameters get gradients (zeros):
    the text-only rank takes part in ZeRO's gradient reduction as the other ranks do. Under a PEFT wrapper
    too; with ``first_only`` (a generation) the tower runs in the first forward alone."""
    from peft import LoraConfig, get_peft_model

    from mpo.models.loading import load_model
    from mpo.rl.trainer import vision_on_a_blank_tile

    model = load_model(tiny_model)
    tower = model.model.vision_tower
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    ids = processor.tokenizer("What is 2 + 2? 4", return_tensors="pt")["input_ids"]
    ran = []
    tower.register_forward_hook(lambda *_: ran.append(True))
    plain = model(input_ids=ids).logits
    trainable = [p for p in tower.parameters() if p.requires_grad]
    assert not ran and trainable and all(p.grad is None for p in trainable)
    with vision_on_a_blank_tile(model, processor.image_processor):
        blank = model(input_ids=ids).logits
    assert ran == [True]
    torch.testing.assert_close(blank, plain, rtol=0, atol=0)
    blank.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in trainable)
    model(input_ids=ids)  # the hook is gone after the block
    assert ran == [True]
    with vision_on_a_blank_tile(model, processor.image_processor, first_only=True):
        model(input_ids=ids)
        model(input_ids=ids)
    assert ran == [True, True]


# ---- recipes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["1b", "2b", "4b", "8b", "26b", "38b", "78b"])
def test_size_recipes_carry_the_released_settings(size):
    """InternVL3.5's released online-RL scripts: lr 1e-6, 16 rollouts per question, 512 questions per rollout batch,
    32 questions (512 responses) per optimizer step, no KL, token-mean loss, 32768-token responses."""
    import re

    from mpo.cli.rl import parse_rl_args

    path = REPO / "recipes" / "internvl2_5" / size / "gspo.yaml"
    text = path.read_text()
    assert (
        text.startswith("# accelerate launch ")
        and f"-m mpo.cli rl --config recipes/internvl2_5/{size}/gspo.yaml" in text
    )
    gpus = int(re.search(r"\((\d+) GPUs", text).group(1))
    _, _, args = parse_rl_args(["--config", str(path), "--bf16", "false"])
    assert (args.learning_rate, args.num_generations, args.beta, args.num_train_epochs) == (1e-6, 16, 0.0, 1)
    assert (args.importance_sampling_level, args.loss_type) == ("sequence", "dapo")
    assert args.max_completion_length == 32768 and args.query_range == (0.2, 0.8)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * gpus
    per_rollout_batch = args.per_device_train_batch_size * args.steps_per_generation * gpus
    assert (per_step, per_rollout_batch) == (32 * 16, 512 * 16)
    assert args.use_vllm and args.vllm_mode == "colocate"
