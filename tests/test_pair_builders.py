"""The pair-builder table: a pipeline registered in `BUILDERS` (here a toy one, from the test) gets its
subcommand, its flags and its settings, and runs through `mpo build-pairs` to the MMPR layout and the
report without a line of build_pairs.py changed. And the flag spellings both accepted: --data-root and
the recipes' --data_root."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from data_builders import build_pairs
from data_builders.builders import BUILDERS, BuildContext, PairBuilder
from data_builders.inputs import Question, bad_row_record, check_question
from data_builders.synthetic import generate
from mpo.cli import build_pairs as cli_build_pairs


class EchoBuilder:
    """Chosen: the row's own answer; rejected: a fixed text. Asks the backend for nothing."""

    def __init__(self, rejected: str, seed: int) -> None:
        self.rejected, self.seed = rejected, seed

    def process(self, questions: list[Question]) -> list[dict]:
        records = []
        for q in questions:
            reason = check_question(q, ("question", "answer"))
            if reason is not None:
                records.append(bad_row_record(q, reason))
                continue
            records.append(
                {
                    "key": q.key,
                    "index": q.index,
                    "subset": q.subset.name,
                    "line": q.line,
                    "status": "candidate",
                    "question": str(q.row["question"]),
                    "answer": str(q.row["answer"]),
                    "responses": [{"text": str(q.row["answer"])}, {"text": self.rejected}],
                    "pairs": [{"subset": "echo", "c": 0, "r": 1, "drop": None}],
                    **q.visual_fields(),
                }
            )
        return records


class EchoPairs:
    help = "toy: chosen = the row's answer, rejected = --rejected"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rejected", default="I cannot tell.")

    def responses(self, args: argparse.Namespace) -> int:
        return 1

    def settings(self, args: argparse.Namespace) -> dict:
        return {"rejected": args.rejected}

    def make(self, args: argparse.Namespace, context: BuildContext) -> EchoBuilder:
        assert context.params.n == 1 and context.seed == args.seed
        return EchoBuilder(args.rejected, context.seed)


class NoBackend:
    name = "none"

    def generate(self, requests, params):  # pragma: no cover - the toy never generates
        raise AssertionError("the echo builder generates nothing")


@pytest.fixture
def qa(tmp_path) -> Path:
    generate(tmp_path / "synthetic", n_sft=4, n_qa=3, n_eval=0, seed=1)
    return tmp_path / "synthetic" / "qa" / "meta.json"


def test_a_registered_builder_runs_through_build_pairs(qa, tmp_path, monkeypatch, capsys):
    echo: PairBuilder = EchoPairs()
    monkeypatch.setitem(BUILDERS, "echo-toy", echo)
    out = tmp_path / "pairs"
    argv = ["echo-toy", "--model", "m", "--data", str(qa), "--out", str(out), "--rejected", "No idea."]
    args = cli_build_pairs.build_parser().parse_args(argv)
    report = build_pairs.run(args, backend=NoBackend())

    assert report["pipeline"] == "echo_toy"
    assert report["questions"]["by_status"] == {"paired": 3, "dropped": 0, "bad_row": 0}
    assert report["settings"]["rejected"] == "No idea." and report["settings"]["backend"] == "none"
    meta = json.loads((out / "meta.json").read_text())
    assert list(meta) == ["synthetic_qa_echo"]
    lines = [json.loads(x) for x in (out / meta["synthetic_qa_echo"]["annotation"]).read_text().splitlines()]
    rows = [json.loads(x) for x in (qa.parent / "qa.jsonl").read_text().splitlines()]
    assert [(x["chosen"], x["rejected"]) for x in lines] == [(r["answer"], "No idea.") for r in rows]
    assert [x["image"] for x in lines] == [r["image"] for r in rows]

    with pytest.raises(SystemExit):
        cli_build_pairs.build_parser().parse_args(["--help"])
    assert "echo-toy" in capsys.readouterr().out


def test_the_table_gives_each_builder_its_subcommand_and_flags():
    parser = cli_build_pairs.build_parser()
    for name in BUILDERS:
        args = parser.parse_args([name, "--model", "m", "--data", "d.json", "--out", "o"])
        assert args.pipeline == name
    assert parser.parse_args(["correctness", "--model", "m", "--data", "d", "--out", "o", "--n", "3"]).n == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["dropout-ntp", "--model", "m", "--data", "d", "--out", "o", "--n", "3"])


@pytest.mark.parametrize("flag", ["--data-root", "--data_root"])
def test_data_root_takes_both_spellings(flag):
    args = cli_build_pairs.build_parser().parse_args(
        ["correctness", "--model", "m", "--data", "d", "--out", "o", flag, "/data", "--path_map", "/a=/b"]
    )
    assert args.data_root == Path("/data") and args.path_map == ["/a=/b"]


def test_help_documents_the_dashed_spelling(capsys):
    with pytest.raises(SystemExit):
        cli_build_pairs.build_parser().parse_args(["correctness", "--help"])
    printed = capsys.readouterr().out
    assert "--data-root" in printed and "--data_root" not in printed
