"""Run under `torchrun --nproc_per_node 2`: train a few MPO steps, dump each rank's rewards and δ."""

import json
import sys

import torch

from mpo.data.mmpr import load_mmpr
from mpo.models.loading import load_model, load_processor
from mpo.trainer import MPOConfig, MPOTrainer

model_dir, policy_dir, meta, out = sys.argv[1:5]
processor = load_processor(model_dir)
data, _ = load_mmpr(meta, processor)
args = MPOConfig(
    output_dir=out,
    per_device_train_batch_size=1,
    gradient_accumulation_steps=2,
    max_steps=3,
    learning_rate=1e-3,
    report_to=[],
    save_strategy="no",
    gradient_checkpointing=False,
    seed=0,
)
trainer = MPOTrainer(
    load_model(policy_dir),
    ref_model=load_model(model_dir),
    args=args,
    train_dataset=data,
    processing_class=processor,
)
rewards: list[float] = []
deltas: list[float] = []
accumulate = trainer.reward_shift.accumulate


def record(*r):
    rewards.extend(torch.cat(r).tolist())
    accumulate(*r)


trainer.reward_shift.accumulate = record
step = trainer.reward_shift.step


def record_step(total, count):
    step(total, count)
    deltas.append(trainer.reward_shift.value)


trainer.reward_shift.step = record_step
trainer.train()
rank = trainer.accelerator.process_index

# Then one more step by hand with micro-batches of unequal size (1 and 3 pairs, on both ranks, so that
# the metric gathers line up): δ must weight every reward alike, not every micro-batch or rank.
trained = len(rewards)
before = trainer.reward_shift.state_dict()
trainer.model.train()
with torch.no_grad():
    for start, n in ((4 * rank, 1), (4 * rank + 1, 3)):
        trainer.compute_loss(
            trainer.model,
            trainer._prepare_inputs(trainer.data_collator([data[i] for i in range(start, start + n)])),
        )
trainer.update_reward_shift()
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(
        {
            "rank": rank,
            "world": trainer.accelerator.num_processes,
            "rewards": rewards[:trained],
            "deltas": deltas[:-1],
            "before": before,
            "step_rewards": rewards[trained:],
            "after": trainer.reward_shift.state_dict(),
        },
        f,
    )
trainer.accelerator.wait_for_everyone()
trainer.accelerator.end_training()  # tear the process group down before exit (no abort in gloo's threads)
