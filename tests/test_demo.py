"""`mpo demo` end to end at the smoke scale: every step runs as its own `mpo` command in a process of its own, and the reports
(REPORT.md, ABLATION.md) carry the numbers of the evaluation results they summarise."""

from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path

import pytest
from PIL import Image

from data_builders.synthetic import chance_accuracy
from mpo import demo
from mpo.errors import UserError
from mpo.prompts import COT_INSTRUCTION


def overall(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())["overall"]


@pytest.fixture(scope="module")
def smoke_demo(tmp_path_factory) -> Path:
    """`mpo demo` at the smoke scale, run once for the module from an empty directory outside the checkout
    (the recipes ship with the package): the ablation and the cascade reuse its finished steps, as
    `make demo-ablation` and `make demo-cascade` do."""
    root = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        demo.run(root / "demo", demo.SCALES["smoke"])
    return root / "demo"


@pytest.mark.slow
def test_smoke_demo_then_ablation(smoke_demo, monkeypatch):
    monkeypatch.chdir(smoke_demo.parent)
    out = smoke_demo
    scale = demo.SCALES["smoke"]
    text = (out / "REPORT.md").read_text()

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
    right = {
        name: {
            json.loads(line)["index"]: json.loads(line)["correct"]
            for line in (out / "eval" / name / "predictions.jsonl").read_text().splitlines()
        }
        for name in ("sft", "mpo")
    }
    assert right["sft"].keys() == right["mpo"].keys() and len(right["sft"]) == scale.eval_items
    cells = {
        (a, b): sum(1 for k in right["sft"] if (right["sft"][k], right["mpo"][k]) == (a, b))
        for a in (True, False)
        for b in (True, False)
    }
    assert f"| **SFT right** | {cells[True, True]} | {cells[True, False]} |" in text
    assert f"| **SFT wrong** | {cells[False, True]} | {cells[False, False]} |" in text
    assert "Exact McNemar test" in text
    # the smoke scale's task: short answers on one tile
    assert all(r[letter] == "" for r in rows for letter in "ABCD")
    # ... with the scale's share of chain-of-thought SFT answers (the generator's own default is 0.3)
    sft_rows = [
        json.loads(line) for line in (out / "synthetic" / "sft" / "train.jsonl").read_text().splitlines()
    ]
    reasoned = [r for r in sft_rows if r["conversations"][0]["value"].endswith(COT_INSTRUCTION)]
    assert len(sft_rows) == scale.n_sft and len(reasoned) == round(scale.cot_fraction * scale.n_sft)
    assert len(reasoned) != round(0.3 * scale.n_sft)

    # the ablation reuses every finished step and trains the three objectives for two seeds
    report = demo.ablation(out, scale, seeds=(0, 1)).read_text()
    assert f"held-out accuracy {100 * sft['accuracy']:.1f} %" in report
    by_variant: dict[str, list[float]] = {}
    for variant, tag, loss_type in (
        ("MPO", "mpo", ["sigmoid", "bco_pair", "sft"]),
        ("DPO only", "dpo_only", ["sigmoid"]),
        ("SFT on chosen", "sft_on_chosen", ["sft"]),
    ):
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
        assert (
            f"{variant} seed {100 * max(by_variant[variant]):.1f} %: the seed ranges "
            f"{'do not overlap' if apart else 'overlap'}." in report
        )
    assert "![ablation](ablation.png)" in report
    with Image.open(out / "ablation.png") as img:
        img.verify()


def test_report_sections_from_written_files(tmp_path):
    # the pair split and the paired test read the files a run leaves behind
    (tmp_path / "pairs").mkdir()
    by_status = {"paired": 6, "no_pair_kept": 1, "all_correct": 2, "none_correct": 1, "bad_row": 0}
    (tmp_path / "pairs" / "report.json").write_text(
        json.dumps({"pipeline": "correctness", "questions": {"in": 10, "by_status": by_status}})
    )
    split = "\n".join(demo.pair_split(tmp_path))
    checked = {
        "sft": {"overall": {"correct": 40, "correct_and_sound": 4, "total": 100}},
        "mpo": {"overall": {"correct": 50, "correct_and_sound": 25, "total": 100}},
    }
    assert demo.soundness(checked)[0] == (
        "Right answers that also state every step of the item's true chain of thought: SFT 4 of its 40 right "
        "answers (4.0 % of the items), MPO 25 of its 50 right answers (25.0 % of the items)."
    )
    assert demo.soundness({"sft": {"overall": {"correct": 40, "total": 100}}}) == []
    assert "| both correct and incorrect responses (pairs) | 7 | 70.0 % |" in split
    assert (
        "| all responses correct | 2 | 20.0 % |" in split and "| no response correct | 1 | 10.0 % |" in split
    )
    # SFT right on items 0-3, MPO right on items 2-9: 2 both, 2 SFT only, 6 MPO only, 0 neither
    for name, right in (("sft", range(0, 4)), ("mpo", range(2, 10))):
        (tmp_path / "eval" / name).mkdir(parents=True)
        lines = [
            json.dumps({"benchmark": "synthetic", "index": str(i), "correct": i in right}) for i in range(10)
        ]
        (tmp_path / "eval" / name / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    text = "\n".join(demo.paired_section(tmp_path))
    assert "| **SFT right** | 2 | 2 |" in text and "| **SFT wrong** | 6 | 0 |" in text
    assert "p = 0.29." in text  # 2 * (C(8,0) + C(8,1) + C(8,2)) / 2^8 = 74 / 256


def test_separation_of_seed_ranges():
    lines = demo.separation({"MPO": [0.62, 0.64], "DPO only": [0.55, 0.61], "SFT on chosen": [0.60, 0.63]})
    assert lines == [
        "- MPO against DPO only: worst MPO seed 62.0 %, best DPO only seed 61.0 %: the seed ranges do not overlap.",
        "- MPO against SFT on chosen: worst MPO seed 62.0 %, best SFT on chosen seed 63.0 %: the seed ranges overlap.",
    ]


def test_steps_run_with_passive_openmp_threads_unless_told(tmp_path, monkeypatch):
    """Every step's process gets OMP_WAIT_POLICY=PASSIVE and 2 OpenMP threads when the caller's environment
    sets neither, and the caller's own settings otherwise; a step that fails stops the demo with its status."""
    import multiprocessing

    import torch

    from mpo import cli

    def record(args):  # runs in the step's process (forked here, so it sees this replacement)
        seen = {"args": args, "threads": torch.get_num_threads(), **os.environ}
        Path(os.environ["MPO_DEMO_PROBE"]).write_text(json.dumps(seen))
        return int(args[0] == "fail") * 3

    monkeypatch.setattr(cli, "main", record)
    monkeypatch.setattr(demo.steps, "step_context", lambda: multiprocessing.get_context("fork"))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    probe = tmp_path / "seen.json"
    monkeypatch.setenv("MPO_DEMO_PROBE", str(probe))
    seen = []
    for policy, threads in ((None, None), ("ACTIVE", "3"), ("PASSIVE", "4,2")):
        if policy:
            monkeypatch.setenv("OMP_WAIT_POLICY", policy)
            monkeypatch.setenv("OMP_NUM_THREADS", threads)
        demo.Pipeline(tmp_path, fresh=True).step("a step", tmp_path / "absent", "eval", "--help")
        seen.append(json.loads(probe.read_text()))
    assert [e["args"] for e in seen] == [["eval", "--help"]] * 3
    assert [e["OMP_WAIT_POLICY"] for e in seen] == ["PASSIVE", "ACTIVE", "PASSIVE"]
    # README: 2; a list (one count per nesting level) gives the outer level its first count
    assert [(e["OMP_NUM_THREADS"], e["threads"]) for e in seen] == [("2", 2), ("3", 3), ("4,2", 4)]
    for bad in ("", "two", "0"):
        with pytest.raises(UserError, match=rf"OMP_NUM_THREADS={bad!r}: expected a positive thread count"):
            demo.step_env({"OMP_NUM_THREADS": bad})
    with pytest.raises(UserError, match=r"step 'a step' failed \(exit status 3\): mpo fail --now"):
        demo.Pipeline(tmp_path, fresh=True).step("a step", tmp_path / "absent", "fail", "--now")


def exact_mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p from the binomial distribution, computed here without mpo.grading."""
    from math import comb

    n = b + c
    return 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def recount(run: Path) -> dict[str, bool]:
    lines = (run / "predictions.jsonl").read_text().splitlines()
    return {json.loads(line)["index"]: json.loads(line)["correct"] for line in lines if line.strip()}


@pytest.mark.slow
def test_smoke_cascade_report_recounts_every_arm(smoke_demo, monkeypatch):
    """`mpo demo --cascade` at the smoke scale: the demo first, then GSPO from MPO and from SFT (the same steps
    and rollouts), a second MPO round on pairs from the MPO model, seeds of the two leading arms; every number
    of the accuracy and paired tables equals a recount of the arms' predictions.jsonl."""
    from mpo.demo.cascade import cascade

    monkeypatch.chdir(smoke_demo.parent)
    out = smoke_demo
    scale = demo.SCALES["smoke"]
    text = cascade(out, scale).read_text()
    c = out / "cascade"
    runs = {
        "SFT": out / "eval" / "sft",
        "MPO": out / "eval" / "mpo",
        "MPO -> GSPO": c / "mpo_gspo" / "eval",
        "GSPO from SFT": c / "sft_gspo" / "eval",
        "MPO round 2": c / "mpo2" / "eval",
    }
    right = {name: recount(run) for name, run in runs.items()}
    assert (
        all(r.keys() == right["SFT"].keys() for r in right.values()) and len(right["SFT"]) == scale.eval_items
    )

    def paired(first: str, second: str) -> tuple[int, int, int, int, float]:
        a, b = right[first], right[second]
        cells = [sum((a[k], b[k]) == cell for k in a) for cell in ((1, 1), (1, 0), (0, 1), (0, 0))]
        return (*cells, exact_mcnemar_p(cells[1], cells[2]))

    acc = {name: sum(r.values()) / len(r) for name, r in right.items()}
    for name, r in right.items():
        row = (
            f"| {name} | {100 * acc[name]:.1f} % | {sum(r.values())} / {len(r)} | "
            f"{100 * (acc[name] - acc['SFT']):+.1f} | {paired('SFT', name)[4]:.2g} | "
            f"{100 * (acc[name] - acc['MPO']):+.1f} | {paired('MPO', name)[4]:.2g} |"
        )
        assert row in text, (row, text)
    for first, second in (("MPO", "MPO -> GSPO"), ("GSPO from SFT", "MPO -> GSPO"), ("MPO", "MPO round 2")):
        both, only_first, only_second, neither, p = paired(first, second)
        row = f"| {first} | {second} | {both} | {only_first} | {only_second} | {neither} | {p:.2g} |"
        assert row in text, (row, text)
    # the GSPO arms: the same steps and rollouts, from MPO and from SFT; round 2 from MPO on pairs from MPO
    states = {
        tag: json.loads((c / tag / "trainer_state.json").read_text()) for tag in ("mpo_gspo", "sft_gspo")
    }
    assert [s["global_step"] for s in states.values()] == [scale.gspo_steps] * 2
    starts = {
        tag: Path(json.loads((c / tag / "mpo_config.json").read_text())["model"]["model_name_or_path"])
        for tag in ("mpo_gspo", "sft_gspo", "mpo2")
    }
    assert starts == {"mpo_gspo": out / "mpo", "sft_gspo": out / "sft_stage2", "mpo2": out / "mpo"}
    mpo2 = json.loads((c / "mpo2" / "mpo_config.json").read_text())
    assert Path(mpo2["data"]["meta_path"]) == c / "pairs_mpo" / "meta.json"
    results = json.loads((c / "results.json").read_text())
    rl = {name: results["arms"][name]["responses"] for name in ("MPO -> GSPO", "GSPO from SFT", "MPO")}
    assert (
        rl["MPO -> GSPO"] - rl["MPO"] == rl["GSPO from SFT"] == scale.gspo_steps * 4
    )  # no selection at smoke
    # seeds: the two leading arms, each seed's accuracy recounted
    leading = sorted((n for n in acc if n != "SFT"), key=lambda n: -acc[n])[:2]
    assert list(results["seeds"]) == leading
    for name in leading:
        tag = {"MPO": "mpo", "MPO -> GSPO": "mpo_gspo", "GSPO from SFT": "sft_gspo", "MPO round 2": "mpo2"}[
            name
        ]
        main = out / "mpo" if name == "MPO" else c / tag
        extra = [
            out / "ablation" / f"mpo_s{s}" if name == "MPO" else c / "seeds" / f"{tag}_s{s}" for s in (1, 2)
        ]
        dirs = [main, *extra]
        assert [json.loads((d / "mpo_config.json").read_text())["args"]["seed"] for d in dirs] == [42, 1, 2]
        evals = [runs[name], *(d / "eval" for d in extra)]
        accs = [statistics.mean(recount(e).values()) for e in evals]
        assert (
            f"| {name} | {100 * statistics.mean(accs):.1f} % | {100 * statistics.stdev(accs):.1f} |" in text
        )
    with Image.open(c / "compute.png") as img:
        img.verify()


def test_cascade_report_from_written_files(tmp_path, monkeypatch):
    """The cascade's tables from hand-made predictions: accuracies, differences, paired cells and exact
    p-values, each arm's compute summed over the steps it took from SFT, the seeds' spread."""
    from mpo.demo import cascade

    out, scale = tmp_path, demo.SCALES["full"]
    right = {  # 20 items; the arms' right items
        "SFT": range(0, 8),
        "MPO": range(0, 12),
        "MPO -> GSPO": range(2, 18),
        "GSPO from SFT": range(0, 10),
        "MPO round 2": range(1, 13),
    }
    dirs = {a.name: a.eval_dir for a in cascade.arms(out, scale)}
    for name, items in right.items():
        dirs[name].mkdir(parents=True)
        lines = [
            json.dumps({"benchmark": "synthetic", "index": str(i), "correct": i in items}) for i in range(20)
        ]
        (dirs[name] / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    queries = {"range": [0.2, 0.8], "source": "the pair build X", "questions": 2000, "kept": 376}
    for tag in ("mpo_gspo", "sft_gspo", "mpo2"):
        record = {"args": {"max_steps": 100}, **({"queries": queries} if tag != "mpo2" else {})}
        (out / "cascade" / tag / "mpo_config.json").write_text(json.dumps(record))
    stages = {
        "pairs from SFT": {"seconds": 100.0, "responses": 8000},
        "MPO": {"seconds": 150.0, "responses": 0},
        "pairs from MPO": {"seconds": 90.0, "responses": 8000},
        "GSPO after MPO": {"seconds": 95.0, "responses": 1600},
        "GSPO from SFT": {"seconds": 80.0, "responses": 1600},
        "MPO round 2": {"seconds": None, "responses": 0},
    }
    monkeypatch.setattr(cascade, "chance_level", lambda out, n: 0.2)
    seeds = {"MPO -> GSPO": [0.8, 0.75, 0.7], "MPO": [0.6, 0.65, 0.55]}
    text = cascade.write_report(out, scale, stages, seeds).read_text()
    # MPO -> GSPO against MPO: both 2-11, MPO only 0-1, GSPO only 12-17: p = 2 * (1 + 8 + 28) / 2^8
    assert "| MPO | MPO -> GSPO | 10 | 2 | 6 | 2 | 0.29 |" in text
    # against SFT (right on 0-7): 2 SFT only, 10 GSPO only: p = 2 * (1 + 12 + 66) / 2^12; 100 + 150 + 90 + 95 s
    assert "| MPO -> GSPO | 80.0 % | 16 / 20 | +40.0 | 0.039 | +20.0 | 0.29 | 435 | 17600 |" in text
    assert "| GSPO from SFT | 50.0 % | 10 / 20 | +10.0 | 0.5 | -10.0 | 0.5 | 180 | 9600 |" in text
    assert (
        "| MPO round 2 | 60.0 % | 12 / 20 | +20.0 | 0.22 | +0.0 | 1 | n/a | 16000 |" in text
    )  # one time unknown
    assert "| SFT | 40.0 % | 8 / 20 | +0.0 | 1 | -20.0 | 0.12 | 0 | 0 |" in text
    assert "+20.0 points, p = 0.29: **not met**" in text
    assert "80.0 % against 50.0 % (+30.0, p = 0.11): **met**" in text  # 2 GSPO-from-SFT only, 8 the other
    assert "GSPO after MPO: 100 steps, 376 of 2000 questions kept by rollout accuracy in [0.2, 0.8]" in text
    assert "| MPO -> GSPO | 75.0 % | 5.0 | 70.0 | 80.0 | 80.0, 75.0, 70.0 |" in text
    assert "Worst MPO -> GSPO seed 70.0 %, best MPO seed 65.0 %: the seed ranges do not overlap." in text
    record = json.loads((out / "cascade" / "results.json").read_text())
    assert record["arms"]["MPO -> GSPO"]["stages"] == [
        "pairs from SFT",
        "MPO",
        "pairs from MPO",
        "GSPO after MPO",
    ]
