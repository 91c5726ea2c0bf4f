"""Run under `torchrun --nproc_per_node 2`: one SFT step (2 micro-batches per rank, SGD, lr 1), then dump
each rank's samples per micro-batch and the logged loss; rank 0 saves the updated model."""

import json
import sys

from mpo.data.sft_data import SFTDataset, load_sft
from mpo.models.loading import load_model, load_processor
from mpo.sft import SFTStageConfig, SFTStageTrainer

model_dir, meta, out = sys.argv[1:4]
processor = load_processor(model_dir)
records, _ = load_sft(meta, processor)
args = SFTStageConfig(
    output_dir=out,
    stage="2",
    loss_reduction="square",
    per_device_train_batch_size=1,
    gradient_accumulation_steps=2,
    max_steps=1,
    learning_rate=1.0,
    optim="sgd",
    lr_scheduler_type="constant",
    warmup_steps=0,
    weight_decay=0.0,
    max_grad_norm=0.0,
    max_packed_tokens=400,
    max_length=400,
    report_to=[],
    save_strategy="no",
    logging_steps=1,
    seed=0,
)
rows = [[0], [1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]]  # packed rows of unequal sizes, 2 per rank
trainer = SFTStageTrainer(
    load_model(model_dir), args, train_dataset=SFTDataset(records, rows), processing_class=processor
)
seen: list[list[str]] = []
compute = trainer.compute_loss


def spy(model, inputs, *a, **kw):
    seen.append(list(inputs["sources"]))
    return compute(model, inputs, *a, **kw)


trainer.compute_loss = spy
trainer.train()
rank = trainer.accelerator.process_index
loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "world": trainer.accelerator.num_processes, "sources": seen, "loss": loss}, f)
if rank == 0:
    trainer.model.save_pretrained(f"{out}/model")
trainer.accelerator.wait_for_everyone()
trainer.accelerator.end_training()  # tear the process group down before exit (no abort in gloo's threads)
