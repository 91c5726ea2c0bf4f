"""The pair builders `mpo build-pairs` runs: one entry each in :data:`BUILDERS`.

A :class:`PairBuilder` is what the command needs to know of a pipeline: its one-line help, its own flags
(next to the shared ones of :mod:`data_builders.build_pairs`), the settings a rerun must repeat, how many
responses it samples per question, and the object that turns a batch of questions into journal records
(:class:`QuestionBuilder`). A new pipeline is a class with these five members and one entry here; its
subcommand is the entry's name, and the journals and the report call it by that name with ``-`` as ``_``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Protocol

from data_builders.correctness import CorrectnessBuilder
from data_builders.dropout_ntp import CHOSEN_FROM, DropoutNTPBuilder
from data_builders.filters import FilterConfig, QualityScorer
from data_builders.inputs import Question
from data_builders.prompts import COT_INSTRUCTION
from mpo.errors import UserError
from mpo.generation import GenerationBackend, SamplingParams
from mpo.grading.answers import ANSWER_STYLES


class QuestionBuilder(Protocol):
    """Turns a batch of questions into journal records, one per question, in order (see
    :class:`~data_builders.correctness.CorrectnessBuilder` for a record's fields)."""

    def process(self, questions: list[Question]) -> list[dict]: ...


@dataclass(frozen=True)
class BuildContext:
    """What every pipeline's builder is made with, from the shared flags."""

    backend: GenerationBackend
    params: SamplingParams  # n is the pipeline's responses(args)
    seed: int
    filters: FilterConfig
    scorer: QualityScorer | None


class PairBuilder(Protocol):
    """One `mpo build-pairs` pipeline, as the command sees it."""

    help: str  # its line in `mpo build-pairs --help`

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add its own flags to its subcommand's parser (the shared ones are there already)."""
        ...

    def responses(self, args: argparse.Namespace) -> int:
        """Responses sampled per question (SamplingParams.n)."""
        ...

    def settings(self, args: argparse.Namespace) -> dict:
        """Its flags that decide the results (build.json: a rerun into the same folder must repeat them)."""
        ...

    def make(self, args: argparse.Namespace, context: BuildContext) -> QuestionBuilder:
        """The builder of this run; a bad flag value is a UserError naming the flag."""
        ...


class CorrectnessPairs:
    """Correctness-based pairs (:mod:`data_builders.correctness`)."""

    help = "sample N CoT answers, pair correct with incorrect (needs ground truth)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n", type=int, default=8, help="responses sampled per question (reference: 32)")
        parser.add_argument(
            "--max-pairs-per-question", type=int, default=15, help="K: pairs kept per question and subset"
        )
        parser.add_argument(
            "--answer-style", choices=ANSWER_STYLES, default="auto", help="how final answers are extracted"
        )
        parser.add_argument(
            "--instruction",
            default=COT_INSTRUCTION,
            help=f"CoT instruction that replaces the answer-format one (default: {COT_INSTRUCTION!r})",
        )
        parser.add_argument(
            "--check-reasoning",
            action="store_true",
            help="each row's `reasoning` (a reference chain of thought) must be stated step by step too: a "
            "right answer without it is `unsound` and rejected against the sound ones (subset `reasoning`)",
        )

    def responses(self, args: argparse.Namespace) -> int:
        return args.n

    def settings(self, args: argparse.Namespace) -> dict:
        return {
            "n": args.n,
            "max_pairs_per_question": args.max_pairs_per_question,
            "answer_style": args.answer_style,
            "instruction": args.instruction,
            "check_reasoning": args.check_reasoning,
        }

    def make(self, args: argparse.Namespace, context: BuildContext) -> CorrectnessBuilder:
        if args.max_pairs_per_question < 1:
            raise UserError(f"--max-pairs-per-question must be >= 1, got {args.max_pairs_per_question}")
        return CorrectnessBuilder(
            context.backend,
            context.params,
            seed=context.seed,
            max_pairs=args.max_pairs_per_question,
            filters=context.filters,
            scorer=context.scorer,
            answer_style=args.answer_style,
            instruction=args.instruction,
            check_reasoning=args.check_reasoning,
        )


class DropoutNTPPairs:
    """DropoutNTP pairs (:mod:`data_builders.dropout_ntp`)."""

    help = "chosen = full answer, rejected = its first half continued without the image"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--keep-ratio", type=float, default=0.5, help="fraction of the chosen's words kept as prefix"
        )
        parser.add_argument(
            "--chosen-from",
            choices=CHOSEN_FROM,
            default="model",
            help="model: the model's own answer (default); data: the row's chosen, assistant turn or answer",
        )

    def responses(self, args: argparse.Namespace) -> int:
        return 1

    def settings(self, args: argparse.Namespace) -> dict:
        return {"keep_ratio": args.keep_ratio, "chosen_from": args.chosen_from}

    def make(self, args: argparse.Namespace, context: BuildContext) -> DropoutNTPBuilder:
        return DropoutNTPBuilder(
            context.backend,
            context.params,
            seed=context.seed,
            keep_ratio=args.keep_ratio,
            chosen_from=args.chosen_from,
            filters=context.filters,
            scorer=context.scorer,
        )


# subcommand -> pipeline, in `mpo build-pairs --help` order ("merge" is the command's own)
BUILDERS: dict[str, PairBuilder] = {
    "correctness": CorrectnessPairs(),
    "dropout-ntp": DropoutNTPPairs(),
}
