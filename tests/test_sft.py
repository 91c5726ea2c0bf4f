"""Three-stage SFT against independent computations: freeze policy per stage, loss reweighting
(single process and 2 gloo ranks, over gradient accumulation), packing, JPEG augmentation, bad rows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, free_port, write_mmpr
from PIL import Image

from mpo.cli.sft import main as sft_main
from mpo.data import sft_collator
from mpo.data.packing import pack_samples
from mpo.data.sft_collator import SFTCollator
from mpo.data.sft_data import IGNORE_INDEX, SFTDataset, load_sft
from mpo.errors import DataError, UserError
from mpo.models.families.internvl2_5 import FAMILY as INTERNVL2_5
from mpo.models.loading import load_model
from mpo.sft import SFTStageConfig, SFTStageTrainer, make_dataset

# One row of each input shape: single image, multi-image, text-only, video (frames), multi-turn, system turn.
SFT_ROWS = [
    {
        "image": "red.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the image?"},
            {"from": "gpt", "value": "red"},
        ],
    },
    {
        "image": ["green.png", "wide.png"],
        "conversations": [
            {"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nWhich one is green?"},
            {"from": "gpt", "value": "Image-1 is green, Image-2 is not."},
        ],
    },
    {"conversations": [{"from": "human", "value": "What is 2 + 2?"}, {"from": "gpt", "value": "4"}]},
    {
        "video": ["red.png", "green.png", "blue.png"],
        "conversations": [
            {"from": "human", "value": "<video>\nWhat colour is the last frame?"},
            {"from": "gpt", "value": "blue"},
        ],
    },
    {
        "image": "wide.png",
        "conversations": [
            {"from": "human", "value": "Describe the image."},
            {"from": "gpt", "value": "A purple shape, wider than tall."},
            {"from": "human", "value": "Is it wide?"},
            {"from": "gpt", "value": "Yes, it is wider than tall."},
        ],
    },
    {
        "image": "blue.png",
        "conversations": [
            {"from": "system", "value": "You name colours."},
            {"from": "human", "value": "Name the colour."},
            {"from": "gpt", "value": "The colour is blue, a cold colour that many people like a lot."},
        ],
    },
]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def write_sft(root: Path, rows=SFT_ROWS, *, data_augment: bool = False, max_dynamic_patch: int = 6) -> Path:
    meta = write_mmpr(root, rows, max_dynamic_patch=max_dynamic_patch, name="sft")
    spec = json.loads(meta.read_text())
    spec["sft"]["data_augment"] = data_augment
    meta.write_text(json.dumps(spec))
    return meta


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one intra-op thread is many times faster than two on a busy 2-core machine
    (OpenMP threads spin-waiting against each other), and results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sft_meta(tmp_path) -> Path:
    return write_sft(tmp_path / "sft")


def _config(tmp_path, **kw) -> SFTStageConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        stage="2",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        max_packed_tokens=1024,
        max_length=1024,
    )
    return SFTStageConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------- template, config


def test_template_supervises_only_assistant_replies(processor, sft_meta):
    records, report = load_sft(sft_meta, processor)
    assert report.kept == len(records) == 6
    batch = SFTCollator(processor, train=False)([[r] for r in records])
    tok = processor.tokenizer
    supervised = [tok.decode(batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]) for i in range(6)]
    assert supervised[0] == "red<|im_end|>"
    assert supervised[4] == "A purple shape, wider than tall.<|im_end|>Yes, it is wider than tall.<|im_end|>"
    text = [tok.decode(batch["input_ids"][i][batch["attention_mask"][i] == 1]) for i in range(6)]
    n_ctx = [t.count("<IMG_CONTEXT>") for t in text]
    # 64x64 -> 1 tile; 128x64 -> 2 tiles + thumbnail; video frames 1 tile each; tile budget 6 split over images
    assert n_ctx == [16, 16 * (1 + 3), 0, 16 * 3, 16 * 3, 16]
    assert "Frame1: <img>" in text[3] and "Frame3: <img>" in text[3]
    assert text[5].startswith("<|im_start|>system\nYou name colours.<|im_end|>")
    assert text[2].endswith("<|im_start|>assistant\n4<|im_end|>\n")
    assert batch["supervised_tokens"].tolist() == [r["supervised_tokens"] for r in records]
    assert [int(m.sum()) for m in batch["attention_mask"]] == [r["length"] for r in records]  # planned = real
    assert batch["pixel_values"].shape[0] == 1 + 4 + 3 + 3 + 1


def test_stage_defaults_and_overrides(tmp_path):
    s1, s15, s2 = (_config(tmp_path, stage=s) for s in ("1", 1.5, 2))
    assert (s1.learning_rate, s1.warmup_steps) == (2e-4, 100)
    assert (s15.learning_rate, s15.warmup_steps, s15.stage) == (1e-5, 100, "1.5")
    assert (s2.learning_rate, s2.warmup_steps) == (4e-5, 0.03)
    assert all(c.lr_scheduler_type == "cosine" and c.weight_decay == 0.05 for c in (s1, s15, s2))
    assert s2.loss_reduction == "square"
    assert (s1.freeze_policy.vision, s1.freeze_policy.projector, s1.freeze_policy.llm) == (False, True, False)
    assert (s15.freeze_policy.vision, s15.freeze_policy.llm) == (True, False)
    s2.apply_model_size(26_000_000_000)
    assert s2.learning_rate == 2e-5
    mine = _config(tmp_path, stage="2", learning_rate=1e-3, warmup_steps=7)
    mine.apply_model_size(78_000_000_000)
    assert (mine.learning_rate, mine.warmup_steps) == (1e-3, 7)
    with pytest.raises(ValueError, match="stage"):
        _config(tmp_path, stage="3")
    with pytest.raises(ValueError, match="max_length"):
        _config(tmp_path, max_length=4096, max_packed_tokens=1024)


# ------------------------------------------------------------------------------------------ bad rows


BAD_ROWS = [
    ("{not json", None, "malformed JSON"),
    ({"image": "red.png"}, "conversations", "missing field"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "conversations", "no assistant"),
    (
        {"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}]},
        "conversations[0]",
        "unknown role",
    ),
    (
        {
            "image": "gone.png",
            "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
        },
        "image",
        "missing image",
    ),
    (
        {
            "image": "red.png",
            "conversations": [{"from": "human", "value": "<image><image> q"}, {"from": "gpt", "value": "a"}],
        },
        "conversations",
        "2 <image>",
    ),
    (
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "see <img> there"}]},
        "conversations",
        "image token <img>",
    ),
]


def _write_with_bad(root: Path, bad) -> tuple[Path, Path]:
    meta = write_sft(root)
    ann = root / "sft.jsonl"
    lines = ann.read_text().splitlines()
    lines.insert(2, bad if isinstance(bad, str) else json.dumps(bad))
    ann.write_text("\n".join(lines) + "\n")
    (root / "img" / "gone.png").unlink(missing_ok=True)
    return meta, ann


@pytest.mark.parametrize("bad,field,reason", BAD_ROWS, ids=[r[2] for r in BAD_ROWS])
def test_bad_row_error_names_file_and_line(processor, tmp_path, bad, field, reason):
    meta, ann = _write_with_bad(tmp_path / "d", bad)
    with pytest.raises(DataError) as err:
        load_sft(meta, processor)
    assert str(err.value).startswith(f"{ann}:3: ")
    assert reason in str(err.value)
    assert err.value.field == field


def test_skip_report_counts_bad_long_and_repetitive_rows(processor, tmp_path):
    loop = "the cat sat on the mat " * 8
    rows = SFT_ROWS + [
        {"conversations": [{"from": "human", "value": "Tell me."}, {"from": "gpt", "value": loop}]},
        {
            "image": "wide.png",
            "conversations": [{"from": "human", "value": "Long? " * 700}, {"from": "gpt", "value": "yes"}],
        },
    ]
    root = tmp_path / "d"
    meta = write_sft(root, rows)
    ann = root / "sft.jsonl"
    lines = ann.read_text().splitlines()
    lines[1:1] = [json.dumps(BAD_ROWS[1][0]), "{broken", json.dumps(BAD_ROWS[2][0])]
    ann.write_text("\n".join(lines) + "\n")
    report_path = tmp_path / "report.json"
    records, report = load_sft(
        meta, processor, on_bad_row="skip", max_length=1024, max_repetition_ratio=0.5, report_path=report_path
    )
    saved = json.loads(report_path.read_text())
    assert len(records) == 6 and saved["kept"] == 6 and saved["rows_read"] == 11
    assert saved["skipped_bad_rows"] == 3
    assert saved["bad_rows_by_reason"] == {
        "missing field": 1,
        "malformed JSON (Expecting property name enclosed in double quotes)": 1,
        "no assistant (gpt) turn: nothing to learn": 1,
    }
    assert sorted(r["line"] for r in saved["bad_rows"]) == [2, 3, 4]
    assert saved["dropped_repetitive"] == 1 and saved["repetitive"][0]["source"] == f"{ann}:10"
    assert saved["dropped_too_long"] == 1 and saved["too_long"][0]["source"] == f"{ann}:11"
    assert saved["too_long"][0]["tokens"] > 1024
    # without the filter the looping reply is kept; with fail, bad rows stop the load
    assert len(load_sft(meta, processor, on_bad_row="skip", max_length=1024)[0]) == 7
    with pytest.raises(DataError):
        load_sft(meta, processor, max_length=1024)


# ------------------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize(
    "augment,train,expect", [(True, True, True), (True, False, False), (False, True, False)]
)
def test_jpeg_only_with_data_augment_and_in_training(
    processor, tmp_path, monkeypatch, augment, train, expect
):
    root = tmp_path / "d"
    meta = write_sft(root, SFT_ROWS[:2], data_augment=augment)
    # a noisy image, so that JPEG at any quality changes pixels
    gen = torch.Generator().manual_seed(0)
    noise = (torch.rand(64, 64, 3, generator=gen) * 255).to(torch.uint8).numpy()
    Image.fromarray(noise).save(root / "img" / "red.png")
    records, _ = load_sft(meta, processor)
    qualities: list[int] = []
    real = sft_collator.jpeg_compress

    def spy(image, quality):
        qualities.append(quality)
        return real(image, quality)

    monkeypatch.setattr(sft_collator, "jpeg_compress", spy)
    out = SFTCollator(processor, train=train)([records[0], records[1]])
    clean = SFTCollator(processor, train=False)([records[0], records[1]])
    assert len(qualities) == (3 if expect else 0)  # one draw per image: 1 + 2 images
    assert all(isinstance(q, int) and 75 <= q <= 100 for q in qualities)
    assert torch.equal(out["input_ids"], clean["input_ids"])
    assert (not torch.equal(out["pixel_values"], clean["pixel_values"])) == expect


def test_jpeg_quality_is_uniform_over_75_to_100(processor):
    collator = SFTCollator(processor, seed=3)
    draws = [collator.draw_jpeg_quality() for _ in range(5200)]
    assert min(draws) == 75 and max(draws) == 100
    counts = [draws.count(q) for q in range(75, 101)]
    assert all(140 < c < 260 for c in counts)  # 200 expected per value (26 values)


def test_each_of_several_dataloader_workers_draws_its_own_qualities(processor):
    """Several workers each hold a copy of the collator; were they to share its seeded stream, batches 0 and 1
    (built by workers 0 and 1) would get the same JPEG qualities. One worker draws what the training
    process draws; several draw reproducibly, and by seed."""

    def draws(workers: int, seed: int = 3) -> list[list[int]]:
        collator = SFTCollator(processor, seed=seed)
        batches = torch.utils.data.DataLoader(
            range(6),
            batch_size=1,
            num_workers=workers,
            collate_fn=lambda _: [collator.draw_jpeg_quality() for _ in range(8)],
        )
        return list(batches)

    here = SFTCollator(processor, seed=3)
    assert draws(1) == [[here.draw_jpeg_quality() for _ in range(8)] for _ in range(6)]
    two = draws(2)
    assert two[0] != two[1] and two[2] != two[3] and two[4] != two[5]
    assert len({tuple(b) for b in two}) == 6  # and no batch repeats another's draws
    assert draws(2) == two and draws(2, seed=4) != two


def test_trainer_evaluates_without_augmentation(tiny_model, processor, sft_meta, tmp_path):
    records, _ = load_sft(sft_meta, processor)
    args = _config(tmp_path)
    data = make_dataset(records, args)
    trainer = SFTStageTrainer(
        load_model(tiny_model), args, train_dataset=data, eval_dataset=data, processing_class=processor
    )
    assert trainer.data_collator.train is True
    assert trainer.get_eval_dataloader().collate_fn.train is False
    assert trainer.data_collator.train is True
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 1.0  # untrained: near log(vocab)


def test_a_dataloader_worker_trains_exactly_as_the_training_process(tiny_model, processor, tmp_path):
    """Three epochs with JPEG augmentation and random video frames, the batches built in the training
    process or in one DataLoader worker: the same draws, so bitwise the same weights. A worker that
    restarted every epoch would repeat epoch 1's draws (qualities, frames) and end elsewhere."""
    root = tmp_path / "d"
    meta = write_sft(root, data_augment=True)
    gen = torch.Generator().manual_seed(1)
    for name in ("red", "green", "blue"):  # noisy images: every JPEG quality changes their pixels
        noise = (torch.rand(64, 64, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(noise).save(root / "img" / f"{name}.png")
    records, _ = load_sft(meta, processor)

    def train(workers: int) -> dict[str, torch.Tensor]:
        args = _config(
            tmp_path,
            output_dir=str(tmp_path / f"w{workers}"),
            packing=False,
            per_device_train_batch_size=2,
            max_steps=9,  # 6 records, 3 steps an epoch
            learning_rate=1e-2,
            warmup_steps=0,
            dataloader_num_workers=workers,
        )
        trainer = SFTStageTrainer(
            load_model(tiny_model),
            args,
            train_dataset=make_dataset(records, args),
            processing_class=processor,
        )
        trainer.train()
        assert trainer.state.epoch == 3
        return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}

    here, worker = train(0), train(1)
    assert [k for k, v in here.items() if not torch.equal(v, worker[k])] == []


# ------------------------------------------------------------------------------------------- packing


def test_pack_samples_never_splits_and_fits():
    lengths = [5, 9, 3, 7, 10, 1, 4, 8, 6, 2] * 3
    rows = pack_samples(lengths, 12, seed=1)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 12 for row in rows)
    assert len(rows) <= math.ceil(sum(lengths) / 12) + 2
    assert rows == pack_samples(lengths, 12, seed=1) and rows != pack_samples(lengths, 12, seed=2)
    with pytest.raises(ValueError):
        pack_samples([13], 12)


def _per_sample(trainer, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    from mpo.sft_loss import per_sample_sums

    n = len(batch["supervised_tokens"])
    losses, weights, ids = trainer.token_losses(model, batch)
    return per_sample_sums(losses, ids, n), per_sample_sums(losses * weights, ids, n)


def test_trainer_refuses_a_model_that_cannot_train_here(tiny_model, processor, sft_meta, tmp_path):
    records, _ = load_sft(sft_meta, processor)
    model = load_model(tiny_model, attn_implementation="flex_attention", layout="packed", training=False)
    with pytest.raises(UserError, match="flex_attention cannot train here"):
        SFTStageTrainer(
            model, _config(tmp_path), train_dataset=SFTDataset(records), processing_class=processor
        )


@pytest.mark.parametrize("attn", ["sdpa", "eager", "varlen", "sdpa_varlen", "flex_attention"])
def test_packed_rows_match_separate_rows(tiny_model, processor, sft_meta, tmp_path, attn, request):
    """Packed rows under every CPU kernel (varlen: the conftest stand-in for flash-attn's padding-free
    rows; sdpa_varlen: mpo's own, sdpa per sequence) give each sample's loss and the gradients of the
    separate-row computation. flex_attention has no CPU backward: values only."""
    records, _ = load_sft(sft_meta, processor)
    attn = request.getfixturevalue("varlen_kernel") if attn == "varlen" else attn
    grads = attn != "flex_attention"
    model = load_model(tiny_model, attn_implementation=attn, layout="packed", training=grads).eval()
    # (a flex model cannot train on the CPU, so the trainer is built on an sdpa one; its routine runs either)
    trainer = SFTStageTrainer(
        model if grads else load_model(tiny_model),
        _config(tmp_path),
        train_dataset=SFTDataset(records),
        processing_class=processor,
    )
    collate = SFTCollator(processor, train=False)
    packed = collate([records[:3], records[3:]])  # two rows of three samples, images in both
    rows = collate([[r] for r in records])  # the plain layout: one sample per row, padded
    assert packed["input_ids"].shape[0] == 2 and int(packed["position_ids"].eq(0).sum()) >= 6
    assert packed["layout"] == "packed" and rows["layout"] == "plain"
    with torch.set_grad_enabled(grads), torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        # (static shapes: torch 2.14's CPU inductor fails to compile flex attention for dynamic ones)
        with torch.no_grad():
            sums_rows, _ = _per_sample(trainer, model, rows)
        sums_p, weighted_p = _per_sample(trainer, model, packed)
        loss_p = trainer.compute_loss(model, packed)
        with (
            torch.no_grad()
        ):  # the test can tell: packed rows with a plain causal mask (samples see each other)
            one_group = torch.where(packed["attn_group"] >= 0, 0, -1)
            leaky = dict(packed, attn_group=one_group, attn_prefix=one_group)
            sums_leaky, _ = _per_sample(trainer, model, leaky)
    # independent: each sample alone in its own row (default sdpa, padding mask), plain cross-entropy
    reference = load_model(tiny_model).eval()
    sums_s, weighted_s, counts = [], [], []
    for record in records:
        one = collate([[record]])
        logits = reference(
            input_ids=one["input_ids"], attention_mask=one["attention_mask"], pixel_values=one["pixel_values"]
        ).logits[0, :-1]
        labels = one["labels"][0, 1:]
        keep = labels != -100
        ce = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")
        counts.append(int(keep.sum()))
        sums_s.append(ce)
        weighted_s.append(ce * counts[-1] ** -0.5)  # square averaging, the stage default
    sums_s, weighted_s = torch.stack(sums_s), torch.stack(weighted_s)
    loss_s = weighted_s.sum() / sum(x**0.5 for x in counts)  # Σ w_i x_i with w_i = x_i^-1/2
    torch.testing.assert_close(sums_rows, sums_s.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums_p.detach(), sums_s.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weighted_p.detach(), weighted_s.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_p.detach(), loss_s.detach(), rtol=1e-5, atol=1e-5)
    assert (sums_leaky - sums_s.detach()).abs().max() > 1e-2
    if grads:
        loss_p.backward()
        loss_s.backward()
        expected = dict(reference.named_parameters())
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[name].grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------ loss reduction


def independent_step(model_dir, records_by_source: dict, groups: list[list[str]], processor, reduction: str):
    """The step's loss L = Σ w_i Σ_t l_it / Σ w_i x_i over every sample of every group (micro-batch or
    rank), each sample run alone, with ∇L, and the gradient of the wrong normalisation (each group
    normalised by its own weight sum, then averaged over groups)."""
    model = load_model(model_dir)
    collate = SFTCollator(processor, train=False)
    w = {"token": lambda x: 1.0, "sample": lambda x: 1.0 / x, "square": lambda x: x**-0.5}[reduction]
    numerators, denominators, group_grads = [], [], []
    for group in groups:
        numerator, denominator = 0.0, 0.0
        for source in group:
            one = collate([[records_by_source[source]]])
            logits = model(
                input_ids=one["input_ids"],
                attention_mask=one["attention_mask"],
                pixel_values=one["pixel_values"],
            ).logits[0, :-1]
            labels = one["labels"][0, 1:]
            keep = labels != -100
            x = int(keep.sum())
            numerator = numerator + w(x) * torch.nn.functional.cross_entropy(
                logits[keep], labels[keep], reduction="sum"
            )
            denominator += w(x) * x
        model.zero_grad()
        numerator.backward()
        group_grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        numerators.append(numerator.item())
        denominators.append(denominator)
    total = sum(denominators)
    loss = sum(numerators) / total
    grads = {n: sum(g[n] for g in group_grads) / total for n in group_grads[0]}
    wrong = {
        n: sum(g[n] / d for g, d in zip(group_grads, denominators, strict=True)) / len(groups) for n in grads
    }
    return loss, grads, wrong


SGD_STEP = dict(
    max_steps=1,
    learning_rate=1.0,
    optim="sgd",
    lr_scheduler_type="constant",
    warmup_steps=0,
    weight_decay=0.0,
    max_grad_norm=0.0,
)


def _flat(tensors: dict, names) -> torch.Tensor:
    return torch.cat([tensors[n].flatten() for n in names])


def _check_step(before: dict, after: dict, grads: dict, wrong: dict, lr: float = 1.0) -> None:
    """The SGD update (before - after) / lr is ∇L, and measurably not the wrong normalisation's gradient."""
    names = sorted(grads)
    step = _flat({n: (before[n] - after[n]) / lr for n in names}, names)
    g, g_wrong = _flat(grads, names), _flat(wrong, names)
    assert ((step - g).norm() / g.norm()).item() < 1e-3
    torch.testing.assert_close(step, g, rtol=1e-2, atol=1e-5)
    assert ((g_wrong - g).norm() / g.norm()).item() > 1e-2  # the test can tell the two apart (10x the match)


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_loss_reduction_over_accumulation_matches_independent(tiny_model, processor, tmp_path, reduction):
    meta = write_sft(tmp_path / "d", SFT_ROWS * 2)
    records, _ = load_sft(meta, processor)
    args = _config(
        tmp_path,
        loss_reduction=reduction,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=1,
        max_packed_tokens=400,
        max_length=400,
        **SGD_STEP,
    )
    data = SFTDataset(records, [[0, 2, 4], [1, 3, 5, 6, 7, 8, 9, 10, 11]])  # rows of unequal sizes
    model = load_model(tiny_model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTStageTrainer(model, args, train_dataset=data, processing_class=processor)
    seen: list[list[str]] = []
    compute = trainer.compute_loss

    def spy(model, inputs, *a, **kw):
        seen.append(list(inputs["sources"]))
        return compute(model, inputs, *a, **kw)

    trainer.compute_loss = spy
    trainer.train()
    assert sorted(map(len, seen)) == [3, 9]  # two micro-batches of one packed row each
    by_source = {r["source"]: r for r in records}
    loss, grads, wrong = independent_step(tiny_model, by_source, seen, processor, reduction)
    logged = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    assert math.isclose(logged, loss, rel_tol=1e-4)
    _check_step(before, dict(trainer.model.named_parameters()), grads, wrong)


@pytest.mark.slow
def test_loss_reduction_two_gloo_ranks_matches_independent(tiny_model, processor, tmp_path):
    meta = write_sft(tmp_path / "d", SFT_ROWS * 2)
    out = tmp_path / "run"
    out.mkdir()
    cmd = [
        str(BIN / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "tests/dist/sft_ranks.py",
        str(tiny_model),
        str(meta),
        str(out),
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    r0, r1 = (json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert len(r0["sources"]) == len(r1["sources"]) == 2  # two micro-batches per rank
    ranks = [sum(r["sources"], []) for r in (r0, r1)]
    assert set(ranks[0]).isdisjoint(ranks[1])  # different data per rank
    records, _ = load_sft(meta, processor)
    loss, grads, wrong = independent_step(
        tiny_model, {r["source"]: r for r in records}, ranks, processor, "square"
    )
    assert math.isclose(r0["loss"], loss, rel_tol=1e-4) and r0["loss"] == r1["loss"]
    before = dict(load_model(tiny_model).named_parameters())
    after = dict(load_model(out / "model").named_parameters())
    _check_step(
        {n: p.detach() for n, p in before.items()}, {n: p.detach() for n, p in after.items()}, grads, wrong
    )


# ----------------------------------------------------------------------------------- stages, resume


def _parts_changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {INTERNVL2_5.parts.part_of(k) for k in before if not torch.equal(before[k], after[k])}


def test_three_stages_train_exactly_their_parts(tiny_model, tmp_path):
    meta = write_sft(tmp_path / "d", SFT_ROWS * 2)
    common = [
        "--meta_path",
        str(meta),
        "--max_steps",
        "2",
        "--warmup_steps",
        "0",
        "--learning_rate",
        "1e-2",
        "--max_packed_tokens",
        "600",
        "--max_length",
        "600",
        "--logging_steps",
        "1",
    ]
    previous = tiny_model
    expected = {"1": {"projector"}, "1_5": {"vision", "projector"}, "2": {"vision", "projector", "llm"}}
    state = {k: v.clone() for k, v in load_model(tiny_model).state_dict().items()}
    for stage, parts in expected.items():
        out = tmp_path / f"stage{stage}"
        assert (
            sft_main(
                [
                    "--config",
                    f"recipes/tiny/sft_stage{stage}.yaml",
                    "--model_name_or_path",
                    str(previous),
                    "--output_dir",
                    str(out),
                    *common,
                ]
            )
            == 0
        )
        new = load_model(out).state_dict()
        assert _parts_changed(state, new) == parts, stage
        assert (out / "preprocessor_config.json").is_file() or (out / "processor_config.json").is_file()
        assert json.loads((out / "sft_data_report_train.json").read_text())["kept"] == 12
        previous, state = out, new


def test_resume_restores_weights(tiny_model, processor, sft_meta, tmp_path):
    records, _ = load_sft(sft_meta, processor)

    def run(out, resume=None):
        args = _config(
            tmp_path,
            output_dir=str(out),
            max_steps=2,
            save_strategy="steps",
            save_steps=1,
            learning_rate=1e-2,
            warmup_steps=0,
            max_packed_tokens=400,
            max_length=400,
        )
        trainer = SFTStageTrainer(
            load_model(tiny_model),
            args,
            train_dataset=make_dataset(records, args),
            processing_class=processor,
        )
        trainer.train(resume_from_checkpoint=resume)
        return dict(trainer.model.named_parameters())

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "part", resume=str(tmp_path / "full" / "checkpoint-1"))
    for name, p in full.items():
        torch.testing.assert_close(resumed[name], p, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_sft_stage_2_gets_the_vision_drop_path_of_its_recipe(tiny_model, sft_meta, tmp_path, rate):
    """`vision_drop_path_rate` reaches the vision tower in `mpo sft` as in `mpo train`: every ViT layer's
    two residual branches hooked, the last one dropping at the full rate in training mode only."""
    from mpo.cli.sft import build_trainer, parse_sft_args

    trainer = build_trainer(
        *parse_sft_args(
            [
                "--config",
                "recipes/tiny/sft_stage2.yaml",
                "--model_name_or_path",
                str(tiny_model),
                "--meta_path",
                str(sft_meta),
                "--output_dir",
                str(tmp_path / "out"),
                "--vision_drop_path_rate",
                str(rate),
            ]
        )
    )
    layers = trainer.model.model.vision_tower.encoder.layer
    assert [len(layer.mlp._forward_hooks) for layer in layers] == [1 if rate else 0] * len(layers)
    last = layers[-1].mlp.train()
    x = torch.randn(400, 5, trainer.model.config.vision_config.hidden_size)
    torch.manual_seed(0)
    dropped = (last(x).abs().amax(dim=(1, 2)) == 0).float().mean().item()
    assert abs(dropped - rate) < 0.08  # whole tiles dropped with probability `rate`
