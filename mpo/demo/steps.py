"""The demo's steps: each one a plain `mpo` command, printed, then run in a process of its own forked from a
server that has imported the commands' modules once (:class:`Pipeline`)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from mpo.demo.scales import TTS_TEMPERATURE, Scale
from mpo.errors import UserError


def step_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment of every step: ``environ`` with OMP_WAIT_POLICY=PASSIVE and OMP_NUM_THREADS=2 unless
    it sets them.

    OpenMP's default lets idle threads spin; on 2 shared cores they then spin against each other and against
    anything else running, which made one step of SFT stage 2 take 1.8-2.2 s instead of 0.28 s on a machine
    with a load of 2-4 (`make` exports PASSIVE; `python -m mpo demo` did not). The wait policy changes how
    threads wait, not what they compute. The thread count does change what they compute (a reduction split
    over more threads rounds differently: 1 and 2 threads give other weights after 60 steps), so the demo
    runs with the 2 threads its README numbers were measured with, on any machine.
    """
    env = {
        **environ,
        "OMP_WAIT_POLICY": environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS", "2"),
    }
    omp_threads(env["OMP_NUM_THREADS"])  # a value the steps cannot use stops the demo before it starts
    return env


# The `mpo` commands the demo runs: their modules are imported once, by the server its steps fork from.
STEP_COMMANDS = ("tiny-model", "synthetic", "sft", "build-pairs", "train", "eval")


def step_process(args: list[str], env: dict[str, str]) -> None:
    """The body of one step's process: ``mpo ARGS`` under ``env``; its exit status is the command's.

    The process is forked from a server that imported every step's modules and ran nothing, so it starts
    clean (no torch thread pool, no random state, no model) and without 5-7 s of imports. The server read
    its OpenMP settings when it imported torch; the thread count is set again here from ``env`` so a step
    computes with the threads it names whatever environment the server started in.
    """
    import torch

    from mpo import cli

    os.environ.update(env)
    torch.set_num_threads(omp_threads(env["OMP_NUM_THREADS"]))
    sys.exit(cli.main(args))


def omp_threads(value: str) -> int:
    """The thread count an ``OMP_NUM_THREADS`` value gives the outermost parallel level (OpenMP takes a
    list, one count per nesting level: "4,2" is 4)."""
    first = value.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise UserError(
            f"OMP_NUM_THREADS={value!r}: expected a positive thread count (or a list, e.g. '4,2')"
        )
    return int(first)


def step_context() -> multiprocessing.context.BaseContext:
    """Where the steps' processes come from: a fork server that preloads the step commands' modules."""
    from mpo.cli import COMMANDS

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(sorted({COMMANDS[name][0] for name in STEP_COMMANDS}))
    return context


TIMINGS = "timings.json"  # every step's seconds, kept across reruns (the cascade reads the demo's)


class Pipeline:
    def __init__(self, out: Path, fresh: bool, record: Path | None = None) -> None:
        """``timings``: the seconds of the steps this run ran; ``record``: a json file that keeps every step's
        seconds across runs (a rerun skips the steps already done), read back as ``recorded``."""
        self.out, self.fresh, self.record = out, fresh, record
        self.timings: dict[str, float] = {}
        self.recorded = json.loads(record.read_text()) if record is not None and record.exists() else {}

    def step(self, name: str, done: Path, *args: str) -> None:
        """Run ``mpo ARGS`` in a process of its own unless ``done`` exists; time it."""
        if done.exists() and not self.fresh:
            print(f"[demo] {name}: already done ({done})", flush=True)
            return
        print(f"\n[demo] {name}\n[demo] $ mpo {shlex.join(args)}", flush=True)
        start = time.perf_counter()
        process = step_context().Process(target=step_process, args=(list(args), step_env(dict(os.environ))))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise UserError(f"step '{name}' failed (exit status {process.exitcode}): mpo {shlex.join(args)}")
        self.timings[name] = time.perf_counter() - start
        if self.record is not None:
            self.recorded[name] = round(self.timings[name], 1)
            self.record.parent.mkdir(parents=True, exist_ok=True)
            self.record.write_text(json.dumps(self.recorded, indent=1))


def train_args(out: Path, scale: Scale, target: Path, *extra: str) -> list[str]:
    """`mpo train` of MPO on the demo's pairs from its SFT checkpoint into ``target`` (``extra``: seed, loss)."""
    args = [
        "train",
        "--config",
        "recipes/tiny/mpo.yaml",
        "--model_name_or_path",
        f"{out}/sft_stage2",
        "--meta_path",
        f"{out}/pairs/meta.json",
        "--output_dir",
        str(target),
        "--ref_cache_dir",
        f"{out}/ref_cache",
        *scale.mpo_args,
        *extra,
    ]
    return args + (["--max_steps", str(scale.mpo_steps)] if scale.mpo_steps else [])


def eval_args(model: str, target: Path, out: Path, items: int | None, cot: bool = True) -> list[str]:
    """`mpo eval` of ``model`` on the first ``items`` held-out synthetic items, into ``target``: chain of
    thought (64 new tokens), or with ``cot=False`` the direct-answer prompt (8 new tokens)."""
    limit = ["--limit", str(items)] if items else []
    data = f"synthetic={out}/synthetic/eval/eval.tsv"
    return [
        "eval",
        "--model",
        model,
        "--data",
        data,
        *(["--cot"] if cot else []),
        "--max-new-tokens",
        "64" if cot else "8",
        "--out",
        str(target),
        "--backend",
        "transformers",
        *limit,
    ]


def sample(p: Pipeline, name: str, model: str, target: Path, out: Path, scale: Scale) -> None:
    """N sampled CoT responses per item of the first ``tts_items`` eval items, majority vote over the first k."""
    sampling = [
        "--num-samples",
        str(scale.tts_samples),
        "--temperature",
        str(TTS_TEMPERATURE),
        "--aggregate",
        "majority",
    ]
    p.step(
        name,
        target / "results.json",
        *eval_args(model, target, out, scale.tts_items or scale.eval_items),
        *sampling,
    )


# Greedy evaluation, prompts per generate call: the same predictions as `mpo eval`'s 16, in 12 s instead of 20
# (500 items on 2 cores). Sampled evaluation keeps 16 prompts (128 rows with 8 samples): 48 is no faster.
EVAL_BATCH_SIZE = 64


def evaluate(p: Pipeline, name: str, model: str, target: Path, out: Path, scale: Scale) -> None:
    batch = ["--batch-size", str(EVAL_BATCH_SIZE)]
    p.step(name, target / "results.json", *eval_args(model, target, out, scale.eval_items), *batch)


def prepare(out: Path, scale: Scale, fresh: bool) -> Pipeline:
    """Steps 1-6: tiny model, synthetic data, the three SFT stages, pairs from the SFT model."""
    if fresh and out.exists():
        shutil.rmtree(out)
    p, o = Pipeline(out, fresh, out / TIMINGS), str(out)
    p.step("1/10 build the tiny InternVL2.5 model", out / "tiny" / "config.json", "tiny-model", f"{o}/tiny")
    p.step(
        "2/10 generate the synthetic visual QA task",
        out / "synthetic" / "eval" / "eval.tsv",
        "synthetic",
        f"{o}/synthetic",
        "--n",
        str(scale.n_sft),
        "--formats",
        ",".join(scale.formats),
        "--max-tiles",
        str(scale.max_tiles),
        "--cot-fraction",
        str(scale.cot_fraction),
        *(["--skills", ",".join(scale.skills)] if scale.skills else []),
    )
    previous = f"{o}/tiny"
    for i, stage in enumerate(("1", "1_5", "2")):
        target = f"{o}/sft_stage{stage}"
        steps = ["--max_steps", str(scale.sft_steps[i])] if scale.sft_steps else []
        p.step(
            f"{3 + i}/10 SFT stage {stage.replace('_', '.')}",
            Path(target) / "config.json",
            "sft",
            "--config",
            f"recipes/tiny/sft_stage{stage}.yaml",
            "--model_name_or_path",
            previous,
            "--meta_path",
            f"{o}/synthetic/sft/meta.json",
            "--output_dir",
            target,
            *steps,
        )
        previous = target
    p.step(
        f"6/10 build {scale.pairs} pairs from the SFT model",
        out / "pairs" / "report.json",
        *pair_build_args(out, scale, previous, out / "pairs"),
    )
    return p


def pair_build_args(out: Path, scale: Scale, model: str | Path, dest: Path) -> list[str]:
    """`mpo build-pairs` with the demo's settings on its QA split: ``model``'s pairs into ``dest``."""
    samples = ["--n", str(scale.samples)] if scale.pairs == "correctness" else []
    return [
        "build-pairs",
        scale.pairs,
        "--model",
        str(model),
        "--data",
        f"{out}/synthetic/qa/meta.json",
        "--out",
        str(dest),
        "--limit",
        str(scale.pair_questions),
        *samples,
        "--max-new-tokens",
        "64",
        "--backend",
        "transformers",
        *scale.pair_args,
    ]
