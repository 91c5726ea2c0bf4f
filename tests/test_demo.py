"""`mpo demo` end to end at the smoke scale: every step runs as its own `mpo` command, and the reports
(REPORT.md, ABLATION.md) carry the numbers of the evaluation results they summarise."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from PIL import Image

from data_builders.synthetic import chance_accuracy
from mpo import demo

REPO = Path(__file__).resolve().parents[1]


def overall(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())["overall"]


@pytest.mark.slow
def test_smoke_demo_then_ablation(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the demo names its recipes relative to the repository, as `make demo` does
    out = tmp_path / "demo"
    scale = demo.SCALES["smoke"]
    text = demo.run(out, scale).read_text()

    sft, mpo = overall(out / "eval" / "sft"), overall(out / "eval" / "mpo")
    assert sft["total"] == mpo["total"] == scale.eval_items
    assert f"{100 * sft['accuracy']:.1f} % (SFT) -> {100 * mpo['accuracy']:.1f} % (MPO)" in text
    with open(out / "synthetic" / "eval" / "eval.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[: scale.eval_items]
    chance = statistics.mean(chance_accuracy(r) for r in rows)
    assert f"a uniform random guess scores {100 * chance:.1f} %" in text
    # each SFT stage started from the previous one's output, MPO from stage 2
    for stage, parent in (("1_5", "sft_stage1"), ("2", "sft_stage1_5")):
        args = json.loads((out / f"sft_stage{stage}" / "trainer_state.json").read_text())
        assert args["global_step"] == scale.sft_steps[("1", "1_5", "2").index(stage)]
        assert (out / parent / "config.json").is_file()
    run_config = json.loads((out / "mpo" / "mpo_config.json").read_text())
    assert Path(run_config["model"]["model_name_or_path"]) == out / "sft_stage2"
    with Image.open(out / "curves.png") as img:
        img.verify()
    assert (out / "pairs" / "report.md").read_text().replace("](", "](pairs/") in text
    # the paired table counts the same items from both runs' predictions
    right = {name: {json.loads(line)["index"]: json.loads(line)["correct"]
                    for line in (out / "eval" / name / "predictions.jsonl").read_text().splitlines()}
             for name in ("sft", "mpo")}  # fmt: skip
    assert right["sft"].keys() == right["mpo"].keys() and len(right["sft"]) == scale.eval_items
    cells = {(a, b): sum(1 for k in right["sft"] if (right["sft"][k], right["mpo"][k]) == (a, b))
             for a in (True, False) for b in (True, False)}  # fmt: skip
    assert f"| **SFT right** | {cells[True, True]} | {cells[True, False]} |" in text
    assert f"| **SFT wrong** | {cells[False, True]} | {cells[False, False]} |" in text
    assert "Exact McNemar test" in text
    # the smoke scale's task: short answers on one tile
    assert all(r[letter] == "" for r in rows for letter in "ABCD")

    # the ablation reuses every finished step and trains the three objectives for two seeds
    report = demo.ablation(out, scale, seeds=(0, 1)).read_text()
    assert f"held-out accuracy {100 * sft['accuracy']:.1f} %" in report
    by_variant: dict[str, list[float]] = {}
    for variant, tag, loss_type in (("MPO", "mpo", ["sigmoid", "bco_pair", "sft"]),
                                    ("DPO only", "dpo_only", ["sigmoid"]),
                                    ("SFT on chosen", "sft_on_chosen", ["sft"])):  # fmt: skip
        runs = [out / "ablation" / f"{tag}_s{seed}" for seed in (0, 1)]
        for seed, run in enumerate(runs):
            args = json.loads((run / "mpo_config.json").read_text())["args"]
            assert (args["loss_type"], args["seed"]) == (loss_type, seed)
        accs = [overall(run / "eval")["accuracy"] for run in runs]
        row = f"| {variant} | {100 * statistics.mean(accs):.1f} % | {100 * statistics.stdev(accs):.1f} |"
        assert row in report, (row, report)
        by_variant[variant] = accs
    for variant in ("DPO only", "SFT on chosen"):
        apart = all(m > a for m in by_variant["MPO"] for a in by_variant[variant])
        assert f"{variant} seed {100 * max(by_variant[variant]):.1f} %: the seed ranges " \
               f"{'do not overlap' if apart else 'overlap'}." in report  # fmt: skip
    assert "![ablation](ablation.png)" in report
    with Image.open(out / "ablation.png") as img:
        img.verify()
