"""mpo.attention: the visibility rule, each kernel's form of it, varlen flattening, and the kernel choice."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from mpo import attention
from mpo.attention import KernelChoice, Platform, choose_kernels
from mpo.data.layout import assemble, plain_segment, shared_segment
from mpo.errors import UserError

# Row 0: pair 0 prefix-shared (prompt of 3 tokens, chosen 2, rejected 2), then an independent plain
# sequence of 4 tokens. Row 1: pair 1 prefix-shared (prompt 2, chosen 1, rejected 3), then padding.
# Each token described as (segment, branch); branch "p" = the shared prompt.
ROW0 = [("s0", "p")] * 2 + [("s0", "c")] * 3 + [("s0", "r")] * 3 + [("s9", "p")] * 4
ROW1 = [("s1", "p")] * 1 + [("s1", "c")] * 2 + [("s1", "r")] * 4


def _batch() -> dict:
    rows = [
        [
            shared_segment([1, 2, 3], [4, 5], [6, 7], pair=0, group0=0),
            plain_segment([8, 9], [10, 11], 4, group=9),
        ],
        [shared_segment([1, 2], [3], [4, 5, 6], pair=1, group0=3)],
    ]
    return assemble(rows, pad_id=0, layout="shared")


def _expected_visibility() -> torch.Tensor:
    """Written from the definition, token by token: a token sees earlier tokens of its own segment that
    are in the prompt or in its own branch; padding sees only itself."""
    length = len(ROW0)
    out = torch.zeros(2, 1, length, length, dtype=torch.bool)
    for r, row in enumerate((ROW0, ROW1)):
        row = row + [None] * (length - len(row))
        for q, k in itertools.product(range(length), range(length)):
            if row[q] is None or row[k] is None:
                out[r, 0, q, k] = q == k
            else:
                (seg_q, br_q), (seg_k, br_k) = row[q], row[k]
                out[r, 0, q, k] = k <= q and seg_q == seg_k and br_k in ("p", br_q)
    return out


def test_dense_mask_is_the_visibility_rule():
    batch = _batch()
    assert batch["input_ids"].shape == (2, len(ROW0))
    torch.testing.assert_close(
        attention.dense_mask(batch["attn_group"], batch["attn_prefix"]), _expected_visibility()
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_gets_an_additive_mask(dtype):
    """eager adds the mask to its scores: 0 where a key is seen, the dtype's minimum where not."""
    batch = _batch()
    mask = attention.additive_mask(batch["attn_group"], batch["attn_prefix"], dtype)
    expected = _expected_visibility()
    assert mask.dtype == dtype
    assert (mask[expected] == 0).all() and (mask[~expected] == torch.finfo(dtype).min).all()


def test_flex_block_mask_is_the_same_rule():
    batch = _batch()
    block = attention.flex_block_mask(batch["attn_group"], batch["attn_prefix"])
    q = torch.arange(len(ROW0))
    for r in range(2):  # the mask_mod evaluated on every (query, key)
        got = block.mask_mod(torch.tensor(r), torch.tensor(0), q[:, None], q[None, :])
        torch.testing.assert_close(got, _expected_visibility()[r, 0])


def test_flatten_gives_padding_free_rows_and_sequence_boundaries():
    rows = [
        [plain_segment([1, 2], [3], 0, group=0), plain_segment([4], [5, 6], 1, group=1)],
        [plain_segment([7, 8, 9], [10], 2, group=2)],
    ]
    batch = assemble(rows, pad_id=0, layout="packed")
    flat, varlen = attention.flatten(batch)
    assert flat["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2, 3]]
    assert flat["logp_index"].tolist() == [[-1, 0, -1, 1, 1, -1, -1, -1, 2, -1]]
    assert varlen["cu_seq_lens_q"].tolist() == varlen["cu_seq_lens_k"].tolist() == [0, 3, 6, 10]
    assert varlen["cu_seq_lens_q"].dtype == torch.int32
    assert varlen["max_length_q"] == varlen["max_length_k"] == 4
    assert "attention_mask" not in flat and flat["layout"] == "packed"


def test_flatten_splits_rows_even_when_groups_repeat_across_them():
    """One sequence per row with the same group id in both rows is still two sequences."""
    rows = [[plain_segment([1, 2], [3], 0, group=5)], [plain_segment([4], [5], 1, group=5)]]
    _, varlen = attention.flatten(assemble(rows, pad_id=0, layout="plain"))
    assert varlen["cu_seq_lens_q"].tolist() == [0, 3, 5]


@pytest.mark.parametrize("kernel", ["sdpa", "eager", "flex_attention"])
def test_plain_rows_keep_the_padding_mask(kernel):
    rows = [[plain_segment([1, 2], [3], 0, group=0)], [plain_segment([4], [5], 1, group=1)]]
    batch = assemble(rows, pad_id=0, layout="plain")
    same, kwargs = attention.model_inputs(batch, kernel, torch.float32)
    assert same is batch and torch.equal(kwargs["attention_mask"], batch["attention_mask"])


def test_varlen_kernel_refuses_prefix_sharing_saying_what_to_change():
    with pytest.raises(
        UserError, match="flash_attention_2 cannot compute the 'shared' layout.*prefix_sharing: false"
    ):
        attention.model_inputs(_batch(), "flash_attention_2", torch.bfloat16)


# ------------------------------------------------------------------------------------ the choice

# What each kernel can express, from the kernels' definitions (not mpo.attention's table): varlen
# flash-attention runs every sequence causally on its own, so branches that share a prompt without
# seeing each other are beyond it; masks (dense or block) express anything.
CAN_EXPRESS = {
    "sdpa": {"plain", "packed", "shared"},
    "eager": {"plain", "packed", "shared"},
    "flex_attention": {"plain", "packed", "shared"},
    "flash_attention_2": {"plain", "packed"},
    "torch_varlen": {"plain", "packed"},
    "sdpa_varlen": {"plain", "packed"},
}
PLATFORMS = [
    Platform(cuda=c, flash_attn=c and f, flex_backward=c and x, torch_varlen=c and v)
    for c, f, x, v in itertools.product([False, True], repeat=4)
]


@pytest.mark.parametrize("platform", PLATFORMS, ids=str)
@pytest.mark.parametrize("layout", ["plain", "packed", "shared"])
def test_auto_picks_an_exact_kernel_that_runs_and_trains_there(platform, layout):
    choice = choose_kernels("auto", layout, platform)
    assert layout in CAN_EXPRESS[choice.text]
    if not platform.cuda:  # flex cannot train, flash cannot run (sdpa_varlen: by name only)
        assert choice == KernelChoice("sdpa", "sdpa", choice.reason)
    assert choice.text != "sdpa_varlen"
    if choice.text == "flash_attention_2" or choice.vision == "flash_attention_2":
        assert platform.cuda and platform.flash_attn
    if choice.text == "flex_attention":
        assert platform.flex_backward
    if choice.text == "torch_varlen":
        assert (
            platform.cuda and platform.torch_varlen and not platform.flash_attn
        )  # flash-attn's own kernel first
    if platform.flash_attn and layout != "shared":
        assert choice.text == "flash_attention_2"  # padding-free varlen when it is exact
    elif platform.torch_varlen and layout != "shared":
        assert choice.text == "torch_varlen"  # PyTorch's varlen FlashAttention-2 without the package
    if platform.cuda and layout == "shared":
        assert choice.text == ("flex_attention" if platform.flex_backward else "sdpa")
    assert choice.reason.startswith("auto: ")


def test_explicit_kernels_that_cannot_be_exact_or_cannot_run_are_refused():
    gpu = Platform(cuda=True, flash_attn=True, flex_backward=True)
    cpu = Platform(cuda=False, flash_attn=False, flex_backward=False)
    with pytest.raises(UserError, match="cannot compute the 'shared' layout exactly"):
        choose_kernels("flash_attention_2", "shared", gpu)
    with pytest.raises(UserError, match="needs a CUDA GPU and the flash-attn package"):
        choose_kernels("flash_attention_2", "plain", cpu)
    with pytest.raises(UserError, match="flex_attention cannot train here"):
        choose_kernels("flex_attention", "shared", cpu)
    with pytest.raises(UserError, match="torch_varlen needs a CUDA GPU and torch >= 2.9"):
        choose_kernels("torch_varlen", "plain", cpu)
    with pytest.raises(UserError, match="torch_varlen cannot compute the 'shared' layout exactly"):
        choose_kernels("torch_varlen", "shared", Platform(True, False, True, torch_varlen=True))
    with pytest.raises(UserError, match="sdpa_varlen cannot compute the 'shared' layout exactly"):
        choose_kernels("sdpa_varlen", "shared", cpu)
    assert choose_kernels("sdpa_varlen", "packed", cpu).text == "sdpa_varlen"  # by name, on the CPU
    with pytest.raises(
        UserError, match="must be 'auto' or one of eager, sdpa, flex_attention, flash_attention_2"
    ):
        choose_kernels("flash", "plain", gpu)
    assert (
        choose_kernels("flex_attention", "shared", cpu, training=False).text == "flex_attention"
    )  # scoring only
    assert choose_kernels("flex_attention", "shared", gpu) == KernelChoice(
        "flex_attention", "flash_attention_2", "requested"
    )
    assert choose_kernels("eager", "shared", gpu).for_transformers() == {
        "": "eager",
        "text_config": "eager",
        "vision_config": "eager",
    }


@pytest.mark.parametrize(
    "cuda, packages, expected",
    [
        (False, {"flash_attn", "triton", "torch.nn.attention.varlen"}, Platform(False, False, False)),
        (True, set(), Platform(True, False, False)),
        (True, {"flash_attn"}, Platform(True, True, False)),
        (True, {"flash_attn", "triton"}, Platform(True, True, True)),
        (True, {"torch.nn.attention.varlen"}, Platform(True, False, False, torch_varlen=True)),
    ],
)
def test_platform_detection_fakes_device_and_packages(monkeypatch, cuda, packages, expected):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in packages else None)
    assert Platform.detect() == expected


def test_load_model_logs_its_choice_and_the_trainer_refuses_an_inexact_model(
    tiny_model, mixed_meta, tmp_path, caplog
):
    from mpo.data.mmpr import load_mmpr
    from mpo.models.loading import load_model, load_processor
    from mpo.trainer import MPOConfig, MPOTrainer

    with caplog.at_level(logging.WARNING, logger="mpo.models.loading"):
        model = load_model(tiny_model, layout="shared")
    lines = [r.getMessage() for r in caplog.records if r.name == "mpo.models.loading"]
    assert lines == [
        "attention: sdpa for the language model (shared layout), sdpa for the vision tower: auto: CPU, "
        "sdpa takes the layout's mask; flex has no CPU backward, flash-attn needs CUDA"
    ]
    assert attention.text_kernel(model) == "sdpa"
    # a model whose language model runs varlen flash-attention cannot take prefix sharing
    model.config.text_config._attn_implementation = "flash_attention_2"
    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    args = MPOConfig(
        output_dir=str(tmp_path), report_to=[], precompute_ref_log_probs=False, prefix_sharing=True
    )
    with pytest.raises(UserError, match="prefix_sharing: false"):
        MPOTrainer(model, args=args, train_dataset=data, processing_class=processor)


def test_torch_varlen_runs_each_sequence_causally_on_its_own(monkeypatch):
    """The adapter around PyTorch's varlen FlashAttention-2 (CUDA only) with a CPU stand-in of that
    kernel's definition (each cu_seq_lens span causal alone, keys and values already grouped per head):
    layouts, head grouping and scale agree with per-sequence sdpa over the repeated key heads."""
    import torch.nn.attention.varlen as varlen
    import torch.nn.functional as F

    from mpo.attention import torch_varlen_attention

    def stand_in(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), scale=None, **kw):  # [N, H, D]
        assert window_size == (-1, 0) and cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k)
        spans = zip(cu_q.tolist()[:-1], cu_q.tolist()[1:], strict=True)
        return torch.cat(
            [
                F.scaled_dot_product_attention(
                    q[s:e].transpose(0, 1),
                    k[s:e].transpose(0, 1),
                    v[s:e].transpose(0, 1),
                    is_causal=True,
                    scale=scale,
                ).transpose(0, 1)
                for s, e in spans
            ]
        )

    monkeypatch.setattr(varlen, "varlen_attn", stand_in)
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(1, 4, 10, 8),
        torch.randn(1, 2, 10, 8),
        torch.randn(1, 2, 10, 8),
    )  # 4 query heads, 2 kv
    cu = torch.tensor([0, 3, 10])
    out, weights = torch_varlen_attention(
        None, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=7, max_length_k=7
    )
    kk, vv = (
        k.repeat_interleave(2, dim=1),
        v.repeat_interleave(2, dim=1),
    )  # query head h reads key head h // 2
    want = torch.cat(
        [
            F.scaled_dot_product_attention(
                q[:, :, s:e], kk[:, :, s:e], vv[:, :, s:e], is_causal=True, scale=0.3
            )
            for s, e in ((0, 3), (3, 10))
        ],
        dim=2,
    )
    assert weights is None and out.shape == (1, 10, 4, 8)
    torch.testing.assert_close(out, want.transpose(1, 2))
    with pytest.raises(ValueError, match="one flattened row and no mask"):
        torch_varlen_attention(
            None,
            q,
            k,
            v,
            torch.ones(1, 1, 10, 10),
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=7,
            max_length_k=7,
        )


def test_sdpa_varlen_is_softmax_attention_within_each_sequence():
    """sdpa_varlen against attention written out: scores q.k * scale, causal and within the sequence
    (cu_seq_lens) only, softmax, times v; 4 query heads reading 2 key heads (query head h: key head h // 2)."""
    from mpo.attention import sdpa_varlen_attention

    torch.manual_seed(0)
    n, scale = 11, 0.3
    q, k, v = torch.randn(1, 4, n, 8), torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
    cu = torch.tensor([0, 3, 4, 11], dtype=torch.int32)
    out, weights = sdpa_varlen_attention(
        None, q, k, v, None, scaling=scale, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=7, max_length_k=7
    )
    sequence = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2])
    allowed = (sequence[:, None] == sequence[None, :]) & (
        torch.arange(n)[None, :] <= torch.arange(n)[:, None]
    )
    want = torch.empty(1, n, 4, 8)
    for h in range(4):
        scores = (q[0, h] @ k[0, h // 2].T) * scale
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        want[0, :, h] = probs @ v[0, h // 2]
    assert weights is None and out.shape == (1, n, 4, 8)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one flattened row and no mask"):
        sdpa_varlen_attention(
            None,
            q,
            k,
            v,
            torch.ones(1, 1, n, n),
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=7,
            max_length_k=7,
        )
