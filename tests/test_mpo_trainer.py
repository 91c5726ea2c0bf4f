"""MPOTrainer against an independent computation: every loss term, δ, gradients, metrics, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import MIXED_ROWS, tiny_mpo
from trl.trainer.utils import add_fused_lm_head

from mpo.data.mmpr import load_mmpr
from mpo.losses import RewardShift
from mpo.models.loading import load_model, load_processor
from mpo.publishing.card import ModelCardCallback
from mpo.trainer import MPOConfig, MPOTrainer


def _config(tmp_path, **kw) -> MPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        report_to=[],
        logging_steps=1,
        gradient_checkpointing=False,
        save_strategy="no",
        max_length=4096,
        seed=0,
    )
    return MPOConfig(**{**base, **kw})


SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


def oracle_batch(processor, meta, indices) -> dict:
    """The plain layout built by hand from the raw rows of ``MIXED_ROWS`` (not the project's template or
    collator): the InternVL2.5 chat prompt, each ``<image>`` as ``<img>`` + ``<IMG_CONTEXT>`` x tiles x
    tokens per tile + ``</img>`` (12 tiles shared by a sample's images; one per video frame, shown as
    ``Frame{i}: <image>``), the response and ``<|im_end|>`` tokenised apart; rows [chosen..., rejected...]."""
    from PIL import Image

    tokenizer, root = processor.tokenizer, meta.parent / "img"
    budget = json.loads(meta.read_text())["toy"]["max_dynamic_patch"]
    rows, pixels = [], []
    for side in ("chosen", "rejected"):
        for i in indices:
            raw = MIXED_ROWS[i]
            files = raw.get("video") or raw.get("image") or []
            files = [files] if isinstance(files, str) else files
            question = raw["question"]
            if "video" in raw:
                question = "".join(f"Frame{k + 1}: <image>\n" for k in range(len(files))) + question.replace(
                    "<video>\n", ""
                )
            elif files and "<image>" not in question:
                question = "<image>\n" + question
            per_image = 1 if "video" in raw else max(1, budget // max(1, len(files)))
            for f in files:
                with Image.open(root / f) as img:
                    out = processor.image_processor(
                        images=[img.convert("RGB")],
                        crop_to_patches=per_image > 1,
                        max_patches=per_image,
                        return_tensors="pt",
                    )
                pixels.append(out["pixel_values"])
                tokens = (
                    "<img>"
                    + "<IMG_CONTEXT>" * (int(out["num_patches"][0]) * processor.image_seq_length)
                    + "</img>"
                )
                question = question.replace("<image>", tokens, 1)
            prompt = (
                f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
                "<|im_start|>assistant\n"
            )
            head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer = tokenizer(raw[side] + "<|im_end|>", add_special_tokens=False)["input_ids"]
            rows.append((head + answer, [0] * len(head) + [1] * len(answer)))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id

    def padded(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    return {
        "input_ids": torch.tensor([padded(ids, pad) for ids, _ in rows]),
        "attention_mask": torch.tensor([padded([1] * len(ids), 0) for ids, _ in rows]),
        "response": torch.tensor([padded(mask, 0) for _, mask in rows]),
        "pixel_values": torch.cat(pixels) if pixels else None,
    }


def independent_logps(model, batch) -> torch.Tensor:
    """Σ log p(response tokens) per row of an oracle batch, from full logits (no fused head, no chunks)."""
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
    ).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logp = logp.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logp * batch["response"][:, 1:]).sum(dim=1)


def independent_mpo(pol, ref, lengths, beta, delta, weights, normalization):
    """docs/design.md#objective written out with log(sigmoid(.)) instead of logsigmoid."""
    b = pol.shape[0] // 2
    r_c = beta * (pol[:b] - ref[:b])
    r_r = beta * (pol[b:] - ref[b:])
    dpo = -torch.log(torch.sigmoid(r_c - r_r)).mean()
    bco = (-torch.log(torch.sigmoid(r_c - delta)) - torch.log(torch.sigmoid(delta - r_r))).mean()
    if normalization == "sequence":
        sft = torch.stack([-pol[i] / lengths[i] for i in range(b)]).mean()
    else:
        sft = -pol[:b].sum() / lengths[:b].sum()
    return weights[0] * dpo + weights[1] * bco + weights[2] * sft, dpo, bco, sft, r_c, r_r


LAYOUTS = {  # the exact speed switches of MPOConfig, each checked against the plain computation
    "plain": dict(prefix_sharing=False, vision_once=False),
    "vision_once": dict(prefix_sharing=False, vision_once=True),
    "prefix_sharing": dict(prefix_sharing=True),
    "packed": dict(prefix_sharing=True, max_packed_tokens=400),
    "packed_plain": dict(prefix_sharing=False, vision_once=True, max_packed_tokens=400),
}


def layout_name(switches: dict) -> str:
    return (
        "shared"
        if switches.get("prefix_sharing")
        else "packed"
        if "max_packed_tokens" in switches
        else "plain"
    )


# Every layout under every kernel that trains on the CPU; the varlen stand-in (conftest, attention
# written out by hand) runs the padding-free flattened rows that flash_attention_2 gets on a GPU, and
# sdpa_varlen is mpo's own kernel over the same rows.
CASES = [("sequence", "plain", "sdpa"), ("token", "plain", "sdpa")] + [
    ("sequence", name, kernel)
    for kernel in ("sdpa", "eager", "varlen", "sdpa_varlen")
    for name in LAYOUTS
    if (kernel, name) != ("sdpa", "plain")
]


@pytest.mark.parametrize("normalization, layout, kernel", CASES)
def test_loss_terms_and_gradients_match_independent(
    tiny_model, perturbed_policy, mixed_meta, tmp_path, normalization, layout, kernel, request
):
    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    args = _config(
        tmp_path, sft_normalization=normalization, precompute_ref_log_probs=False, **LAYOUTS[layout]
    )
    kernel = request.getfixturevalue("varlen_kernel") if kernel == "varlen" else kernel
    load = dict(attn_implementation=kernel, layout=layout_name(LAYOUTS[layout]))
    trainer = MPOTrainer(
        load_model(perturbed_policy, **load),
        ref_model=load_model(tiny_model, **load),
        args=args,
        train_dataset=data,
        processing_class=processor,
    )
    trainer.reward_shift.load_state_dict({"value": 0.37, "total": 3.7, "count": 10})
    records = [data[i] for i in range(4)]  # image, multi-image, text, video
    batch = oracle_batch(processor, mixed_meta, range(4))
    trainer.model.train()
    fast_batch = trainer.data_collator(records)
    if "max_packed_tokens" in LAYOUTS[layout]:
        assert fast_batch["input_ids"].shape[0] < len(records)  # several pairs share a row
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(fast_batch))
    loss.backward()

    policy, reference = load_model(perturbed_policy), load_model(tiny_model)
    pol = independent_logps(policy, batch)
    with torch.no_grad():
        ref = independent_logps(reference, batch)
    lengths = batch["response"].sum(dim=1).float()
    total, dpo, bco, sft, r_c, r_r = independent_mpo(
        pol, ref, lengths, 0.1, 0.37, (0.8, 0.2, 1.0), normalization
    )
    total.backward()

    assert loss.item() == pytest.approx(total.item(), rel=1e-5)
    m = trainer._metrics["train"]
    assert m["loss/dpo"][-1] == pytest.approx(dpo.item(), rel=1e-5)
    assert m["loss/bco"][-1] == pytest.approx(bco.item(), rel=1e-5)
    assert m["loss/sft"][-1] == pytest.approx(sft.item(), rel=1e-5)
    assert m["bco/delta"][-1] == 0.37
    assert m["rewards/chosen"][-1] == pytest.approx(r_c.mean().item(), abs=1e-6)
    assert m["rewards/rejected"][-1] == pytest.approx(r_r.mean().item(), abs=1e-6)
    assert m["rewards/margins"][-1] == pytest.approx((r_c - r_r).mean().item(), abs=1e-6)
    assert m["rewards/accuracies"][-1] == pytest.approx((r_c > r_r).float().mean().item())
    assert m["logps/chosen"][-1] == pytest.approx(pol[:4].mean().item(), rel=1e-5)
    assert m["logps/rejected"][-1] == pytest.approx(pol[4:].mean().item(), rel=1e-5)
    assert abs(r_c).max() > 1e-3  # the check is not vacuous: policy and reference differ
    expected = dict(policy.named_parameters())
    for name, p in trainer.model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, expected[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_flex_attention_log_probs_match_independent_in_every_layout(tiny_model, mixed_meta, tmp_path):
    """flex_attention has no backward on the CPU (torch 2.14): its BlockMask path is checked for values.
    Its rows are padded to flex_length buckets, so the layouts' several row lengths compile at most once
    per bucket (and, with the static shapes here, per row count), and every compilation is counted."""
    from mpo.attention import compilations, flex_length

    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    records = [data[i] for i in range(4)]  # image, multi-image, text, video
    with torch.no_grad():
        expected = independent_logps(load_model(tiny_model), oracle_batch(processor, mixed_meta, range(4)))
    flex = load_model(tiny_model, attn_implementation="flex_attention", layout="shared", training=False)
    add_fused_lm_head(flex, outputs=("log_probs",))
    before, lengths = compilations(), set()
    for name, switches in LAYOUTS.items():
        # the trainer refuses to train a flex model on the CPU; its scoring routine runs one
        trainer = MPOTrainer(
            load_model(tiny_model),
            args=_config(tmp_path, precompute_ref_log_probs=False, **switches),
            train_dataset=data,
            processing_class=processor,
        )
        # static shapes: torch 2.14's CPU inductor fails to compile flex attention for dynamic ones
        batch = trainer.data_collator(records)
        lengths.add(tuple(batch["input_ids"].shape))
        with torch.no_grad(), torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            logps, _ = trainer.sequence_logps(flex, batch)
        torch.testing.assert_close(logps[0::2], expected[:4], rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(logps[1::2], expected[4:], rtol=1e-5, atol=1e-5, msg=name)
    assert len({flex_length(n) for _, n in lengths}) < len({n for _, n in lengths})  # some share a bucket
    assert 0 < compilations() - before <= len({(rows, flex_length(n)) for rows, n in lengths})


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kernel", ["sdpa", "eager", "varlen", "sdpa_varlen"])
def test_text_only_batch_scores_as_if_the_blank_tile_were_not_there(
    tiny_model, tmp_path, layout, kernel, request
):
    """A batch without images runs the vision tower on a blank tile (ZeRO-3 needs every rank to): its
    tokens must change nothing. Independent: the language model alone on [prompt | response] tokens."""
    from conftest import write_mmpr

    rows = [MIXED_ROWS[2], {"question": "Say hi.", "chosen": "Hi there.", "rejected": "No."}]
    processor = load_processor(tiny_model)
    data, _ = load_mmpr(write_mmpr(tmp_path / "text", rows), processor)
    records = [data[0], data[1]]
    switches = LAYOUTS[layout]
    kernel = request.getfixturevalue("varlen_kernel") if kernel == "varlen" else kernel
    model = load_model(tiny_model, attn_implementation=kernel, layout=layout_name(switches))
    trainer = MPOTrainer(
        model,
        args=_config(tmp_path, precompute_ref_log_probs=False, **switches),
        train_dataset=data,
        processing_class=processor,
    )
    batch = trainer.data_collator(records)
    assert batch["pixel_values"].shape[0] == 1  # the blank tile is there
    with torch.no_grad():
        logps, _ = trainer.sequence_logps(trainer.model, batch)
        base = load_model(tiny_model).eval()
        expected = []
        for record in records:
            prompt, chosen, rejected, _ = trainer.data_collator.encode(record)
            for response in (chosen, rejected):
                ids = torch.tensor([prompt + response])
                hidden = base.model.language_model(input_ids=ids).last_hidden_state
                logp = torch.log_softmax(base.lm_head(hidden)[0, len(prompt) - 1 : -1], dim=-1)
                expected.append(logp.gather(-1, torch.tensor(response)[:, None]).sum())
    torch.testing.assert_close(logps, torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_evaluation_does_not_feed_the_reward_shift(tiny_model, perturbed_policy, mixed_meta, tmp_path):
    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    args = _config(tmp_path, max_steps=1, per_device_eval_batch_size=2, precompute_ref_log_probs=False)
    trainer = MPOTrainer(
        load_model(perturbed_policy),
        ref_model=load_model(tiny_model),
        args=args,
        train_dataset=data,
        eval_dataset=data,
        processing_class=processor,
    )
    trainer.reward_shift.load_state_dict({"value": 0.25, "total": 2.5, "count": 10})
    metrics = trainer.evaluate()
    assert "eval_loss/bco" in metrics and metrics["eval_bco/delta"] == 0.25  # eval uses δ ...
    assert trainer.reward_shift.pending() == (0.0, 0)  # ... but feeds it nothing
    trainer.update_reward_shift()
    assert trainer.reward_shift.state_dict() == {"value": 0.25, "total": 2.5, "count": 10}


def test_a_new_term_is_one_entry_of_the_table(tiny_model, perturbed_policy, mixed_meta, tmp_path):
    """The SLiC hinge term, added to mpo.losses.TERMS alone, trains through loss_type and is logged and
    named on the model card; here against max(0, 1 − (r_c − r_r)) written out."""
    from mpo.publishing.card import objective_line

    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    args = _config(
        tmp_path, loss_type=["hinge", "sft"], loss_weights=[0.5, 1.0], precompute_ref_log_probs=False
    )
    trainer = MPOTrainer(
        load_model(perturbed_policy),
        ref_model=load_model(tiny_model),
        args=args,
        train_dataset=data,
        processing_class=processor,
    )
    records = [data[i] for i in range(4)]
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(trainer.data_collator(records)))
    batch = oracle_batch(processor, mixed_meta, range(4))
    with torch.no_grad():
        pol = independent_logps(load_model(perturbed_policy), batch)
        ref = independent_logps(load_model(tiny_model), batch)
    lengths = batch["response"].sum(dim=1).float()
    r = 0.1 * (pol - ref)
    hinge = torch.clamp(1 - (r[:4] - r[4:]), min=0).mean()
    sft = torch.stack([-pol[i] / lengths[i] for i in range(4)]).mean()
    assert loss.item() == pytest.approx((0.5 * hinge + sft).item(), rel=1e-5)
    assert trainer._metrics["train"]["loss/hinge"][-1] == pytest.approx(hinge.item(), rel=1e-5)
    assert "0.5 × preference (SLiC hinge)" in objective_line(args.to_dict())


def test_delta_fixed_within_step_and_running_mean_across_steps(
    tiny_model, perturbed_policy, mixed_meta, tmp_path
):
    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    args = _config(
        tmp_path,
        gradient_accumulation_steps=3,
        per_device_train_batch_size=1,
        max_steps=4,
        learning_rate=1e-3,
    )
    trainer = MPOTrainer(
        load_model(perturbed_policy),
        ref_model=load_model(tiny_model),
        args=args,
        train_dataset=data,
        processing_class=processor,
    )
    seen: list[tuple[int, float, torch.Tensor]] = []  # (global step, delta used, rewards of the micro-batch)
    accumulate = trainer.reward_shift.accumulate

    def record(*rewards):
        seen.append((trainer.state.global_step, trainer.reward_shift.value, torch.cat(rewards).clone()))
        accumulate(*rewards)

    trainer.reward_shift.accumulate = record
    trainer.train()

    assert len(seen) == 4 * 3
    logged = [h for h in trainer.state.log_history if "bco/delta" in h]
    for step in range(4):
        micro = [s for s in seen if s[0] == step]
        assert len(micro) == 3 and len({d for _, d, _ in micro}) == 1  # one δ per optimizer step
        before = torch.cat([r for s, _, r in seen if s < step]) if step else torch.zeros(0)
        expected_delta = before.double().mean().item() if step else 0.0
        assert micro[0][1] == pytest.approx(expected_delta, abs=1e-9)
        assert logged[step]["bco/delta"] == pytest.approx(expected_delta, abs=1e-9)
        # the logged BCO term is the mean over the step's micro-batches, recomputed here from its rewards
        bco = [
            (-torch.log(torch.sigmoid(r[0] - d)) - torch.log(torch.sigmoid(d - r[1]))).item()
            for _, d, r in micro
        ]
        assert logged[step]["loss/bco"] == pytest.approx(sum(bco) / 3, rel=1e-5)
    everything = torch.cat([r for _, _, r in seen]).double()
    assert trainer.reward_shift.value == pytest.approx(everything.mean().item(), abs=1e-9)
    assert trainer.reward_shift.count == everything.numel()


def test_reward_shift_state_round_trip():
    shift = RewardShift()
    shift.accumulate(torch.tensor([1.0, 2.0]), torch.tensor([3.0]))
    assert shift.pending() == (6.0, 3)
    shift.step(*shift.pending())
    restored = RewardShift()
    restored.load_state_dict(json.loads(json.dumps(shift.state_dict())))
    assert restored.value == shift.value == 2.0 and restored.count == 3
    restored.accumulate(torch.tensor([6.0]))
    restored.step(*restored.pending())
    assert restored.value == pytest.approx((1 + 2 + 3 + 6) / 4)


def test_resume_gives_same_delta_step_order_and_losses(tiny_model, perturbed_policy, tmp_path):
    processor = load_processor(tiny_model)
    from conftest import write_mmpr

    meta = write_mmpr(tmp_path / "data", MIXED_ROWS * 2)
    data, _ = load_mmpr(meta, processor)
    common = dict(
        max_steps=6,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=3,
        gradient_accumulation_steps=2,
    )

    def run(out, resume=None, stop_after=None):
        args = _config(tmp_path, output_dir=str(out), **common)
        trainer = MPOTrainer(
            load_model(perturbed_policy),
            ref_model=load_model(tiny_model),
            args=args,
            train_dataset=data,
            processing_class=processor,
            callbacks=[ModelCardCallback()],  # as `mpo train` attaches it
        )
        order: list[str] = []
        collate = trainer.data_collator

        def spy(records):
            order.extend(r["source"] for r in records)
            return collate(records)

        trainer.data_collator = spy
        if stop_after is not None:
            from transformers import TrainerCallback

            class Stop(TrainerCallback):
                def on_step_end(self, args, state, control, **kw):
                    if state.global_step == stop_after:
                        control.should_training_stop = True

            trainer.add_callback(Stop())
        trainer.train(resume_from_checkpoint=resume)
        return trainer, order

    full, full_order = run(tmp_path / "full")
    run(tmp_path / "part", stop_after=3)
    ckpt = tmp_path / "part" / "checkpoint-3"
    saved = json.loads((ckpt / "trainer_state.json").read_text())["stateful_callbacks"]["MPORewardShift"]
    # each checkpoint carries the MPO card with its own δ; TRL's DPO card is not written into output_dir
    card = (ckpt / "README.md").read_text()
    delta = saved["attributes"]["value"]
    assert "Mixed Preference Optimization" in card and f"δ = {delta:.4f}" in card, card
    assert not (tmp_path / "part" / "README.md").exists()
    resumed, resumed_order = run(tmp_path / "part", resume=str(ckpt))

    assert resumed.state.global_step == full.state.global_step == 6
    assert saved["attributes"]["count"] == 3 * 2 * 2 * 2  # 3 steps x 2 micro-batches x 2 pairs x 2 rewards
    assert resumed.reward_shift.state_dict() == pytest.approx(full.reward_shift.state_dict(), rel=1e-5)
    assert resumed_order == full_order[len(full_order) - len(resumed_order) :]  # same data, same order
    full_hist = {h["step"]: h for h in full.state.log_history if "loss" in h}
    res_hist = {h["step"]: h for h in resumed.state.log_history if "loss" in h}
    for step in (4, 5, 6):
        for key in ("loss", "loss/dpo", "loss/bco", "loss/sft", "bco/delta"):
            assert math.isclose(res_hist[step][key], full_hist[step][key], rel_tol=1e-4, abs_tol=1e-6), (
                step,
                key,
            )


def test_metrics_reach_an_offline_wandb_run(tiny_model, mixed_meta, tmp_path, offline_wandb):
    import wandb
    from wandb_records import history_keys, run_file

    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    args = _config(tmp_path, max_steps=2, report_to=["wandb"], run_name="mpo-test")
    MPOTrainer(load_model(tiny_model), args=args, train_dataset=data, processing_class=processor).train()
    wandb.finish()
    keys = history_keys(run_file(tmp_path))
    expected = {
        "loss/dpo",
        "loss/bco",
        "loss/sft",
        "bco/delta",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    }
    assert {f"train/{k}" for k in expected} <= keys


def test_vision_drop_path_drops_whole_tiles_in_training_only(tiny_model):
    from mpo.models.families.internvl2_5 import FAMILY
    from mpo.models.loading import add_vision_drop_path

    model = load_model(tiny_model)
    layers = model.model.vision_tower.encoder.layer
    assert add_vision_drop_path(model, 0.4, FAMILY.parts) == len(layers)
    mlp, p = layers[-1].mlp, 0.4  # the last layer drops with the full rate
    x = torch.randn(200, 65, model.config.vision_config.hidden_size)
    mlp.eval()
    plain = mlp(x)
    torch.testing.assert_close(mlp(x), plain)  # no dropping outside training
    mlp.train()
    torch.manual_seed(0)
    out = mlp(x)
    dropped = out.abs().amax(dim=(1, 2)) == 0
    kept = ~dropped
    torch.testing.assert_close(out[kept], plain[kept] / (1 - p))  # kept tiles are rescaled, whole
    assert 0.25 < dropped.float().mean().item() < 0.55  # about p of the 200 tiles are dropped
    layers[0].mlp.train()
    torch.testing.assert_close(layers[0].mlp(x), layers[0].mlp.eval()(x))  # the first layer's rate is 0


def test_lora_trains_only_the_adapter_against_the_adapter_disabled_reference(
    tiny_model, mixed_meta, tmp_path
):
    from peft import PeftModel
    from safetensors.torch import load_file

    from mpo.cli.train import build_trainer, parse_train_args

    model_args, data_args, args = parse_train_args(
        tiny_mpo(
            str(tiny_model),
            str(mixed_meta),
            str(tmp_path / "lora"),
            "--max_steps",
            "3",
            "--learning_rate",
            "1e-2",
            "--use_peft",
            "true",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--ref_cache_dir",
            str(tmp_path / "cache"),
            "--precompute_ref_log_probs",
            "false",
            "--per_device_train_batch_size",
            "2",
        )
    )
    trainer = build_trainer(model_args, data_args, args)
    assert isinstance(trainer.model, PeftModel) and trainer.ref_model is None
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train()
    trainer.save_model(args.output_dir)
    # base weights untouched, adapter saved
    for n, p in trainer.model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), n
    adapter = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    # the reference is the adapter-disabled model: equal to the untouched base checkpoint's log-probs
    data, _ = load_mmpr(mixed_meta, load_processor(tiny_model))
    batch = trainer._prepare_inputs(trainer.data_collator([data[0], data[2]]))
    with torch.no_grad():
        ref_c, ref_r = trainer.reference_logps(trainer.model, batch)
        policy, _ = trainer.sequence_logps(trainer.model, batch)
    plain = oracle_batch(load_processor(tiny_model), mixed_meta, [0, 2])
    with torch.no_grad():
        base = independent_logps(load_model(tiny_model), plain)
    torch.testing.assert_close(
        torch.stack([ref_c, ref_r], 1).flatten(), base.view(2, 2).T.flatten(), rtol=1e-5, atol=1e-4
    )
    assert not torch.allclose(policy[0::2], ref_c, atol=1e-3)  # the adapter moved the policy away from it


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("label_smoothing", "0.1", "label_smoothing: a trl.DPOConfig field that MPOTrainer does not use"),
        ("padding_free", "true", "padding_free: .*prefix_sharing and max_packed_tokens"),
        ("truncation_mode", "keep_end", "truncation_mode: .*never truncated"),
        ("trust_remote_code", "true", "trust_remote_code: .*no code from a checkpoint runs"),
        ("model_revision", "v2", "model_revision: checkpoints are local directories"),
        ("vision_once", "false", "vision_once: false does nothing with prefix_sharing"),
    ],
)
def test_inherited_fields_that_would_do_nothing_are_refused(flag, value, message):
    from mpo.cli.train import parse_train_args
    from mpo.errors import UserError

    with pytest.raises(UserError, match=message):
        parse_train_args(["--config", "recipes/tiny/mpo.yaml", f"--{flag}", value])


def test_in_step_reference_is_deterministic_under_lora_and_vision_drop_path(tiny_model, mixed_meta, tmp_path):
    """With LoRA the reference is the policy with its adapter off, computed in the middle of training:
    the vision tower's drop path (active in training mode) must not reach it."""
    from mpo.cli.train import build_trainer, parse_train_args

    model_args, data_args, args = parse_train_args(
        tiny_mpo(
            str(tiny_model),
            str(mixed_meta),
            str(tmp_path / "lora"),
            "--use_peft",
            "true",
            "--lora_r",
            "4",
            "--precompute_ref_log_probs",
            "false",
            "--vision_drop_path_rate",
            "0.9",
        )
    )
    trainer = build_trainer(model_args, data_args, args)
    data, _ = load_mmpr(mixed_meta, load_processor(tiny_model))
    batch = trainer._prepare_inputs(
        trainer.data_collator([data[0], data[1]])
    )  # images: the vision tower runs
    trainer.model.train()
    torch.manual_seed(0)
    first = trainer.reference_logps(trainer.model, batch)
    second = trainer.reference_logps(trainer.model, batch)
    assert trainer.model.training  # back in training mode after the reference pass
    with torch.no_grad():
        base = independent_logps(
            load_model(tiny_model).eval(), oracle_batch(load_processor(tiny_model), mixed_meta, [0, 1])
        )
    for got in (first, second):
        torch.testing.assert_close(
            torch.stack(got, 1).flatten(), base.view(2, 2).T.flatten(), rtol=1e-5, atol=1e-4
        )


@pytest.mark.parametrize("precompute", [True, False])
def test_the_reference_mode_is_logged_with_its_cost(tiny_model, mixed_meta, tmp_path, caplog, precompute):
    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    reference = load_model(tiny_model)
    held = sum(p.numel() * 4 for p in reference.parameters()) / 2**30  # fp32 weights of the frozen copy
    with caplog.at_level("WARNING"):
        MPOTrainer(
            load_model(tiny_model),
            ref_model=None if precompute else reference,
            args=_config(tmp_path, precompute_ref_log_probs=precompute, ref_cache_dir=str(tmp_path / "c")),
            train_dataset=data,
            processing_class=processor,
        )
    notes = [r.getMessage() for r in caplog.records if "reference log-probs: " in r.getMessage()]
    if precompute:
        assert any("one pass before training" in n and "no reference weights" in n for n in notes), notes
    else:
        assert any(f"a frozen copy of the weights, {held:.3g} GiB" in n for n in notes), notes


def test_the_lm_head_projects_only_labelled_positions_on_the_cpu(
    tiny_model, mixed_meta, tmp_path, monkeypatch
):
    """TRL's fused head, left alone, projects every position of the row off Triton devices (trl 1.16)."""
    from trl.trainer import utils as trl_utils

    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    trainer = MPOTrainer(
        load_model(tiny_model),
        args=_config(tmp_path, precompute_ref_log_probs=False, prefix_sharing=True),
        train_dataset=data,
        processing_class=processor,
    )
    projected = []
    inner = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        trl_utils._ChunkedLogProbFunction, "apply", lambda h, *a: projected.append(h.shape[0]) or inner(h, *a)
    )
    batch = trainer.data_collator([data[0], data[1]])
    with torch.no_grad():
        trainer.sequence_logps(trainer.model, batch)
    labelled = int((batch["shift_labels"] != -100).sum())
    assert labelled < batch["input_ids"].numel() // 2  # a prefix-shared row is mostly prompt and image
    assert projected == [labelled]


def test_top_left_alignment_of_a_shared_branch_is_caught(
    tiny_model, perturbed_policy, mixed_meta, tmp_path, varlen_kernel, monkeypatch
):
    """The exactness check above is not blind to the causal alignment: the same varlen stand-in aligned
    to the top left (a rejected branch's query i seeing keys 0..i of [prompt ; rejected], i.e. only the
    prompt's first tokens) gives other rejected log-probs, while plain rows (as many keys as queries)
    do not move."""
    import conftest

    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    records = [data[i] for i in range(4)]
    model = load_model(tiny_model, attn_implementation=varlen_kernel, layout="shared")
    trainer = MPOTrainer(
        model,
        args=_config(tmp_path, precompute_ref_log_probs=False, prefix_sharing=True),
        train_dataset=data,
        processing_class=processor,
    )
    with torch.no_grad():
        expected = independent_logps(load_model(tiny_model), oracle_batch(processor, mixed_meta, range(4)))
        right, _ = trainer.sequence_logps(trainer.model, trainer.data_collator(records))
        monkeypatch.setitem(conftest.VARLEN_ALIGNMENT, "causal", "top-left")
        wrong, _ = trainer.sequence_logps(trainer.model, trainer.data_collator(records))
    torch.testing.assert_close(right[1::2], expected[4:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wrong[0::2], expected[:4], rtol=1e-5, atol=1e-5)  # prompt + chosen: causal
    assert (wrong[1::2] - expected[4:]).abs().min() > 1e-3  # every rejected row, far outside 1e-5
