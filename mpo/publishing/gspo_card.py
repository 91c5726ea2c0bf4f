"""The model card's section for a GSPO run (``mpo_config.json`` with ``"stage": "gspo"``, written by `mpo rl`).

Markdown lines from the run record and the trainer state, for the card builder of the publishing layer
(:func:`mpo.publishing.card.build_card`): the objective, the hyperparameters that define the stage, the query
selection, and the first and last logged values of what TRL logs per step (each reward, the accuracy by group,
response length, clipped ratios of the completions and of the importance ratio, entropy).
"""

from __future__ import annotations

from mpo import markdown

STAGE = "gspo"
INTRO = (
    "fine-tuned online with **GSPO** (Group Sequence Policy Optimization, the online stage of InternVL3.5's "
    "Cascade RL) on its own rollouts by the `internvl-mpo` toolkit (`mpo rl`, derived from TRL's GRPOTrainer)"
)
HYPERPARAMETERS = (
    ("importance_sampling_level", "sequence: one ratio s_i per response"),
    ("loss_type", "grpo: the per-response terms averaged"),
    ("epsilon", "ε_low of clip(s_i, 1 − ε_low, 1 + ε_high)"),
    ("epsilon_high", "ε_high"),
    ("beta", "KL coefficient (0: no reference model)"),
    ("num_generations", "G, responses per question"),
    ("temperature", "sampling temperature of the rollouts"),
    ("max_completion_length", "longest response, tokens"),
    ("reward_funcs", "rewards (mpo.rl.rewards)"),
    ("reward_weights", "their weights"),
    ("learning_rate", ""),
    ("lr_scheduler_type", ""),
    ("per_device_train_batch_size", "responses per device and step"),
    ("gradient_accumulation_steps", ""),
    ("max_steps", ""),
    ("seed", ""),
)
METRIC_PREFIXES = ("reward", "rewards/", "accuracy/", "completions/", "clip_ratio/", "entropy", "kl")


def is_rl_run(run: dict | None) -> bool:
    return bool(run) and run.get("stage") == STAGE


def section(run: dict, state: dict | None) -> list[str]:
    """The card's training section of a GSPO run."""
    args = run.get("args", {})
    lines = [
        "## Training recipe",
        "",
        "GSPO ([Zheng et al. 2025](https://arxiv.org/abs/2507.18071)) with G responses y_i per question x and "
        "group-normalised rewards A_i: s_i = (π(y_i|x) / π_old(y_i|x))^(1/|y_i|), maximising "
        "(1/G) Σ_i min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i).",
        "",
        "### Hyperparameters",
        "",
    ]
    rows = [
        [name, f"`{args[name]}`", note]
        for name, note in HYPERPARAMETERS
        if args.get(name) not in (None, "", -1)
    ]
    lines += markdown.table(["hyperparameter", "value", "note"], rows) + [""]
    queries = run.get("queries")
    if queries:
        lo, hi = queries["range"]
        how = (
            f"measured from {queries['source']}"
            if queries.get("source")
            else "not measured (every question kept)"
        )
        lines += [
            f"Questions: {queries['kept']} of {queries['questions']} kept, those with a rollout accuracy in "
            f"[{lo:g}, {hi:g}], {how}.",
            "",
        ]
    return lines + metrics_lines(state)


def metrics_lines(state: dict | None) -> list[str]:
    """First and last logged value of every stage metric (:data:`METRIC_PREFIXES`)."""
    logs = [h for h in (state or {}).get("log_history", []) if "reward" in h]
    if not logs:
        return ["### End of training", "", "No reward metrics in the training log.", ""]
    first, last = logs[0], logs[-1]
    names = [k for k in last if k.startswith(METRIC_PREFIXES) and isinstance(last[k], (int, float))]
    steps = f"Trained for {state.get('global_step')} optimizer steps."
    header = ["metric", f"first logged (step {first.get('step')})", f"last logged (step {last.get('step')})"]
    rows = [[f"`{k}`", _num(first.get(k)), _num(last[k])] for k in names]
    return ["### End of training", "", steps, ""] + markdown.table(header, rows) + [""]


def _num(x) -> str:
    return "–" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)
