"""wandb dashboards of an MPO run, read back from the offline run files: metrics, config, sample table,
report artifacts."""

from __future__ import annotations

import json

import wandb
from conftest import MIXED_ROWS, write_mmpr
from wandb_records import history_keys, records, run_file

from mpo.cli.train import main as train_main
from mpo.publishing.dashboards import log_report_artifact


def test_mpo_run_dashboard(tiny_model, tmp_path, offline_wandb):
    meta = write_mmpr(tmp_path / "train", MIXED_ROWS)
    eval_meta = write_mmpr(tmp_path / "eval", MIXED_ROWS[:3])
    train_main(
        [
            "--config",
            "recipes/tiny/mpo.yaml",
            "--model_name_or_path",
            str(tiny_model),
            "--meta_path",
            str(meta),
            "--eval_meta_path",
            str(eval_meta),
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--report_to",
            "wandb",
            "--ref_cache_dir",
            str(tmp_path / "cache"),
            "--logging_steps",
            "1",
        ]
    )
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pairs": 3}))
    log_report_artifact("pairs-report", "preference-data-report", [report])
    wandb.finish()

    path = run_file(tmp_path)
    keys = history_keys(path)
    for k in ("loss/dpo", "loss/bco", "loss/sft", "bco/delta", "rewards/accuracies", "logps/chosen"):
        assert f"train/{k}" in keys
    assert "eval/preference_samples" in keys
    recs = list(records(path))
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    assert run.display_name == "tiny-mpo" and run.run_group == "tiny"  # named and grouped by recipe
    config = {
        item.key: json.loads(item.value_json)
        for r in recs
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    assert config["beta"] == 0.1 and config["loss_weights"] == [0.8, 0.2, 1.0]
    assert config["PreferenceDataConfig/meta_path"] == str(meta)
    assert config["InternVLModelConfig/model_name_or_path"] == str(tiny_model)
    # the sample table: one row per eval pair with question, chosen, rejected and the margins
    (table_file,) = path.parent.glob("files/media/table/eval/preference_samples_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == [
        "step",
        "image",
        "question",
        "chosen",
        "rejected",
        "logp_margin",
        "reward_margin",
    ]
    assert [row[3] for row in table["data"]] == [r["chosen"] for r in MIXED_ROWS[:3]]
    assert all(isinstance(row[5], float) for row in table["data"])
    artifacts = [r.artifact for r in recs if r.WhichOneof("record_type") == "artifact"]
    assert any(a.name == "pairs-report" and a.type == "preference-data-report" for a in artifacts)
