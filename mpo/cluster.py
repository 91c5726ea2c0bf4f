"""Cluster faults: preemption signals, resume on another number of ranks (README, "Reliability").

- **Preemption.** SLURM and Kubernetes send SIGTERM before they kill a job (SLURM also SIGUSR1 ahead of
  time with ``--signal``). :class:`PreemptionCallback` only notes the signal; at the end of the optimizer
  step under way every rank learns of it (an all-reduce of the signal number), all of them save one
  checkpoint together and training stops. ``mpo train`` / ``mpo sft`` then write ``preempted.json``
  into ``output_dir`` and exit with :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL`` of sysexits.h:
  "try again"), on every rank. A launcher (``accelerate launch``, ``torchrun``) exits 1 whatever its
  workers' codes, so job scripts test the file (``recipes/slurm/``).
- **Another number of ranks.** Every checkpoint records its run's shape (ranks, per-device batch,
  accumulation; :class:`RunShape`, in ``trainer_state.json``). :func:`plan_resume` keeps the global
  batch on the new rank count by changing the accumulation (or the per-device batch), so the schedule,
  the data order and δ continue as before, and says so in one line; where the global batch cannot be
  kept it says what it does instead. ZeRO shards of another rank count are converted once to
  DeepSpeed's universal checkpoint (``deepspeed.checkpoint.ds_to_universal``) and loaded with
  ``"checkpoint": {"load_universal": true}``.
- **A lost rank.** A rank that waits for a dead or hung one gives up after ``ddp_timeout`` (the
  Trainer's collective timeout, 1800 s by default). :class:`LostRankProbe` then names the ranks that do
  not answer a monitored barrier of a separate gloo group, in one line; a rank that died is also named
  by the launcher's summary (torch's elastic agent stops the others on its node at once).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.state import PartialState
from accelerate.utils import parse_flag_from_env
from transformers import TrainerCallback

from mpo.atomic import atomic_write
from mpo.errors import UserError

logger = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: the job was stopped to be run again; a checkpoint holds its state
PREEMPTED_FILE = "preempted.json"  # in output_dir: what a job script tests (a launcher exits 1 whatever)
RUN_SHAPE_KEY = "MPORunShape"  # the run's shape in trainer_state.json's stateful_callbacks
UNIVERSAL_LATEST = "latest_universal"  # ds_to_universal writes it last: a conversion is complete with it


class PreemptionCallback(TrainerCallback):
    """On SIGTERM or SIGUSR1: finish the optimizer step, save a checkpoint on all ranks, stop.

    The handler only records the signal. At every step end the ranks agree on it (one all-reduce of an
    integer: each rank may have been signalled or not, and all must save the same step). A signal
    that arrives before training (loading, the reference pass) is acted on after the first step; after
    training the previous handlers are back.
    """

    def __init__(self, device: torch.device | str = "cpu", signals: tuple = PREEMPT_SIGNALS) -> None:
        self.device = device  # of the all-reduce (the accelerator's: NCCL needs a GPU tensor)
        self.received = 0  # the signal number, 0 while none arrived
        self.stopped_at: int | None = None  # the step whose checkpoint was saved on the signal
        self.signal_name = ""
        self._previous = {sig: signal.signal(sig, self._note) for sig in signals}

    def _note(self, signum: int, frame) -> None:
        self.received = signum

    def _agreed(self) -> int:
        """The highest signal number any rank received (0: none)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        agreed = self._agreed()
        if agreed:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
            self.signal_name = signal.Signals(agreed).name

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self) -> None:
        """The signal handlers from before (idempotent)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> PreemptionCallback:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


# what a failed collective says (gloo 0.5 / NCCL in torch 2.14), as against any other error of a step
COLLECTIVE_FAILURE = re.compile(r"Connection (reset|closed) by peer|Timed out waiting|NCCL|DistBackendError")


class LostRankProbe:
    """Names the ranks lost when a collective of training fails (one line on each rank still alive).

    Made at the start of a multi-rank run: a second process group on gloo (on a GPU cluster too), used
    only by :meth:`report`, where the ranks still alive meet in torch's ``monitored_barrier``, which
    says which ranks do not come within ``timeout_s``.
    """

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.group = None
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        try:
            self.group = dist.new_group(backend="gloo")
        except RuntimeError as err:  # e.g. no network interface gloo can use (GLOO_SOCKET_IFNAME)
            logger.warning(
                f"no lost-rank probe (a gloo group could not be made: {err}); the launcher still names a dead rank"
            )

    def report(self, err: BaseException, command: str) -> str | None:
        """The line printed for ``err`` when it is a failed collective (None for any other error)."""
        if self.group is None or not COLLECTIVE_FAILURE.search(f"{type(err).__name__} {err}"):
            return None
        cause = str(err).strip().splitlines()[0][:200]
        try:
            dist.monitored_barrier(self.group, timeout=timedelta(seconds=self.timeout_s), wait_all_ranks=True)
            lost = "every rank answered the probe: the ranks ran different collectives"
        except RuntimeError as probe:
            named = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(probe))
            if named:
                lost = f"rank(s) {named.group(1).strip()} did not answer within {self.timeout_s:g} s: lost or hung"
            elif dist.get_rank() != 0:  # the others meet rank 0 only
                lost = "rank 0 did not answer the probe: lost or hung"
            else:
                lost = f"the probe failed too ({str(probe).strip().splitlines()[0][:120]}): a rank died"
        line = f"{command}: rank {dist.get_rank()}: a collective failed ({cause}); {lost}"
        print(line, file=sys.stderr, flush=True)
        return line


def train_with_faults(trainer, checkpoint: str | None, preemption: PreemptionCallback, command: str) -> bool:
    """``trainer.train(checkpoint)`` that saves and stops on a signal and names a lost rank; True when it
    stopped on a signal (then :func:`finish_preempted`)."""
    preemption.device = trainer.accelerator.device
    trainer.add_callback(preemption)
    if trainer.accelerator.is_main_process:  # this run is no longer the preempted one
        Path(trainer.args.output_dir, PREEMPTED_FILE).unlink(missing_ok=True)
    probe = LostRankProbe(min(float(trainer.args.ddp_timeout), 60.0))
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except RuntimeError as err:
        probe.report(err, command)
        raise
    return preemption.stopped_at is not None


def finish_preempted(trainer, callback: PreemptionCallback, command: str) -> int:
    """After a run stopped on a signal: ``preempted.json`` and one line on the main process; the exit code."""
    checkpoint = Path(trainer.args.output_dir) / f"checkpoint-{callback.stopped_at}"
    if trainer.accelerator.is_main_process:
        record = {
            "signal": callback.signal_name,
            "step": callback.stopped_at,
            "checkpoint": str(checkpoint),
            "exit_code": PREEMPTED_EXIT_CODE,
        }
        atomic_write(Path(trainer.args.output_dir) / PREEMPTED_FILE, json.dumps(record) + "\n")
        print(
            f"{command}: {callback.signal_name}: stopped after step {callback.stopped_at}, saved {checkpoint}; "
            f"exit {PREEMPTED_EXIT_CODE}: resubmit with --resume_from_checkpoint True",
            flush=True,
        )
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return PREEMPTED_EXIT_CODE


@dataclass(frozen=True)
class RunShape:
    """How a run splits its global batch: ranks x per-device batch x accumulation steps."""

    world_size: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.per_device_train_batch_size * self.gradient_accumulation_steps

    @classmethod
    def of(cls, args) -> RunShape:
        return cls(
            int(args.world_size), int(args.per_device_train_batch_size), int(args.gradient_accumulation_steps)
        )

    @classmethod
    def saved_in(cls, checkpoint: Path) -> RunShape | None:
        """The shape recorded in ``checkpoint``'s trainer state (None: saved before it was recorded)."""
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        saved = state.get("stateful_callbacks", {}).get(RUN_SHAPE_KEY)
        return cls(**saved["attributes"]) if saved else None

    def state_entry(self) -> dict:
        return {"args": {}, "attributes": asdict(self)}

    def describe(self) -> str:
        return (
            f"{self.world_size} rank(s) x {self.per_device_train_batch_size} per device x "
            f"{self.gradient_accumulation_steps} accumulation = {self.global_batch}"
        )


def split_global_batch(global_batch: int, world_size: int, per_device_max: int) -> tuple[int, int] | None:
    """(per-device batch, accumulation steps) giving ``global_batch`` on ``world_size`` ranks with the
    fewest accumulation steps and at most ``per_device_max`` per device; None when it cannot be split."""
    if global_batch % world_size:
        return None
    per_rank = global_batch // world_size
    for accumulation in range(1, per_rank + 1):
        if per_rank % accumulation == 0 and per_rank // accumulation <= per_device_max:
            return per_rank // accumulation, accumulation
    return None


def zero_shards(checkpoint: Path) -> tuple[str, int] | None:
    """(tag, ranks) of the DeepSpeed ZeRO shards of ``checkpoint`` (its ``latest`` tag), or None."""
    latest = checkpoint / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    ranks = len(list((checkpoint / tag).glob("*_optim_states.pt")))
    return tag, ranks


@dataclass
class ResumePlan:
    """What :func:`plan_resume` decided: load DeepSpeed's universal checkpoint or not."""

    universal: bool = False

    def apply(self, trainer) -> None:
        """Turn on DeepSpeed's universal loading before the engine is built (in ``train``)."""
        if self.universal:
            config = trainer.accelerator.state.deepspeed_plugin.deepspeed_config
            config.setdefault("checkpoint", {})["load_universal"] = True
            _fix_zero3_universal_load()


def _fix_zero3_universal_load() -> None:
    """Work around two faults of deepspeed 0.19.8's ZeRO-3 universal load
    (``DeepSpeedZeroOptimizer_Stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3``), which made
    the steps after a resume drift from the uninterrupted run (5.7e-5 in the first step's loss, 1e-2 two
    steps later, on the tiny model):

    - every parameter group gets the hyperparameters of group 0: the Trainer's no-decay group (biases,
      norms) gets weight decay. Restored from the saved groups, in order;
    - one ``step`` tensor goes into the state of every group, and AdamW advances it in place once per
      group and step (2 groups: the step count runs twice as fast, and so does the bias correction).
      Each group gets its own copy.
    """
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as Stage3

    load = Stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3
    if getattr(load, "mpo_fixed", False):
        return

    def fixed(self, checkpoint_dir: str) -> None:
        load(self, checkpoint_dir)
        saved = torch.load(Path(checkpoint_dir, "zero", "optimizer_state.pt"), weights_only=False)
        groups = saved[OPTIMIZER_STATE_DICT]["param_groups"]
        if len(groups) == len(self.optimizer.param_groups):
            for group, hyper in zip(self.optimizer.param_groups, groups, strict=True):
                group.update({key: value for key, value in hyper.items() if key != "params"})
        for flat in self.fp32_partitioned_groups_flat:
            state = self.optimizer.state[flat]
            state["step"] = state["step"].clone()

    fixed.mpo_fixed = True
    Stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3 = fixed


def plan_resume(checkpoint: str | None, args) -> ResumePlan:
    """Adapt ``args`` so that ``checkpoint`` resumes on this run's ranks; log each change in one line.

    Raises :class:`UserError` (checkpoint and reason, one line) for a checkpoint that cannot resume here.
    """
    if checkpoint is None:
        return ResumePlan()
    path, now = Path(checkpoint), RunShape.of(args)
    # what makes the Trainer's Accelerator build a DeepSpeed plugin (accelerate 1.15)
    deepspeed = bool(getattr(args, "deepspeed", None)) or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    shards = zero_shards(path)
    if shards and not deepspeed:
        raise UserError(
            f"resume_from_checkpoint: {checkpoint}: DeepSpeed ZeRO shards ({shards[1]} ranks) hold its optimizer "
            "state; resume it under DeepSpeed (accelerate launch --use_deepspeed ...)"
        )
    if deepspeed and not shards:
        raise UserError(
            f"resume_from_checkpoint: {checkpoint}: saved without DeepSpeed (no 'latest' tag, no ZeRO shards); "
            "resume it without DeepSpeed"
        )
    saved = RunShape.saved_in(path)  # None: saved before shapes were recorded (kept as the recipe says)
    # the saved global batch, also when the recipe's accumulation alone differs from the checkpoint's (a
    # job resumed on other ranks before, resubmitted with the same command line)
    if saved is not None and saved.global_batch != now.global_batch:
        _keep_global_batch(checkpoint, saved, now, args)
    if shards is None or shards[1] == now.world_size:
        return ResumePlan()
    convert_to_universal(path, shards[0], shards[1])
    return ResumePlan(universal=True)


def _keep_global_batch(checkpoint: str, saved: RunShape, now: RunShape, args) -> None:
    """Set the per-device batch and accumulation that keep the saved global batch, or say why not."""
    split = split_global_batch(saved.global_batch, now.world_size, now.per_device_train_batch_size)
    where = (
        f"resume_from_checkpoint: {checkpoint} was saved by {saved.describe()}; this run is {now.describe()}"
    )
    if split is None:
        seen = "skipped" if now.global_batch > saved.global_batch else "seen twice"
        _main_warning(
            f"{where}: the global batch {saved.global_batch} cannot be split over {now.world_size} ranks; "
            f"continuing with {now.describe()}: the schedule goes on by step, and "
            f"{abs(now.global_batch - saved.global_batch)} samples per completed step of this epoch are {seen}"
        )
        return
    args.per_device_train_batch_size, args.gradient_accumulation_steps = split
    _main_warning(
        f"{where}: {split[0]} per device x {split[1]} accumulation keeps the global batch {saved.global_batch}"
    )


def convert_to_universal(checkpoint: Path, tag: str, ranks: int) -> Path:
    """``checkpoint/<tag>_universal`` by DeepSpeed's ``ds_to_universal`` (main process; the others wait).

    Converted once: ``latest_universal`` (written last by the converter) marks a finished conversion,
    and a later resume from the same checkpoint reuses it, as it does a conversion made ahead of time
    with DeepSpeed's own command into the same folder (``python -m deepspeed.checkpoint.ds_to_universal
    --input_folder CKPT/<tag> --output_folder CKPT/<tag>_universal --inject_missing_state``, with more
    workers: here one process converts, while the other ranks wait up to ``ddp_timeout``).
    """
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out = checkpoint / f"{tag}_universal"
    state = PartialState()
    latest = checkpoint / UNIVERSAL_LATEST
    done = latest.is_file() and latest.read_text().strip() == out.name
    if state.is_main_process and not done:
        shutil.rmtree(out, ignore_errors=True)  # a conversion cut short
        start = time.perf_counter()
        options = dict(num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True)
        ds_to_universal(
            argparse.Namespace(
                input_folder=str(checkpoint / tag),
                output_folder=str(out),
                inject_missing_state=True,  # HF models carry no Megatron-style universal info (ZeRO-1/2)
                **options,
            )
        )
        _main_warning(
            f"resume_from_checkpoint: {checkpoint} ({tag}, ZeRO shards of {ranks} ranks) converted to DeepSpeed's "
            f"universal checkpoint {out} in {time.perf_counter() - start:.1f} s"
        )
    elif done:
        _main_warning(f"resume_from_checkpoint: {checkpoint}: loading its universal checkpoint {out}")
    state.wait_for_everyone()  # within ddp_timeout: the conversion of a large model must fit in it
    return out


def _main_warning(line: str) -> None:
    if PartialState().is_main_process:
        logger.warning(line)
