"""`EvalConfig`: every bad value stops at construction with one line naming its flag; the flags of `mpo eval`
make the same config; `--on-bad-row` takes the recipes' `fail` and the older `error`."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from eval.config import EvalConfig
from mpo.cli.eval import build_parser, config_from_args
from mpo.errors import UserError

GOOD = {"model": "m", "data": ["bench.tsv"], "out": "out"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"limit": 0}, "--limit must be >= 1, got 0"),
        ({"batch_size": 0}, "--batch-size must be >= 1, got 0"),
        ({"max_new_tokens": -3}, "--max-new-tokens must be >= 1, got -3"),
        ({"max_dynamic_patch": 0}, "--max-dynamic-patch must be >= 1, got 0"),
        ({"data": []}, "no benchmark given: --data FILE"),
        ({"on_bad_row": "ignore"}, "--on-bad-row must be one of fail, skip, got 'ignore'"),
        ({"num_samples": 0}, "--num-samples must be >= 1, got 0"),
        ({"temperature": -0.5}, "--temperature must be >= 0, got -0.5"),
        ({"num_samples": 4, "temperature": 0.0}, "--num-samples 4 needs sampling: give --temperature > 0"),
        (
            {"num_samples": 4, "aggregate": "mean"},
            "--aggregate must be one of majority, best-of-n, got 'mean'",
        ),
        ({"reference": "sft"}, "--scorer and --reference score samples for --aggregate best-of-n"),
        (
            {"num_samples": 4, "aggregate": "best-of-n", "scorer": "vibes"},
            "--scorer must be one of reward, judge",
        ),
        (
            {"num_samples": 4, "aggregate": "best-of-n"},
            "--aggregate best-of-n --scorer reward needs --reference",
        ),
        (
            {"num_samples": 4, "aggregate": "best-of-n", "scorer": "judge"},
            "--scorer judge needs --judge-model M",
        ),
        (
            {"num_samples": 4, "aggregate": "best-of-n", "reference": "sft", "beta": 0.0},
            "--beta must be > 0, got 0.0",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_its_flag(fields, message):
    with pytest.raises(UserError) as err:
        EvalConfig(**{**GOOD, **fields})
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_defaults_are_filled_in():
    greedy = EvalConfig(**GOOD)
    assert greedy.out == Path("out") and greedy.bad_row_policy == "fail"
    assert greedy.new_tokens == 64 and EvalConfig(**GOOD, cot=True).new_tokens == 1024
    assert not greedy.sampled and greedy.sampling["temperature"] == 0.0 and greedy.sampling["seed"] is None
    sampled = EvalConfig(**GOOD, num_samples=4, seed=3)
    assert sampled.sampled and sampled.sampling["temperature"] == 0.7 and sampled.sampling["seed"] == 3
    best = EvalConfig(**GOOD, num_samples=4, aggregate="best-of-n", reference="sft")
    assert best.sampling["scorer"] == "reward" and best.sampling["beta"] == 0.1
    assert best.settings() == {
        "model": "m",
        "cot": False,
        "max_new_tokens": 64,
        "max_dynamic_patch": 6,
        **best.sampling,
    }


@pytest.mark.parametrize(("given", "policy"), [("fail", "fail"), ("error", "fail"), ("skip", "skip")])
def test_on_bad_row_takes_both_spellings(given, policy):
    assert EvalConfig(**GOOD, on_bad_row=given).bad_row_policy == policy
    args = build_parser().parse_args(["--model", "m", "--data", "b.tsv", "--out", "o", "--on-bad-row", given])
    assert args.on_bad_row == policy


def test_help_documents_fail_not_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--on-bad-row {fail,skip}" in help_text and "error" not in help_text


def test_the_flags_make_the_config():
    argv = ["--model", "m", "--data", "a.tsv", "--data", "b.jsonl", "--out", "o", "--cot", "--limit", "5"]
    argv += ["--num-samples", "8", "--aggregate", "best-of-n", "--scorer", "judge", "--judge-model", "j"]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.model, config.data, config.out, config.cot, config.limit) == (
        "m",
        ["a.tsv", "b.jsonl"],
        Path("o"),
        True,
        5,
    )
    assert config.sampling["scorer"] == "judge" and config.sampling["temperature"] == 0.7
    assert set(config.vllm_options) == {"tensor_parallel_size", "data_parallel_size", "max_images_per_prompt"}
    with pytest.raises(UserError, match="--limit must be >= 1, got 0"):
        config_from_args(build_parser().parse_args([*argv, "--limit", "0"]))


def test_a_checked_config_stays_checked():
    config = EvalConfig(**GOOD)
    with pytest.raises(FrozenInstanceError):
        config.limit = 0
