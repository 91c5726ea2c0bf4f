"""GSPOConfig: a ``trl.GRPOConfig`` (trl 1.16) with the defaults of GSPO and the fields of ``mpo rl``.

GSPO (Zheng et al. 2025, *Group Sequence Policy Optimization*, arXiv 2507.18071) is GRPO with one
importance ratio per sequence instead of one per token. For a query x with G sampled responses y_i,

    s_i(θ) = (π_θ(y_i|x) / π_θold(y_i|x))^(1/|y_i|) = exp( (1/|y_i|) Σ_t log π_θ(y_i,t|x,y_i,<t) − log π_θold(y_i,t|…) )

    A_i = (r_i − mean_j r_j) / std_j r_j                    (group-normalised reward)

    J(θ) = E[ (1/G) Σ_i min( s_i(θ) A_i, clip(s_i(θ), 1 − ε_low, 1 + ε_high) A_i ) ]   (GSPO eq. 5)

TRL computes exactly this with ``importance_sampling_level="sequence"`` and ``loss_type="grpo"`` (the
per-sequence value averaged over sequences; TRL warns that its token-summing losses weight each sequence
by its length). With ``beta > 0`` TRL adds β·KL(π_θ || π_ref) per token (the k3 estimator); InternVL3.5's
GSPO stage runs without a reference model, and so does the default here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from mpo.grading.answers import ANSWER_STYLES
from mpo.prompts import COT_INSTRUCTION
from mpo.runtime import cpu_training_defaults

REWARDS = ("correctness", "format", "reasoning")  # the names of mpo.rl.rewards.REWARD_FUNCS
# GRPOConfig fields (trl 1.16) this trainer does not take, and why: setting one is an error, not a no-op.
REFUSED_GRPO_FIELDS = {
    "use_transformers_continuous_batching": "TRL refuses it for vision models; mpo rl samples with its own prefill",
    "use_transformers_paged": "deprecated alias of use_transformers_continuous_batching",
    "trust_remote_code": "no code from a checkpoint runs; convert original checkpoints with mpo convert",
    "model_init_kwargs": "the model is loaded by mpo.models.loading.load_model",
}


def parse_range(value) -> tuple[float, float]:
    """``"0.2,0.8"`` (the command line), ``[0.2, 0.8]`` (a recipe) -> (0.2, 0.8); ``ValueError`` otherwise."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"query_accuracy: expected LO,HI (e.g. 0.2,0.8), got {value!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"query_accuracy: need 0 <= LO <= HI <= 1, got {lo},{hi}")
    return lo, hi


@dataclass
class GSPOConfig(GRPOConfig):
    """Configuration of :class:`mpo.rl.trainer.GSPOTrainer`: ``trl.GRPOConfig`` with GSPO's defaults
    (sequence-level ratio, per-sequence loss, no reference model, GSPO's clipping range) and the fields
    of ``mpo rl``: the rewards, query selection, and the chain-of-thought prompt of the pair builder."""

    importance_sampling_level: str = field(
        default="sequence",
        metadata={"help": "GSPO: one ratio s_i per sequence, exp(mean_t log π/π_old) ('token': GRPO's)."},
    )
    loss_type: str = field(
        default="grpo",
        metadata={
            "help": "How per-sequence terms are averaged: 'grpo' = (1/G) Σ_i over sequences, GSPO's objective. "
            "TRL's other losses (dapo, bnpo, ...) weight each sequence by its length under the sequence ratio."
        },
    )
    beta: float = field(
        default=0.0,
        metadata={
            "help": "KL coefficient against the initial policy (0: no reference model, as InternVL3.5's GSPO)."
        },
    )
    epsilon: float = field(
        default=3e-4, metadata={"help": "ε_low of clip(s_i, 1 − ε_low, 1 + ε_high) (GSPO paper: 3e-4)."}
    )
    epsilon_high: float | None = field(default=4e-4, metadata={"help": "ε_high (GSPO paper: 4e-4)."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["correctness"],
        metadata={
            "help": "Rewards (mpo.rl.rewards), each logged on its own as rewards/<name>/mean: 'correctness' "
            "(1 when the final answer is right, by the pair builder's verdict), 'format' (1 when a 'Final answer:' "
            "can be read), 'reasoning' (1 when the response states every step of the row's reference reasoning). "
            "Weighted by reward_weights."
        },
    )
    query_accuracy: str = field(
        default="0.2,0.8",
        metadata={
            "help": "LO,HI: keep the questions whose rollout accuracy a lies in LO <= a <= HI (both ends kept; "
            "InternVL3.5: 0.2,0.8). 0,1 keeps every question and samples nothing."
        },
    )
    query_build: str | None = field(
        default=None,
        metadata={
            "help": "Output folder of `mpo build-pairs correctness` on the same questions: their accuracy is read "
            "from its per-question records (n_correct of the responses) instead of being sampled."
        },
    )
    query_samples: int | None = field(
        default=None,
        metadata={
            "help": "Responses sampled per question to measure its accuracy without a build (default: num_generations)."
        },
    )
    answer_style: str = field(
        default="auto",
        metadata={
            "help": "How final answers are extracted (as `mpo build-pairs --answer-style`).",
            "choices": list(ANSWER_STYLES),
        },
    )
    check_reasoning: bool = field(
        default=False,
        metadata={
            "help": "As `mpo build-pairs --check-reasoning`: a right answer that does not state the row's reference "
            "reasoning is 'unsound' and earns no correctness reward."
        },
    )
    instruction: str = field(
        default=COT_INSTRUCTION,
        metadata={
            "help": "The chain-of-thought instruction that replaces each question's answer-format one."
        },
    )
    shared_prefill: bool = field(
        default=True,
        metadata={
            "help": "Without vLLM: run each prompt (and the vision tower) once and sample its num_generations "
            "responses from copies of its KV cache (mpo.generation.TransformersBackend.prefill)."
        },
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every this many steps."})

    def __post_init__(self) -> None:
        for name, why in REFUSED_GRPO_FIELDS.items():
            if getattr(self, name) not in (None, False):
                raise ValueError(
                    f"{name}: a trl.GRPOConfig field that mpo rl does not use ({why}); leave it unset"
                )
        unknown = sorted(set(self.reward_funcs) - set(REWARDS))
        if unknown or not self.reward_funcs:
            raise ValueError(
                f"reward_funcs: unknown {unknown or 'none given'}; the rewards are {list(REWARDS)}"
            )
        self.query_range = parse_range(self.query_accuracy)
        self.query_accuracy = f"{self.query_range[0]:g},{self.query_range[1]:g}"
        cpu_training_defaults(self)  # fp32 and gloo multi-process on the CPU; before the parent's set-up
        super().__post_init__()
