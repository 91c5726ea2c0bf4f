"""The second family: its recipes carry the published MPO settings, and, end to end, a tiny InternVL3 model
builds pairs, trains with MPO and evaluates, every prompt on the way coming from its family module.

To show that the family is asked (and not InternVL2.5's template reused by accident), the registered
InternVL3 family is replaced, for this test, by one whose system message differs; the tiny model is built
from it, and the prompts of pair building, training and evaluation must all carry that message.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_mpo
from pair_backends import run_tagged
from safetensors.torch import load_file

from data_builders.synthetic import generate
from mpo.cli import main as cli_main
from mpo.cli.train import parse_train_args
from mpo.data.collator import PreferenceCollator
from mpo.data.mmpr import load_mmpr
from mpo.generation import TransformersBackend
from mpo.models import families
from mpo.models.families import internvl3
from mpo.models.loading import load_processor
from mpo.models.tiny import build_tiny_model

SYSTEM = "You are a tiny InternVL3."
# OpenGVLab/InternVL internvl_chat/shell/internvl3.0/mpo/internvl3_<size>_mpo.sh: global batch (BATCH_SIZE),
# max_seq_length, drop_path_rate; every size: lr 2e-7, cosine, warmup 0.03, weight decay 0.05, one epoch,
# sigmoid 0.8 + bco_pair 0.2 + rpo_alpha 1. GPUs and ZeRO stage are this project's (8 GPUs up to 14B).
PUBLISHED = {
    "1b": (256, 12288, 0.1, 8, 1),
    "2b": (256, 12288, 0.1, 8, 1),
    "8b": (256, 12288, 0.1, 8, 3),
    "14b": (256, 12288, 0.1, 8, 3),
    "38b": (512, 8192, 0.4, 64, 3),
    "78b": (512, 8192, 0.4, 64, 3),
}


@pytest.mark.parametrize("size", list(PUBLISHED))
def test_recipe_has_the_published_mpo_settings_and_leads_with_its_command(size):
    path = REPO / "recipes" / "internvl3" / size / "mpo.yaml"
    batch, max_length, drop_path, gpus, zero = PUBLISHED[size]
    model, _, args = parse_train_args(["--config", str(path), "--bf16", "false"])
    assert (args.learning_rate, args.lr_scheduler_type, args.warmup_steps, args.weight_decay) == (
        2e-7,
        "cosine",
        0.03,
        0.05,
    )
    assert args.num_train_epochs == 1 and args.beta == 0.1
    assert args.loss_type == ["sigmoid", "bco_pair", "sft"] and args.loss_weights == [0.8, 0.2, 1.0]
    assert args.max_length == max_length and model.vision_drop_path_rate == drop_path
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * gpus == batch
    assert not (model.freeze_vision or model.freeze_projector or model.freeze_llm)
    # the first line is the command that launches this recipe, with a launcher config that exists
    command = shlex.split(path.read_text().splitlines()[0].removeprefix("# "))
    assert command[:3] == ["accelerate", "launch", "--config_file"] and (REPO / command[3]).is_file()
    assert f"zero{zero}" in command[3] and command[command.index("-m") + 1 :][:2] == ["mpo.cli", "train"]
    assert command[command.index("--config") + 1] == f"recipes/internvl3/{size}/mpo.yaml"
    assert f"({gpus} GPUs, DeepSpeed ZeRO-{zero})" in path.read_text().splitlines()[1]


HEADER = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"


@pytest.mark.slow
def test_tiny_internvl3_builds_pairs_trains_and_evaluates(tmp_path: Path, monkeypatch):
    variant = replace(internvl3.FAMILY, template=replace(internvl3.FAMILY.template, system_message=SYSTEM))
    monkeypatch.setitem(families.FAMILIES, "internvl3", variant)
    prompts: list[str] = []
    encode = TransformersBackend._encode

    def recording(self, req):
        text, pixels = encode(self, req)
        prompts.append(text)
        return text, pixels

    monkeypatch.setattr(TransformersBackend, "_encode", recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny generation on a shared 2-core machine
    try:
        run_pipeline(tmp_path, variant, prompts)
    finally:
        torch.set_num_threads(threads)


def run_pipeline(tmp_path: Path, variant, prompts: list[str]) -> None:
    """tiny InternVL3 -> build-pairs -> MPO steps -> eval; ``prompts`` fills with the generation prompts."""

    model = build_tiny_model(tmp_path / "model", family="internvl3")
    assert json.loads((model / "config.json").read_text())["mpo_family"] == "internvl3"
    data = tmp_path / "synthetic"
    generate(data, n_sft=4, n_qa=6, n_eval=4, seed=3)

    # build pairs (transformers backend; a final-answer line is appended to the random model's text)
    pairs = tmp_path / "pairs"
    run_tagged(
        [
            "correctness",
            "--model",
            str(model),
            "--data",
            str(data / "qa" / "meta.json"),
            "--out",
            str(pairs),
            "--n",
            "4",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.0",
            "--batch-size",
            "4",
        ]
    )
    report = json.loads((pairs / "report.json").read_text())
    assert report["pairs"]["kept"] > 0
    assert prompts and all(p.startswith(HEADER) for p in prompts)
    built = len(prompts)

    # MPO: a few steps from the recipe of the tiny model
    out = tmp_path / "mpo"
    argv = ["train"] + tiny_mpo(
        model,
        pairs / "meta.json",
        out,
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--ref_cache_dir",
        str(tmp_path / "cache"),
        "--save_strategy",
        "no",
    )
    assert cli_main(argv) == 0
    assert json.loads((out / "config.json").read_text())["mpo_family"] == "internvl3"
    processor = load_processor(out)
    assert families.of_processor(processor) is variant
    records, _ = load_mmpr(pairs / "meta.json", processor)
    prompt_ids, *_ = PreferenceCollator(processor).encode(records[0])
    assert processor.tokenizer.decode(prompt_ids).startswith(HEADER)
    before, after = load_file(model / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)

    # evaluation of the trained model on a handful of generated items
    evaluated = tmp_path / "eval"
    argv = [
        "eval",
        "--model",
        str(out),
        "--data",
        str(data / "eval" / "eval.tsv"),
        "--out",
        str(evaluated),
        "--backend",
        "transformers",
        "--limit",
        "4",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
    ]
    assert cli_main(argv) == 0
    results = json.loads((evaluated / "results.json").read_text())
    assert results["overall"]["total"] == 4
    assert len(prompts) - built == 4 and all(p.startswith(HEADER) for p in prompts[built:])
