"""What one `mpo eval` run reads: :class:`EvalConfig`, checked when it is made.

Every bad value stops with one line that names the flag (and so the field: ``--max-new-tokens`` is
``max_new_tokens``). :func:`eval.run.evaluate` takes the checked config; `mpo eval`'s flags build it
(:mod:`mpo.cli.eval`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from eval.scaling import AGGREGATES
from mpo.errors import UserError

if TYPE_CHECKING:
    from mpo.generation import GenerationBackend

# Generation length when --max-new-tokens is not given.
DEFAULT_MAX_NEW_TOKENS = {False: 64, True: 1024}
# Prompts per generate call (predictions are written after each) when --batch-size is not given.
DEFAULT_BATCH_SIZE = {"transformers": 16, "vllm": 512}
DEFAULT_MAX_DYNAMIC_PATCH = 6
# --temperature when --num-samples > 1 and none is given.
DEFAULT_SAMPLE_TEMPERATURE = 0.7
SCORERS = ("reward", "judge")
BAD_ROWS = "bad_rows.json"  # the rows --on-bad-row skip left out, in --out
# --on-bad-row values -> mpo.data.meta.BadRows policies: `fail` as in the recipes' `on_bad_row`, and `error`,
# its older spelling here, still accepted.
ON_BAD_ROW = {"fail": "fail", "skip": "skip"}
ON_BAD_ROW_ALIASES = {"error": "fail"}


def bad_row_policy(value: str) -> str:
    """The :class:`mpo.data.meta.BadRows` policy of an ``--on-bad-row`` value (``error`` is ``fail``)."""
    return ON_BAD_ROW_ALIASES.get(value, value)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation of ``model`` on ``data`` into ``out`` (:func:`eval.run.evaluate`).

    ``backend`` is a name for :func:`mpo.generation.make_backend` (built only when something is left
    to generate) or a ready backend object. ``limit`` keeps the first N items of each benchmark.
    ``on_bad_row``: ``fail`` (or ``error``) raises on the first bad row, ``skip`` leaves bad rows out
    and lists them in ``out/bad_rows.json``. ``judge_model`` (with the same backend kind as
    ``backend``) or a ready ``judge_backend`` judges the benchmarks that need one. ``vllm_options``
    are the vLLM engine's (:func:`mpo.generation.vllm_options`). ``progress``: show a progress bar
    (None: when the output is a terminal).

    Sampling (:mod:`eval.scaling`): ``num_samples`` responses per item at ``temperature`` (default 0,
    greedy, with one sample; 0.7 with more), seeded per item from ``seed``; ``aggregate`` picks one
    (``majority`` or ``best-of-n``). Best-of-n scores with ``scorer``: ``"reward"`` (default; needs
    ``reference``, ``beta`` defaults to :data:`eval.reward.DEFAULT_BETA`), ``"judge"`` (needs
    ``judge_model`` or ``judge_backend``), or a ready object with ``score(request, responses)``.
    """

    model: str
    data: list[str]
    out: Path
    cot: bool = False
    backend: str | GenerationBackend = "auto"
    batch_size: int | None = None
    max_new_tokens: int | None = None
    max_dynamic_patch: int = DEFAULT_MAX_DYNAMIC_PATCH
    limit: int | None = None
    overwrite: bool = False
    progress: bool | None = None
    on_bad_row: str = "fail"
    judge_model: str | None = None
    judge_backend: GenerationBackend | None = None
    num_samples: int = 1
    temperature: float | None = None
    seed: int = 0
    aggregate: str = "majority"
    scorer: str | object | None = None
    reference: str | None = None
    beta: float | None = None
    vllm_options: dict | None = None
    # run.json's sampling settings, checked and with their defaults filled in (from the fields above)
    sampling: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))  # frozen: checked once, read only after
        object.__setattr__(self, "data", list(self.data or []))
        for flag, value in (
            ("--limit", self.limit),
            ("--batch-size", self.batch_size),
            ("--max-new-tokens", self.max_new_tokens),
        ):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        if self.max_dynamic_patch < 1:
            raise UserError(f"--max-dynamic-patch must be >= 1, got {self.max_dynamic_patch}")
        if not self.data:
            raise UserError("no benchmark given: --data FILE")
        object.__setattr__(self, "sampling", sampling_settings(self))
        if bad_row_policy(self.on_bad_row) not in ON_BAD_ROW:
            raise UserError(f"--on-bad-row must be one of {', '.join(ON_BAD_ROW)}, got {self.on_bad_row!r}")

    @property
    def bad_row_policy(self) -> str:
        """``fail`` or ``skip`` (:class:`mpo.data.meta.BadRows`)."""
        return bad_row_policy(self.on_bad_row)

    @property
    def new_tokens(self) -> int:
        """``max_new_tokens``, or its default for the prompt (direct answer or chain of thought)."""
        return self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[self.cot]

    @property
    def model_id(self) -> str:
        """The model as run.json names it: an absolute path when it is a folder here."""
        return str(Path(self.model).resolve()) if Path(self.model).exists() else str(self.model)

    @property
    def sampled(self) -> bool:
        """Whether responses are sampled (temperature > 0) rather than greedy."""
        return self.sampling["temperature"] > 0

    @property
    def backend_kind(self) -> str:
        """The backend name a judge model is loaded with (a ready backend object: transformers)."""
        return self.backend if isinstance(self.backend, str) else "transformers"

    def settings(self) -> dict:
        """What a resumed run must share with the run that wrote ``out`` (run.json, less ``data``)."""
        return {
            "model": self.model_id,
            "cot": self.cot,
            "max_new_tokens": self.new_tokens,
            "max_dynamic_patch": self.max_dynamic_patch,
            **self.sampling,
        }


def _greedy_or_majority(config: EvalConfig, temperature: float) -> dict:
    """The sampling settings of a run that scores no samples (greedy, or majority vote)."""
    if config.scorer is not None or config.reference is not None:
        raise UserError(
            "--scorer and --reference score samples for --aggregate best-of-n with --temperature > 0"
        )
    sampled = temperature > 0
    return {
        "num_samples": config.num_samples,
        "temperature": float(temperature),
        "seed": config.seed if sampled else None,
        "aggregate": config.aggregate if sampled else None,
        "scorer": None,
        "reference": None,
        "beta": None,
    }


def _best_of_n(config: EvalConfig, temperature: float) -> dict:
    """The sampling settings of a best-of-n run: its scorer, and the reward scorer's reference and beta."""
    scorer, reference, beta = config.scorer, config.reference, config.beta
    scorer = "reward" if scorer is None else scorer
    name = scorer if isinstance(scorer, str) else getattr(scorer, "name", type(scorer).__name__)
    if isinstance(scorer, str) and scorer not in SCORERS:
        raise UserError(f"--scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")
    if scorer == "reward" and reference is None:
        raise UserError(
            "--aggregate best-of-n --scorer reward needs --reference (the SFT checkpoint the "
            "evaluated model was trained from), or use --scorer judge --judge-model M"
        )
    if scorer == "judge" and not (config.judge_model or config.judge_backend):
        raise UserError("--scorer judge needs --judge-model M")
    if reference is not None and scorer != "reward":
        raise UserError("--reference is the reference model of --scorer reward")
    if scorer == "reward":
        from eval.reward import DEFAULT_BETA

        beta = DEFAULT_BETA if beta is None else beta
        if beta <= 0:
            raise UserError(f"--beta must be > 0, got {beta}")
        reference = str(Path(reference).resolve()) if Path(reference).exists() else str(reference)
    return {
        "num_samples": config.num_samples,
        "temperature": float(temperature),
        "seed": config.seed,
        "aggregate": config.aggregate,
        "scorer": name,
        "reference": reference,
        "beta": beta if scorer == "reward" else None,
    }


def sampling_settings(config: EvalConfig) -> dict:
    """The sampling part of run.json, checked; names the flag at fault."""
    num_samples, temperature = config.num_samples, config.temperature
    if num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {num_samples}")
    if temperature is None:
        temperature = 0.0 if num_samples == 1 else DEFAULT_SAMPLE_TEMPERATURE
    if temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {temperature}")
    if temperature == 0 and num_samples > 1:
        raise UserError(
            f"--num-samples {num_samples} needs sampling: give --temperature > 0 (greedy decoding "
            "gives one response)"
        )
    if config.aggregate not in AGGREGATES:
        raise UserError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {config.aggregate!r}")
    if config.aggregate != "best-of-n" or temperature == 0:
        return _greedy_or_majority(config, temperature)
    return _best_of_n(config, temperature)
