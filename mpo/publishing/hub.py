"""`mpo push`: a model card built from the run, then the folder uploaded to the Hugging Face Hub.

    mpo push --model OUT_DIR --repo-id ORG/NAME [--private] [--dry-run] [--base-model ID]
             [--dataset ID ...] [--pairs-report PATH] [--eval DIR ...] [--license apache-2.0]

The card (``OUT_DIR/README.md``, built with huggingface_hub's ``ModelCard`` / ``ModelCardData``)
reads everything from the run folder: the recipe (``mpo_config.json``, written by the trainer at
every save; ``training_args.bin`` for older runs), the final δ and reward metrics
(``trainer_state.json``), the preference-data report of ``mpo build-pairs`` (``report.json``) and
``mpo eval`` results (``results.json``). Without ``--pairs-report`` / ``--eval`` they are looked for
where ``mpo train`` / ``mpo demo`` put them: ``report.json`` next to the training ``meta.json``,
``../pairs/report.json``, ``eval/*/results.json`` and ``../eval/*/results.json``.

The upload is ``HfApi.create_repo(exist_ok=True)`` + ``HfApi.upload_folder`` (large files go through
huggingface_hub's normal path), leaving out intermediate checkpoints, optimizer / scheduler / RNG
states and ``training_args.bin`` (:data:`DEFAULT_IGNORE`). ``--dry-run`` writes the card and lists
what would be uploaded, and sends nothing. ``mpo train`` and ``mpo rl`` call :func:`push_to_hub_after_training`
at the end when the recipe says ``push_to_hub: true``.
"""

from __future__ import annotations

import math
from pathlib import Path

from eval.reports import OVERALL, comparison_rows
from mpo import markdown
from mpo.errors import UserError
from mpo.publishing.card import (
    DEFAULT_LICENSE,
    build_card,
    check_model_dir,
    check_repo_id,
    read_json,
    write_card,
)

# Left out of the upload; huggingface_hub adds its own (.git/, .cache/huggingface/).
DEFAULT_IGNORE = [
    "checkpoint-*/",  # intermediate checkpoints (each a full model + optimizer state)
    ".staging/",  # a checkpoint being written, or one whose save was cut short (mpo.checkpointing)
    "global_step*/",  # DeepSpeed optimizer shards
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "training_args.bin",  # a pickle; the recipe travels as mpo_config.json
    "runs/",  # TensorBoard event files
    "wandb/",
]

# ------------------------------------------------------------------------------------------- eval


def find_eval_dirs(model_dir: Path) -> list[Path]:
    """``eval/*/results.json`` inside the model folder, else next to it (the `mpo demo` layout)."""
    this = str(model_dir.resolve())
    for root in (model_dir / "eval", model_dir.resolve().parent / "eval"):
        found = sorted(p.parent for p in root.glob("*/results.json"))
        if found:  # this model's column last, after the baselines
            return sorted(found, key=lambda d: str(read_json(d / "results.json").get("model")) == this)
    return []


def load_eval(path: str | Path) -> tuple[str, Path, dict]:
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path}: no results.json (run `mpo eval --model ... --out {path}` first)")
    results = read_json(file)
    if "overall" not in results or "benchmarks" not in results:
        raise UserError(f"{file}: not an `mpo eval` results file (no 'overall' / 'benchmarks')")
    return file.parent.name, file, results


def eval_section(runs: list[tuple[str, Path, dict]], model_dir: Path) -> list[str]:
    """The `mpo eval --compare` rows (overall, benchmarks, categories, answer kinds), one accuracy column (%)
    per evaluated checkpoint."""
    this = str(model_dir.resolve())
    names = [f"{name} (this model)" if str(r.get("model")) == this else name for name, _, r in runs]
    rows = []
    for bench, cat, cells in comparison_rows([r for _, _, r in runs]):
        n = next((c["total"] for c in cells if c is not None), "")
        rows.append(
            [
                "**overall**" if bench == OVERALL else bench,
                cat,
                n,
                *["–" if c is None else f"{100 * c['accuracy']:.1f}" for c in cells],
            ]
        )
    prompts = {("chain of thought" if r.get("cot") else "direct answer") for _, _, r in runs}
    lines = [
        "## Evaluation",
        "",
        f"Accuracy in % (`mpo eval`, {' / '.join(sorted(prompts))} prompt, greedy); n = items.",
        "",
    ]
    lines += markdown.table(["benchmark", "category", "n", *names], rows) + [""]
    lines += [
        "Results files: " + ", ".join(f"`{Path(f).parent.name}/{Path(f).name}`" for _, f, _ in runs) + ".",
        "",
    ]
    return lines


# ------------------------------------------------------------------------------------------ upload


def upload_list(model_dir: str | Path, ignore_patterns: list[str] | None = None) -> list[tuple[str, int]]:
    """(path in repo, bytes) of every file ``upload_folder`` would send, filtered as it filters."""
    from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
    from huggingface_hub.utils import filter_repo_objects

    root = Path(model_dir).resolve()
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
    ignore = list(DEFAULT_IGNORE if ignore_patterns is None else ignore_patterns) + DEFAULT_IGNORE_PATTERNS
    return [(rel, files[rel].stat().st_size) for rel in filter_repo_objects(files, ignore_patterns=ignore)]


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    exp = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024**exp:.1f} {'BKMGT'[exp]}iB"


def push(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    dry_run: bool = False,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str = DEFAULT_LICENSE,
    pairs_report: str | Path | None = None,
    eval_dirs: list[str | Path] | None = None,
    discover: bool = True,
    commit_message: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    ignore_patterns: list[str] | None = None,
) -> dict:
    """Write the card, then (unless ``dry_run``) create the repo and upload the folder.

    Returns ``{"repo_id", "card", "files": [(path, bytes)], "commit_url"}``.
    """
    repo_id = check_repo_id(repo_id)
    model_dir = check_model_dir(model_dir)
    eval_paths = list(eval_dirs or []) or (find_eval_dirs(model_dir) if discover else [])
    card = build_card(
        model_dir,
        repo_id,
        base_model=base_model,
        datasets=datasets,
        license=license,
        pairs_report=pairs_report,
        discover=discover,
        sections=eval_section([load_eval(p) for p in eval_paths], model_dir) if eval_paths else None,
    )
    card_path = write_card(model_dir, card)
    ignore = list(DEFAULT_IGNORE if ignore_patterns is None else ignore_patterns)
    files = upload_list(model_dir, ignore)
    total = sum(size for _, size in files)
    result = {"repo_id": repo_id, "card": card_path, "files": files, "commit_url": None}
    if dry_run:
        print(
            f"mpo push: dry run: card written to {card_path}; would upload {len(files)} files "
            f"({_size(total)}) to {repo_id}{' (private)' if private else ''}:"
        )
        for rel, size in files:
            print(f"  {_size(size):>10}  {rel}")
        return result

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        repo_id = getattr(url, "repo_id", None) or repo_id  # a bare NAME lands in the token's namespace
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(model_dir),
            repo_type="model",
            revision=revision,
            commit_message=commit_message or "Upload MPO model (mpo push)",
            ignore_patterns=list(ignore),
        )
    except OfflineModeIsEnabled:
        raise UserError(
            "HF_HUB_OFFLINE is set: nothing can be uploaded (unset it, or use --dry-run)"
        ) from None
    except LocalTokenNotFoundError:
        raise UserError("no Hugging Face token: run `hf auth login` or set HF_TOKEN") from None
    except HfHubHTTPError as err:
        raise UserError(f"upload to {repo_id} failed: {str(err).splitlines()[0]}") from None
    result["repo_id"] = repo_id
    result["commit_url"] = getattr(commit, "commit_url", None)
    print(
        f"mpo push: uploaded {len(files)} files ({_size(total)}) to https://huggingface.co/{repo_id}"
        + (f" ({result['commit_url']})" if result["commit_url"] else "")
    )
    return result


def push_to_hub_after_training(output_dir: str | Path, args, command: str = "mpo train") -> dict:
    """What ``command`` (`mpo train`, `mpo rl`) runs at the end when the recipe says ``push_to_hub: true`` (main process only):
    the card and upload of :func:`push`, to ``hub_model_id`` (default: the output folder's name in the
    token's namespace), private per ``hub_private_repo``, with ``hub_token`` / ``hub_revision``."""
    return push(
        output_dir,
        args.hub_model_id or Path(output_dir).resolve().name,
        private=getattr(args, "hub_private_repo", None),
        token=getattr(args, "hub_token", None),
        revision=getattr(args, "hub_revision", None),
        commit_message=f"End of training ({command})",
    )


# --------------------------------------------------------------------------------------------- CLI
