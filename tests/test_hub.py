"""`mpo push`: the model card built from a fake run folder (tiny model, trainer state, recipe, pairs
report, eval results), the dry-run file list, the upload with huggingface_hub's calls replaced
in-process, `push_to_hub: true` in `mpo train`, and the one-line errors. Nothing reaches the Hub."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image

from mpo.checkpointing import write_run_config
from mpo.cli import main as cli_main
from mpo.publishing import card, hub
from mpo.trainer import MPOConfig

REPO_ID = "me/tiny-internvl-mpo"
BASE = "OpenGVLab/InternVL2_5-1B"
DATASET = "OpenGVLab/MMPR-v1.1"
DELTA = 0.123456
LOG_HISTORY = [
    {
        "step": 1,
        "epoch": 0.5,
        "loss": 1.9,
        "loss/dpo": 0.6931,
        "loss/bco": 1.3863,
        "loss/sft": 1.2,
        "bco/delta": 0.0,
        "rewards/accuracies": 0.25,
        "rewards/margins": 0.001,
        "rewards/chosen": 0.01,
        "rewards/rejected": 0.009,
        "logps/chosen": -40.5,
        "logps/rejected": -44.0,
    },
    {
        "step": 2,
        "epoch": 1.0,
        "eval_loss": 1.7,
        "eval_rewards/accuracies": 0.625,
        "eval_rewards/margins": 0.05,
    },
    {
        "step": 2,
        "epoch": 1.0,
        "loss": 1.5,
        "loss/dpo": 0.61,
        "loss/bco": 1.25,
        "loss/sft": 1.0,
        "bco/delta": 0.1,
        "rewards/accuracies": 0.875,
        "rewards/margins": 0.4321,
        "rewards/chosen": 0.3,
        "rewards/rejected": -0.1321,
        "logps/chosen": -38.0,
        "logps/rejected": -47.0,
    },
    {"step": 2, "epoch": 1.0, "train_runtime": 3.2, "train_loss": 1.7},
]


def results(model: str, overall: tuple[int, int], cats: dict[str, tuple[int, int]]) -> dict:
    def counts(c: int, t: int) -> dict:
        return {"accuracy": c / t, "correct": c, "total": t, "unparsable": 0}

    bench = {**counts(*overall), "categories": {k: counts(*v) for k, v in cats.items()}}
    return {"model": model, "cot": True, "overall": counts(*overall), "benchmarks": {"synthetic": bench}}


@pytest.fixture
def run(tmp_path, tiny_model) -> Path:
    """tmp/{mpo (the run), pairs/{meta.json, report.json}, eval/{sft,mpo}/results.json}: the `mpo demo` layout."""
    out = tmp_path / "mpo"
    shutil.copytree(tiny_model, out)
    args = MPOConfig(
        output_dir=str(out),
        beta=0.25,
        loss_weights=[0.7, 0.3, 1.0],
        learning_rate=2e-6,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        sft_normalization="token",
        report_to=[],
    )
    write_run_config(
        out,
        args,
        {
            "base_model": str(tiny_model),
            "model": {"model_name_or_path": str(tiny_model), "freeze_vision": True},
            "data": {"meta_path": str(tmp_path / "pairs" / "meta.json")},
        },
    )
    torch.save(args, out / "training_args.bin")
    state = {
        "global_step": 2,
        "epoch": 1.0,
        "log_history": LOG_HISTORY,
        "stateful_callbacks": {
            "MPORewardShift": {"args": {}, "attributes": {"value": DELTA, "total": 1.975, "count": 16}}
        },
    }
    (out / "trainer_state.json").write_text(json.dumps(state))
    (out / "checkpoint-1").mkdir()
    (out / "checkpoint-1" / "model.safetensors").write_bytes(b"x" * 100)
    (out / "checkpoint-1" / "optimizer.pt").write_bytes(b"x" * 100)
    (out / ".staging" / "checkpoint-2").mkdir(parents=True)  # a save cut short
    (out / ".staging" / "checkpoint-2" / "model.safetensors").write_bytes(b"x" * 100)
    (out / "runs").mkdir()
    (out / "runs" / "events.out.tfevents").write_bytes(b"x")
    (out / "README.md").write_text("---\nlibrary_name: transformers\n---\nTRL's card, to be replaced\n")

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "meta.json").write_text("{}")
    report = {
        "pipeline": "correctness",
        "questions": {
            "in": 12,
            "by_status": {"paired": 7, "no_pair_kept": 1, "all_correct": 2, "none_correct": 1, "bad_row": 1},
        },
        "pairs": {"candidates": 40, "kept": 23, "dropped": {"answer_in_rejected": 5, "per_question_cap": 12}},
        "subsets": {
            "qa_correctness": {
                "candidates": 40,
                "kept": 23,
                "dropped": {"answer_in_rejected": 5, "per_question_cap": 12},
            }
        },
        "bad_rows": {"by_field": {}, "examples": []},
        "responses": {"correct": 50, "incorrect": 40, "format": 6},
        "settings": {"n": 8, "temperature": 1.0, "max_pairs": 15},
    }
    (pairs / "report.json").write_text(json.dumps(report))
    for name, model, overall, cats in (
        ("sft", str(tiny_model), (5, 8), {"colour": (3, 4), "count": (2, 4)}),
        ("mpo", str(out.resolve()), (6, 8), {"colour": (4, 4), "count": (2, 4)}),
    ):
        (tmp_path / "eval" / name).mkdir(parents=True)
        (tmp_path / "eval" / name / "results.json").write_text(json.dumps(results(model, overall, cats)))
    return out


def expected_metadata(**over) -> dict:
    return {
        "base_model": BASE,
        "datasets": [DATASET],
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "license": "apache-2.0",
        "tags": ["mpo", "internvl", "trl", "preference-optimization"],
        **over,
    }


def test_dry_run_writes_a_valid_card_and_lists_files(run, capsys):
    rc = cli_main(
        [
            "push",
            "--model",
            str(run),
            "--repo-id",
            REPO_ID,
            "--dry-run",
            "--base-model",
            BASE,
            "--dataset",
            DATASET,
            "--pairs-report",
            str(run.parent / "pairs" / "report.json"),
            "--eval",
            str(run.parent / "eval" / "sft"),
            str(run.parent / "eval" / "mpo"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    card = ModelCard.load(run / "README.md")  # parses the YAML metadata back
    assert card.data.to_dict() == expected_metadata()
    text = card.text
    assert "TRL's card" not in text
    # recipe and MPO hyperparameters, read from mpo_config.json
    assert "Read from `mpo_config.json`" in text
    assert (
        "L = 0.7 × preference (DPO, sigmoid) + 0.3 × quality (BCO, reward shift δ) + 1 × generation (SFT)"
        in text
    )
    for row in (
        "| beta | `0.25` |",
        "| loss_weights | `[0.7, 0.3, 1.0]` |",
        "| sft_normalization | `token` |",
        "| learning_rate | `2e-06` |",
        "| lr_scheduler_type | `cosine` |",
        "| warmup_steps | `0.03` |",
        "| weight_decay | `0.05` |",
        "| num_train_epochs | `1.0` |",
        "| per_device_train_batch_size | `2` |",
        "| gradient_accumulation_steps | `4` |",
        "| global batch size | `8` | 2 × 4 × 1 processes |",
        "| frozen | `vision` |",
        "| training data | `meta.json` (MMPR layout)",
    ):
        assert text.count(row) == 1, row  # once: a row written twice is a bug too
    # δ and the final rewards from trainer_state.json
    assert "Trained for 2 optimizer steps (1 epoch)." in text
    assert "**δ = 0.1235** (saved state, the running mean over 16 rewards)" in text
    assert "Final train reward accuracy **0.875**, margin **0.4321** (step 2)." in text
    assert "| `loss/bco` | 1.3863 | 1.25 |" in text
    assert "Final eval reward accuracy **0.625**, margin **0.05** (step 2)." in text
    # pairs report
    assert (
        "**correctness** pipeline" in text and "12 questions in, **23 pairs kept** of 40 candidates" in text
    )
    assert "| qa_correctness | 40 | 23 | 5 | 12 |" in text
    assert "Sampled responses: 50 correct, 40 incorrect, 6 format." in text
    # eval table: one column per checkpoint, overall, benchmark and categories
    assert "| benchmark | category | n | sft | mpo (this model) |" in text
    assert "| **overall** |  | 8 | 62.5 | 75.0 |" in text
    assert "| synthetic | all | 8 | 62.5 | 75.0 |" in text
    assert "| synthetic | colour | 4 | 75.0 | 100.0 |" in text
    assert "| synthetic | count | 4 | 50.0 | 50.0 |" in text
    # usage
    assert (
        f'model_id = "{REPO_ID}"' in text and "AutoModelForImageTextToText.from_pretrained(model_id" in text
    )
    assert "processor.apply_chat_template(" in text
    # printed file list: the model and the card, not checkpoints, optimizer states, training_args.bin
    listed = re.findall(r"^\s+\d+(?:\.\d)? [KMG]?i?B\s+(\S+)$", out, flags=re.M)
    assert sorted(listed) == sorted(
        p.relative_to(run).as_posix()
        for p in run.rglob("*")
        if p.is_file()
        and not p.name == "training_args.bin"
        and p.parts[-2] not in ("checkpoint-1", "runs")
        and ".staging" not in p.parts
    )
    assert {"README.md", "model.safetensors", "config.json", "trainer_state.json", "mpo_config.json"} <= set(
        listed
    )
    assert f"would upload {len(listed)} files" in out and REPO_ID in out


def test_card_finds_report_and_eval_next_to_the_run(run, capsys):
    """No --pairs-report / --eval: found where `mpo demo` puts them; base model left out when the run's is local."""
    assert cli_main(["push", "--model", str(run), "--repo-id", REPO_ID, "--dry-run"]) == 0
    card = ModelCard.load(run / "README.md")
    assert card.data.to_dict() == {
        k: v for k, v in expected_metadata().items() if k not in ("base_model", "datasets")
    }
    assert "23 pairs kept" in card.text and "| **overall** |  | 8 | 62.5 | 75.0 |" in card.text
    assert "pass `--base-model ORG/NAME`" in card.text
    assert cli_main(["push", "--model", str(run), "--repo-id", REPO_ID, "--dry-run", "--no-discover"]) == 0
    text = ModelCard.load(run / "README.md").text
    assert "## Preference data" not in text and "## Evaluation" not in text


def test_usage_snippet_runs(run, tmp_path):
    """The card's snippet, pointed at the local folder and a local image, loads the model and generates."""
    hub.push(run, REPO_ID, dry_run=True, discover=False)
    code = re.search(r"```python\n(.*?)```", (run / "README.md").read_text(), flags=re.S).group(1)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    code = code.replace(f'"{REPO_ID}"', repr(str(run)))
    code = re.sub(r'"url": "https://[^"]+"', f'"url": {str(tmp_path / "red.png")!r}', code)
    code = code.replace("max_new_tokens=512", "max_new_tokens=4")
    exec(compile(code, "usage_snippet", "exec"), {})


def test_hyperparameters_from_training_args_bin(run):
    (run / "mpo_config.json").unlink()
    built = card.build_card(run, REPO_ID, discover=False)
    assert "Read from `training_args.bin`" in built.text
    assert "| beta | `0.25` |" in built.text and "| global batch size | `8 × processes` |" in built.text


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw, self.token))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, **kw):
        card = ModelCard.load(Path(kw["folder_path"]) / "README.md")  # the card exists before the upload
        calls.append(("upload_folder", kw, card.data.to_dict()))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_the_folder_with_the_card(run, fake_hub, capsys):
    rc = cli_main(
        [
            "push",
            "--model",
            str(run),
            "--repo-id",
            REPO_ID,
            "--private",
            "--base-model",
            BASE,
            "--dataset",
            DATASET,
            "--commit-message",
            "first",
        ]
    )
    assert rc == 0
    (_, repo_id, kw, _), (_, upload, metadata) = fake_hub
    assert repo_id == REPO_ID and kw["private"] is True and kw["exist_ok"] is True
    assert upload["repo_id"] == REPO_ID and Path(upload["folder_path"]) == run.resolve()
    assert upload["commit_message"] == "first"
    for pattern in ("checkpoint-*/", "optimizer.pt", "scheduler.pt", "rng_state*.pth", "training_args.bin"):
        assert pattern in upload["ignore_patterns"]
    assert metadata == expected_metadata()
    assert f"https://huggingface.co/{REPO_ID}/commit/abc" in capsys.readouterr().out


def test_push_to_hub_after_training(run, fake_hub):
    args = MPOConfig(
        output_dir=str(run),
        push_to_hub=True,
        hub_model_id="org/run-1",
        hub_private_repo=True,
        hub_token="hf_fake",
        report_to=[],
    )
    hub.push_to_hub_after_training(run, args, "mpo rl")
    (_, repo_id, kw, token), (_, upload, metadata) = fake_hub
    assert (repo_id, kw["private"], token) == ("org/run-1", True, "hf_fake")
    assert upload["repo_id"] == "org/run-1" and upload["commit_message"] == "End of training (mpo rl)"
    assert metadata["pipeline_tag"] == "image-text-to-text" and "mpo" in metadata["tags"]


def test_mpo_train_pushes_once_at_the_end(tmp_path, monkeypatch):
    """`push_to_hub: true`: the Trainer is built with push_to_hub off (no push at each save), then ours runs."""
    import mpo.cli.train
    import mpo.cli.training

    seen = {}

    class FakeTrainer:
        accelerator = type(
            "A",
            (),
            {
                "is_main_process": True,
                "device": "cpu",
                "wait_for_everyone": lambda self: None,
                "end_training": lambda self: None,
            },
        )()
        args = type("Args", (), {"output_dir": str(tmp_path / "o"), "ddp_timeout": 1800})()
        state = type("S", (), {"log_history": [{"loss": 1.0}], "global_step": 1})()
        reward_shift = type("R", (), {"value": 0.5})()
        bad_rows = None  # nothing skipped

        def add_callback(self, callback):
            seen["callbacks"] = [type(callback).__name__]

        def train(self, resume_from_checkpoint=None):
            seen["order"] = ["train"]

        def save_model(self, output_dir):
            seen["order"].append("save")

        def save_state(self):
            seen["order"].append("state")

    def build_trainer(model_args, data_args, args):
        seen["push_to_hub_at_build"] = args.push_to_hub
        return FakeTrainer()

    def push_after(output_dir, args, command):
        seen["order"].append("push")
        seen["pushed"] = (output_dir, args.hub_model_id, command)

    monkeypatch.setattr(mpo.cli.train, "build_trainer", build_trainer)
    monkeypatch.setattr(mpo.cli.training, "write_run_card", lambda folder, args: seen["order"].append("card"))
    monkeypatch.setattr(hub, "push_to_hub_after_training", push_after)
    argv = [
        "--model_name_or_path",
        "m",
        "--meta_path",
        "meta.json",
        "--output_dir",
        str(tmp_path / "o"),
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "org/x",
        "--report_to",
        "none",
    ]
    assert mpo.cli.train.main(argv) == 0
    assert seen["push_to_hub_at_build"] is False
    assert seen["order"] == ["train", "save", "state", "card", "push"]  # the final card, then one push
    assert seen["callbacks"] == ["PreemptionCallback"]  # a signal would have saved and stopped it
    assert seen["pushed"] == (str(tmp_path / "o"), "org/x", "mpo train")


def test_errors_are_one_line(run, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text("{}")
    cases = [
        (["--model", str(tmp_path / "nope"), "--repo-id", REPO_ID], "no such folder"),
        (["--model", str(run / "config.json"), "--repo-id", REPO_ID], "not a folder"),
        (["--model", str(tmp_path / "empty"), "--repo-id", REPO_ID], "not a checkpoint (no config.json"),
        (
            ["--model", str(tmp_path / "config_only"), "--repo-id", REPO_ID],
            "not a checkpoint (no model weights",
        ),
        (["--model", str(run), "--repo-id", "a/b/c"], "bad repo id 'a/b/c'"),
        (["--model", str(run), "--repo-id", "bad name"], "bad repo id 'bad name'"),
        (["--model", str(run), "--repo-id", REPO_ID, "--base-model", "x--y"], "bad --base-model 'x--y'"),
        (["--model", str(run), "--repo-id", REPO_ID, "--eval", str(tmp_path / "empty")], "no results.json"),
        (
            ["--model", str(run), "--repo-id", REPO_ID, "--pairs-report", str(run / "config.json")],
            "not an `mpo build-pairs` report",
        ),
    ]
    for argv, message in cases:
        assert cli_main(["push", *argv, "--dry-run"]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("mpo push: error: ") and message in err and err.count("\n") == 1, err
    # offline (as in every test): the real HfApi refuses before any request; one line too
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert cli_main(["push", "--model", str(run), "--repo-id", REPO_ID, "--no-discover"]) == 1
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and err.count("\n") == 1
