"""Reference log-probs: one pass before training, cached on disk, reused, invalidated, sharded over ranks."""

from __future__ import annotations

import torch
from conftest import MIXED_ROWS, write_mmpr

from mpo import ref_cache
from mpo.data.collator import PreferenceCollator
from mpo.data.mmpr import load_mmpr
from mpo.models.loading import load_model, load_processor
from mpo.trainer import MPOConfig, MPOTrainer


def _trainer(model_dir, meta, cache, tmp_path, **kw):
    processor = load_processor(model_dir)
    data, _ = load_mmpr(meta, processor)
    args = MPOConfig(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        ref_cache_dir=str(cache),
        save_strategy="no",
        gradient_checkpointing=False,
        per_device_train_batch_size=2,
        **kw,
    )
    return MPOTrainer(load_model(model_dir), args=args, train_dataset=data, processing_class=processor)


def reference_by_hand(model_dir, meta) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain two-row batches through an unpatched model, full logits."""
    processor = load_processor(model_dir)
    data, _ = load_mmpr(meta, processor)
    model = load_model(model_dir).eval()
    chosen, rejected = [], []
    for i in range(len(data)):
        b = PreferenceCollator(processor, prefix_sharing=False, vision_once=False)([data[i]])
        with torch.no_grad():
            logits = model(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=b["pixel_values"]
            ).logits
        lp = torch.log_softmax(logits, -1).gather(-1, b["shift_labels"].clamp(min=0)[..., None])[..., 0]
        per_row = (lp * (b["logp_index"] >= 0)).sum(1)
        chosen.append(per_row[0])
        rejected.append(per_row[1])
    return torch.stack(chosen), torch.stack(rejected)


def test_cache_is_exact_reused_and_invalidated(tiny_model, tmp_path, monkeypatch):
    meta = write_mmpr(tmp_path / "data", MIXED_ROWS)
    cache = tmp_path / "cache"
    first = _trainer(tiny_model, meta, cache, tmp_path)
    assert first.ref_model is None  # no reference model held during training
    files = list(cache.glob("train-*.safetensors"))
    assert files == [first.ref_cache_file]
    chosen, rejected = reference_by_hand(tiny_model, meta)
    torch.testing.assert_close(
        torch.tensor(first.train_dataset["ref_chosen_logps"]), chosen, rtol=1e-5, atol=1e-4
    )
    torch.testing.assert_close(
        torch.tensor(first.train_dataset["ref_rejected_logps"]), rejected, rtol=1e-5, atol=1e-4
    )

    # same data, same model: reused, the reference never runs
    def must_not_run(*a, **k):
        raise AssertionError("reference recomputed despite a valid cache")

    monkeypatch.setattr(MPOTrainer, "_compute_reference", must_not_run)
    second = _trainer(tiny_model, meta, cache, tmp_path)
    assert second.ref_cache_file == first.ref_cache_file
    assert second.train_dataset["ref_chosen_logps"] == first.train_dataset["ref_chosen_logps"]
    # the layout is not part of the key: every layout gives the same numbers
    _trainer(tiny_model, meta, cache, tmp_path, prefix_sharing=False, max_packed_tokens=500)
    monkeypatch.undo()

    # a changed dataset (one answer) and a changed model each get their own entry
    rows = [dict(r) for r in MIXED_ROWS]
    rows[0]["chosen"] = "crimson"
    changed_meta = write_mmpr(tmp_path / "data2", rows)
    assert _trainer(tiny_model, changed_meta, cache, tmp_path).ref_cache_file != first.ref_cache_file
    other = tmp_path / "other_model"
    model = load_model(tiny_model)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)
    model.save_pretrained(other)
    load_processor(tiny_model).save_pretrained(other)
    assert _trainer(other, meta, cache, tmp_path).ref_cache_file not in {first.ref_cache_file}
    assert len(list(cache.glob("train-*.safetensors"))) == 3


def test_precompute_scores_the_given_reference_model_not_the_policy(tiny_model, perturbed_policy, tmp_path):
    meta = write_mmpr(tmp_path / "data", MIXED_ROWS)
    processor = load_processor(tiny_model)
    data, _ = load_mmpr(meta, processor)
    args = MPOConfig(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        ref_cache_dir=str(tmp_path / "cache"),
        save_strategy="no",
        gradient_checkpointing=False,
        per_device_train_batch_size=2,
    )
    trainer = MPOTrainer(
        load_model(perturbed_policy),
        ref_model=load_model(tiny_model),
        args=args,
        train_dataset=data,
        processing_class=processor,
    )
    chosen, rejected = reference_by_hand(tiny_model, meta)
    policy_chosen, _ = reference_by_hand(perturbed_policy, meta)
    assert (policy_chosen - chosen).abs().max() > 1e-2  # the test can tell the two models apart
    torch.testing.assert_close(
        torch.tensor(trainer.train_dataset["ref_chosen_logps"]), chosen, rtol=1e-5, atol=1e-4
    )
    torch.testing.assert_close(
        torch.tensor(trainer.train_dataset["ref_rejected_logps"]), rejected, rtol=1e-5, atol=1e-4
    )


def test_reference_batches_group_records_of_similar_length(tiny_model, tmp_path, monkeypatch):
    """Short and long pairs alternate in the data; the reference pass batches the two short ones together
    and the two long ones together, so it pads less than batches in data order would."""
    long = " ".join(["the red circle is left of the blue square"] * 20)
    rows = [{"question": f"q{i}?", "chosen": long if i % 2 else "a", "rejected": "b"} for i in range(4)]
    meta = write_mmpr(tmp_path / "data", rows)
    padded = []
    collate = PreferenceCollator.__call__

    def spy(self, records):
        batch = collate(self, records)
        padded.append(batch["input_ids"].numel())
        return batch

    monkeypatch.setattr(PreferenceCollator, "__call__", spy)
    trainer = _trainer(tiny_model, meta, tmp_path / "cache", tmp_path)
    monkeypatch.undo()
    data, collator = trainer.train_dataset, trainer.data_collator
    grouped = (
        collator([data[0], data[2]])["input_ids"].numel() + collator([data[1], data[3]])["input_ids"].numel()
    )
    in_order = (
        collator([data[0], data[1]])["input_ids"].numel() + collator([data[2], data[3]])["input_ids"].numel()
    )
    assert sum(padded) == grouped < in_order
    chosen, rejected = reference_by_hand(tiny_model, meta)  # and each pair still gets its own numbers
    torch.testing.assert_close(torch.tensor(data["ref_chosen_logps"]), chosen, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.tensor(data["ref_rejected_logps"]), rejected, rtol=1e-5, atol=1e-4)


def test_ranks_share_the_length_order_evenly():
    """Long and short items alternate in the data: rank::world over the data order would give one rank every
    long item. Over the length order each rank gets half of each kind, sorted, and every item once."""
    lengths = [1000 if i % 2 else 10 for i in range(12)]
    by_length = sorted(range(12), key=lengths.__getitem__)
    shards = [ref_cache.shard_indices(by_length, rank, 2) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(12))
    assert [sum(lengths[i] for i in s) for s in shards] == [3 * 10 + 3 * 1000] * 2
    assert all([lengths[i] for i in s] == sorted(lengths[i] for i in s) for s in shards)
    # 7 items on 3 ranks: 3 forwards each, the short rank repeating its last item
    shards = [ref_cache.shard_indices(list(range(7)), rank, 3) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 4], [2, 5, 5]]
