"""Run under `torchrun --nproc_per_node 2` (gloo): only rank 1 gets SIGUSR1; at the next step end both ranks
must decide to save and stop, on the same step. Each rank dumps what its callback decided."""

import json
import os
import signal
import sys

import torch.distributed as dist
from transformers import TrainerControl, TrainerState

from mpo.cluster import PreemptionCallback

out = sys.argv[1]
dist.init_process_group("gloo")
rank = dist.get_rank()
callback = PreemptionCallback()
decisions = []
for step in (1, 2):
    if step == 2 and rank == 1:
        os.kill(os.getpid(), signal.SIGUSR1)  # as SLURM's --signal would, to this process only
    control = TrainerControl()
    callback.on_step_end(None, TrainerState(global_step=step), control)
    decisions.append([control.should_save, control.should_training_stop])
callback.on_train_end(None, None, None)
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(
        {
            "decisions": decisions,
            "stopped_at": callback.stopped_at,
            "signal": callback.signal_name,
            "received": callback.received,
            "handler_restored": signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL,
        },
        f,
    )
dist.destroy_process_group()
