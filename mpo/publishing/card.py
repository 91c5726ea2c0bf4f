"""The MPO model card of a run folder: written at every save (:class:`ModelCardCallback`), rebuilt by `mpo push`.

The card (``README.md``, huggingface_hub's ``ModelCard`` / ``ModelCardData``) reads everything from the
run folder: the recipe (``mpo_config.json``, written by the trainer at every save; ``training_args.bin``
for older runs), the final δ and reward metrics (``trainer_state.json``) and the preference-data report
of ``mpo build-pairs`` (``report.json``, next to the training ``meta.json`` or in ``../pairs/``).
`mpo push` (:mod:`mpo.publishing.hub`) adds the evaluation section, which needs :mod:`eval`; the trainer's card
has none (an evaluation runs after training).
"""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import metadata
from pathlib import Path

from transformers import TrainerCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mpo import markdown
from mpo.checkpointing import MODEL_WEIGHT_FILES, REWARD_SHIFT_KEY, RUN_CONFIG_NAME
from mpo.errors import UserError
from mpo.losses import TERMS
from mpo.publishing import gspo_card as rl_card

CARD_NAME = "README.md"
STATE_NAME = "trainer_state.json"
PIPELINE_TAG = "image-text-to-text"
TAGS = ["mpo", "internvl", "trl", "preference-optimization"]
DEFAULT_LICENSE = "apache-2.0"
# metrics reported at the end of training (train log; the eval log adds the "eval_" prefix)
FINAL_METRICS = (
    "loss",
    *(f"loss/{term.metric}" for term in TERMS.values()),
    "rewards/accuracies",
    "rewards/margins",
    "rewards/chosen",
    "rewards/rejected",
    "logps/chosen",
    "logps/rejected",
    "bco/delta",
)


# ------------------------------------------------------------------------------------- run record


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def read_run_config(model_dir: Path) -> tuple[dict | None, str | None]:
    """The run record and where it came from: mpo_config.json, else training_args.bin (a pickle of the
    trainer's config, loadable only with this project importable), else (None, None)."""
    path = model_dir / RUN_CONFIG_NAME
    if path.is_file():
        return read_json(path), RUN_CONFIG_NAME
    pickle = model_dir / "training_args.bin"
    if pickle.is_file():
        try:
            import torch

            args = torch.load(pickle, weights_only=False, map_location="cpu")
            return {"args": args.to_dict(), "world_size": None}, pickle.name
        except Exception as err:  # an unpicklable or foreign file: the card goes without the recipe
            print(
                f"mpo push: warning: could not read {pickle} ({type(err).__name__}: {err}); "
                "the card will not list the hyperparameters"
            )
    return None, None


def check_model_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir)
    if not path.exists():
        raise UserError(f"{path}: no such folder")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder (--model takes the output_dir of a run)")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise UserError(f"{path}: not a checkpoint (no config.json or adapter_config.json)")
    if not any((path / name).is_file() for name in MODEL_WEIGHT_FILES) and not any(
        path.glob("model-*.safetensors")
    ):
        raise UserError(
            f"{path}: not a checkpoint (no model weights: model*.safetensors, pytorch_model*.bin "
            "or adapter_model.*)"
        )
    return path


def check_repo_id(repo_id: str | None, what: str = "repo id") -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not repo_id:
        raise UserError("no repo id: --repo-id ORG/NAME (or hub_model_id in the recipe)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"bad {what} {repo_id!r}: {str(err).splitlines()[0]}") from None
    return repo_id


def _hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub model id (``org/name``) and is not a local path, else None."""
    if not name or os.path.exists(name) or name.count("/") != 1:
        return None
    try:
        check_repo_id(name)
    except UserError:
        return None
    return name


# ---------------------------------------------------------------------------------------- card body


def _num(x) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return (
            f"{x:.4g}" if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5) else f"{x:.4f}".rstrip("0").rstrip(".")
        )
    return str(x)


def objective_line(args: dict) -> str:
    """``0.8 × preference (DPO, sigmoid) + 0.2 × quality (...) + 1 × generation (SFT)``."""
    terms = list(args.get("loss_type") or [])
    weights = args.get("loss_weights") or [1.0] * len(terms)
    return " + ".join(
        f"{_num(float(w))} × {TERMS[t].title if t in TERMS else t}"
        for t, w in zip(terms, weights, strict=False)
    )


def hyperparameter_rows(run: dict) -> list[list[str]]:
    a = run.get("args", {})
    rows: list[list[str]] = []

    def add(name: str, value, note: str = "") -> None:
        if value is not None and value != "":
            rows.append(
                [name, f"`{value}`" if not isinstance(value, str) or value[:1] != "`" else value, note]
            )

    if a.get("loss_type"):
        add("loss_type", a["loss_type"], "terms of the objective")
        add("loss_weights", a.get("loss_weights"), "w_p, w_q, w_g in the order of loss_type")
    add("beta", a.get("beta"), "β of the implicit reward r = β log(π/π_ref)")
    add("sft_normalization", a.get("sft_normalization"), "generation loss: per sequence (paper) or per token")
    add("learning_rate", _num(a["learning_rate"]) if "learning_rate" in a else None)
    add("lr_scheduler_type", a.get("lr_scheduler_type"))
    if a.get("warmup_steps"):
        add("warmup_steps", a["warmup_steps"])
    add("weight_decay", a.get("weight_decay"))
    add("num_train_epochs", a.get("num_train_epochs"))
    if (a.get("max_steps") or -1) > 0:
        add("max_steps", a["max_steps"], "overrides num_train_epochs")
    per_device, accum = a.get("per_device_train_batch_size"), a.get("gradient_accumulation_steps")
    add("per_device_train_batch_size", per_device)
    add("gradient_accumulation_steps", accum)
    world = run.get("world_size")
    if per_device and accum:
        if world:
            add(
                "global batch size", per_device * accum * world, f"{per_device} × {accum} × {world} processes"
            )
        else:
            add(
                "global batch size",
                f"{per_device * accum} × processes",
                "per device × accumulation × processes",
            )
    add("max_length", a.get("max_length"), "tokens per [prompt + response], image tokens included")
    precision = "bf16" if a.get("bf16") else "fp16" if a.get("fp16") else "fp32" if "bf16" in a else None
    add("precision", precision)
    add("gradient_checkpointing", a.get("activation_checkpointing", a.get("gradient_checkpointing")))
    add("optim", a.get("optim"))
    add("seed", a.get("seed"))
    add(
        "precompute_ref_log_probs",
        a.get("precompute_ref_log_probs"),
        "reference log-probs computed once, cached",
    )
    add("prefix_sharing", a.get("prefix_sharing"), "[prompt | chosen | rejected] in one sequence")
    if a.get("max_packed_tokens"):
        add("max_packed_tokens", a["max_packed_tokens"])
    if a.get("deepspeed"):
        ds = a["deepspeed"]
        add("deepspeed", Path(ds).name if isinstance(ds, str) else "inline config")
    model = run.get("model") or {}
    frozen = [p for p in ("vision", "projector", "llm") if model.get(f"freeze_{p}")]
    if model:
        add("frozen", ", ".join(frozen) if frozen else "nothing", "parts of the model not trained")
    if model.get("use_peft"):
        add(
            "LoRA",
            f"r={model.get('lora_r')}, alpha={model.get('lora_alpha')}, dropout={model.get('lora_dropout')}",
        )
    data = run.get("data") or {}
    if data.get("meta_path"):
        add("training data", f"`{Path(data['meta_path']).name}` (MMPR layout)")
    return rows


def reward_shift(state: dict | None) -> dict | None:
    """``{"value": δ, "count": rewards folded in}`` from trainer_state.json, else the last logged ``bco/delta``."""
    if not state:
        return None
    saved = (state.get("stateful_callbacks") or {}).get(REWARD_SHIFT_KEY)
    if saved and "value" in (saved.get("attributes") or {}):
        attrs = saved["attributes"]
        return {"value": float(attrs["value"]), "count": attrs.get("count"), "source": "saved state"}
    logged = [h["bco/delta"] for h in state.get("log_history", []) if "bco/delta" in h]
    return {"value": float(logged[-1]), "count": None, "source": "last logged"} if logged else None


def final_metrics(state: dict | None) -> dict[str, tuple[dict, dict]]:
    """{"train" | "eval": (first logged entry, last logged entry)} of the entries with reward metrics."""
    out = {}
    history = (state or {}).get("log_history", [])
    for mode, prefix in (("train", ""), ("eval", "eval_")):
        logs = [h for h in history if f"{prefix}rewards/accuracies" in h]
        if logs:
            out[mode] = (logs[0], logs[-1])
    return out


def stage_intro(run: dict | None) -> str:
    """How the card's first sentence says the model was trained: MPO, or GSPO (`mpo rl`, :mod:`mpo.publishing.gspo_card`)."""
    if rl_card.is_rl_run(run):
        return rl_card.INTRO
    return (
        "fine-tuned with **Mixed Preference Optimization** (DPO preference + BCO quality + SFT generation losses) "
        "by the `internvl-mpo` toolkit (`mpo train`, derived from TRL's DPOTrainer)"
    )


def training_section(run: dict | None, run_source: str | None, state: dict | None) -> list[str]:
    if rl_card.is_rl_run(run):  # a GSPO run (`mpo rl`): its own section
        return rl_card.section(run, state)
    lines = ["## Training recipe", ""]
    lines += [
        "Mixed Preference Optimization ([MPO](https://arxiv.org/abs/2411.10442), the recipe of InternVL2.5-MPO): "
        "with r = β(log π(y|x) − log π_ref(y|x)) for the chosen response y_c and the rejected one y_r,",
        "",
        "- preference (DPO): L_p = −log σ(r_c − r_r)",
        "- quality (BCO): L_q = −log σ(r_c − δ) − log σ(−(r_r − δ)), δ the running mean of all rewards seen "
        "(fixed within an optimizer step, saved in every checkpoint)",
        "- generation (SFT): L_g = −log π(y_c|x) / |y_c|",
        "",
    ]
    if run is None:
        lines += [
            "No training record (`mpo_config.json` or `training_args.bin`) was found in the model folder.",
            "",
        ]
    else:
        objective = objective_line(run.get("args", {}))
        if objective:
            lines += [f"Objective: L = {objective}.", ""]
        lines += ["### Hyperparameters", "", f"Read from `{run_source}` of the run.", ""]
        lines += markdown.table(["hyperparameter", "value", "note"], hyperparameter_rows(run)) + [""]
    lines += ["### End of training", ""]
    if state is None:
        return lines + [f"No `{STATE_NAME}` in the model folder.", ""]
    steps, epoch = state.get("global_step"), state.get("epoch")
    if steps is not None:
        lines.append(f"Trained for {steps} optimizer steps ({_num(epoch)} epoch{'' if epoch == 1 else 's'}).")
    delta = reward_shift(state)
    if delta is not None:
        count = f", the running mean over {delta['count']} rewards" if delta.get("count") is not None else ""
        lines.append(f"Final reward shift **δ = {delta['value']:.4f}** ({delta['source']}{count}).")
    lines.append("")
    metrics = final_metrics(state)
    for mode, (first, last) in metrics.items():
        prefix = "eval_" if mode == "eval" else ""
        acc, margin = last.get(f"{prefix}rewards/accuracies"), last.get(f"{prefix}rewards/margins")
        summary = f"Final {mode} reward accuracy **{_num(acc)}**" + (
            f", margin **{_num(margin)}**" if margin is not None else ""
        )
        lines += [f"{summary} (step {last.get('step')}).", ""]
        shown = [m for m in FINAL_METRICS if prefix + m in last]
        if first is last:
            lines += markdown.table(
                [f"{mode} metric", f"step {last.get('step')}"],
                [[f"`{m}`", _num(last[prefix + m])] for m in shown],
            )
        else:
            rows = [[f"`{m}`", _num(first.get(prefix + m, "–")), _num(last[prefix + m])] for m in shown]
            lines += markdown.table(
                [
                    f"{mode} metric",
                    f"first logged (step {first.get('step')})",
                    f"last logged (step {last.get('step')})",
                ],
                rows,
            )
        lines.append("")
    if not metrics:
        lines += ["No reward metrics in the training log.", ""]
    return lines


def find_pairs_report(model_dir: Path, run: dict | None) -> Path | None:
    """report.json of ``mpo build-pairs``: next to the training meta.json, else ``../pairs/report.json``."""
    candidates = []
    meta = ((run or {}).get("data") or {}).get("meta_path")
    if meta:
        candidates.append(Path(meta).parent / "report.json")
    candidates.append(model_dir.resolve().parent / "pairs" / "report.json")
    return next((p for p in candidates if p.is_file()), None)


def load_pairs_report(path: str | Path) -> tuple[Path, dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise UserError(
            f"{path}: no pair-builder report (pass report.json written by `mpo build-pairs`, or its folder)"
        )
    report = read_json(path)
    if "pairs" not in report or "questions" not in report:
        raise UserError(f"{path}: not an `mpo build-pairs` report (no 'pairs' / 'questions')")
    return path, report


def data_section(path: Path, report: dict) -> list[str]:
    q, p = report["questions"], report["pairs"]
    lines = [
        "## Preference data",
        "",
        f"Built from the model itself with the **{report.get('pipeline', '?')}** pipeline of `mpo build-pairs` "
        f"(`{path.name}`): {q.get('in')} questions in, **{p.get('kept')} pairs kept** of {p.get('candidates')} "
        "candidates.",
        "",
    ]
    rows = [[s, n] for s, n in (q.get("by_status") or {}).items()]
    if rows:
        lines += markdown.table(["questions", "count"], rows) + [""]
    subsets = report.get("subsets") or {}
    if subsets:
        reasons = sorted({r for e in subsets.values() for r in (e.get("dropped") or {})})
        rows = [
            [name, e.get("candidates"), e.get("kept"), *[(e.get("dropped") or {}).get(r, 0) for r in reasons]]
            for name, e in subsets.items()
        ]
        rows.append(
            [
                "**total**",
                p.get("candidates"),
                p.get("kept"),
                *[(p.get("dropped") or {}).get(r, 0) for r in reasons],
            ]
        )
        lines += markdown.table(
            ["subset", "candidates", "kept", *[f"dropped: {r}" for r in reasons]], rows
        ) + [""]
    if report.get("responses"):
        lines += [
            "Sampled responses: " + ", ".join(f"{n} {v}" for v, n in report["responses"].items()) + ".",
            "",
        ]
    settings = {
        k: v for k, v in (report.get("settings") or {}).items() if isinstance(v, (str, int, float, bool))
    }
    if settings:
        lines += ["Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()) + ".", ""]
    return lines


def usage_section(repo_id: str, adapter_base: str | None) -> list[str]:
    if adapter_base is None:
        load = [
            'model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=torch.bfloat16, device_map="auto")'
        ]
        imports = ["import torch", "from transformers import AutoModelForImageTextToText, AutoProcessor"]
    else:
        load = [
            f'model = AutoModelForImageTextToText.from_pretrained("{adapter_base}", dtype=torch.bfloat16, device_map="auto")',
            "model = PeftModel.from_pretrained(model, model_id)",
        ]
        imports = [
            "import torch",
            "from peft import PeftModel",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
        ]
    code = [
        *imports,
        "",
        f'model_id = "{repo_id}"',
        "processor = AutoProcessor.from_pretrained(model_id)",
        *load,
        "",
        "messages = [{",
        '    "role": "user",',
        '    "content": [',
        '        {"type": "image", "url": "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/bee.jpg"},',
        '        {"type": "text", "text": "Describe this image."},',
        "    ],",
        "}]",
        "inputs = processor.apply_chat_template(",
        '    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"',
        ").to(model.device, dtype=torch.bfloat16)",
        "output = model.generate(**inputs, max_new_tokens=512, do_sample=False)",
        'print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
    ]
    return [
        "## Usage",
        "",
        "Native transformers InternVL (`InternVLForConditionalGeneration`), the chat template saved with it:",
        "",
        "```python",
        *code,
        "```",
        "",
    ]


def _versions() -> str:
    found = []
    for pkg in ("transformers", "trl", "torch", "huggingface_hub"):
        try:
            found.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


# -------------------------------------------------------------------------------------------- card


def build_card(
    model_dir: str | Path,
    repo_id: str,
    *,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str = DEFAULT_LICENSE,
    pairs_report: str | Path | None = None,
    sections: list[str] | None = None,
    discover: bool = True,
    state: dict | None = None,
):
    """The model card of a run folder (a ``huggingface_hub.ModelCard``), not written yet; ``sections``
    (markdown lines, e.g. `mpo push`'s evaluation) go before the usage section; ``state`` (a
    ``TrainerState`` as a dict) stands in for the folder's ``trainer_state.json``, which a trainer
    writes after the model."""
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = check_model_dir(model_dir)
    run, run_source = read_run_config(model_dir)
    if state is None and (model_dir / STATE_NAME).is_file():
        state = read_json(model_dir / STATE_NAME)
    adapter = (
        read_json(model_dir / "adapter_config.json")
        if (model_dir / "adapter_config.json").is_file()
        else None
    )
    trained_from = ((run or {}).get("model") or {}).get("model_name_or_path") or (run or {}).get("base_model")
    if adapter is not None:
        trained_from = adapter.get("base_model_name_or_path") or trained_from
    if base_model:
        check_repo_id(base_model, "--base-model")
    for dataset in datasets or []:
        check_repo_id(dataset, "--dataset")
    base = base_model or _hub_id(trained_from)
    tags = TAGS + (["lora"] if adapter is not None else [])
    data = ModelCardData(
        base_model=base,
        datasets=list(datasets) if datasets else None,
        library_name="peft" if adapter is not None else "transformers",
        pipeline_tag=PIPELINE_TAG,
        license=license,
        tags=tags,
    )

    name = repo_id.split("/")[-1]
    lines = [f"# {name}", ""]
    origin = f"[`{base}`](https://huggingface.co/{base})" if base else "an InternVL2.5 checkpoint"
    lines += [
        f"{name} is {origin} {stage_intro(run)}."
        + (" The weights are a LoRA adapter." if adapter is not None else ""),
        "",
    ]
    if (
        trained_from and trained_from != base
    ):  # a local folder: its name only (no local paths in a public card)
        lines += [
            f"Trained from the local checkpoint `{Path(trained_from).name}`"
            + ("" if base else " (pass `--base-model ORG/NAME` to `mpo push` to link the Hub model)")
            + ".",
            "",
        ]
    lines += training_section(run, run_source, state)

    report_path = pairs_report or (find_pairs_report(model_dir, run) if discover else None)
    if report_path is not None:
        lines += data_section(*load_pairs_report(report_path))
    elif datasets:
        lines += ["## Preference data", "", "Datasets: " + ", ".join(f"`{d}`" for d in datasets) + ".", ""]

    lines += list(sections or [])

    lines += usage_section(repo_id, adapter.get("base_model_name_or_path") if adapter is not None else None)
    lines += ["## Framework versions", "", _versions() + ".", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_card(model_dir: str | Path, card) -> Path:
    """Write ``model_dir/README.md`` and check it: read back with ``ModelCard.load``, its metadata must
    equal the card's and carry the fields the Hub needs."""
    from huggingface_hub import ModelCard

    path = Path(model_dir) / CARD_NAME
    card.save(path)
    loaded = ModelCard.load(path)
    if loaded.data.to_dict() != card.data.to_dict():
        raise RuntimeError(f"{path}: the metadata read back differs from the one written")
    missing = [
        k for k in ("license", "library_name", "pipeline_tag", "tags") if not loaded.data.to_dict().get(k)
    ]
    if missing:
        raise UserError(f"{path}: model card metadata lacks {', '.join(missing)}")
    return path


def card_name(args) -> str:
    """The card's title: the Hub model id's name, else the output folder's."""
    return (args.hub_model_id or Path(args.output_dir).resolve().name).split("/")[-1]


def write_run_card(folder: str | Path, args, state: TrainerState | None = None) -> Path:
    """The card of a saved run ``folder`` as its ``README.md``; ``state`` stands in for its
    ``trainer_state.json`` (a checkpoint's is written after the callbacks run)."""
    saved = json.loads(json.dumps(dataclasses.asdict(state))) if state is not None else None
    return write_card(folder, build_card(folder, card_name(args), state=saved))


class ModelCardCallback(TrainerCallback):
    """Each checkpoint gets the card of the run so far (objective, hyperparameters, δ, metrics), written by
    the main process once the checkpoint is in place; the command writes the final one into ``output_dir``."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_run_card(
                Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", args, state
            )
