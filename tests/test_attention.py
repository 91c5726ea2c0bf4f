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


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_plain_rows_keep_the_padding_mask(kernel):
    rows = [[plain_segment([1, 2], [3], 0, group=0)], [plain_segment([4], [5], 1, group=1)]]
    batch = assemble(rows, pad_id=0, layout="plain")
    same, kwargs = attention.model_inputs(batch, kernel, torch.float32)
    assert same is batch and torch.equal(kwargs["attention_mask"], batch["attention_mask"])


def test_flex_rows_are_padded_to_a_few_lengths_that_score_nothing():
    """Under flex every row length is rounded up to one of 4 lengths per doubling (so a run compiles
    a bounded number of times), by padding that no real token sees and nothing scores."""
    lengths = {attention.flex_length(n) for n in range(1, 4097)}
    assert sorted(lengths)[:6] == [128, 160, 192, 224, 256, 320] and len(lengths) == 1 + 4 * 5
    assert all(
        attention.flex_length(n) >= n and attention.flex_length(n) <= max(128, 1.25 * n)
        for n in range(1, 5000)
    )
    batch = _batch()
    padded, kwargs = attention.model_inputs(batch, "flex_attention", torch.float32)
    assert padded["input_ids"].shape == (2, 128) and kwargs["attention_mask"].shape[-2:] == (128, 128)
    n = batch["input_ids"].shape[1]
    for key, fill in (("shift_labels", -100), ("logp_index", -1), ("attn_group", -1), ("attention_mask", 0)):
        assert torch.equal(padded[key][:, :n], batch[key]) and (padded[key][:, n:] == fill).all(), key
    q = torch.arange(128)
    mask = kwargs["attention_mask"].mask_mod(torch.tensor(0), torch.tensor(0), q[:, None], q[None, :])
    assert torch.equal(mask[:n, :n], _expected_visibility()[0, 0]) and not mask[:n, n:].any()


def test_flatten_of_prefix_sharing_gives_each_branch_its_prompt_keys():
    """_batch() flattened, written out from the layout: row 0 is s0 = [1 2 | 3 4 5 | 3 6 7] (prompt head
    [1, 2], each branch led by the prompt's last token 3) then the plain s9 = [8 9 10 11]; row 1 is s1 =
    [1 | 2 3 | 2 4 5 6]. Query sequences: s0's prompt and chosen (0-5), s0's rejected (5-8), s9 (8-12),
    s1's prompt and chosen (12-15), s1's rejected (15-19). A rejected branch's keys are its prompt's then
    its own."""
    flat, varlen = attention.flatten(_batch())
    assert flat["input_ids"].tolist() == [[1, 2, 3, 4, 5, 3, 6, 7, 8, 9, 10, 11, 1, 2, 3, 2, 4, 5, 6]]
    assert varlen["cu_seq_lens_q"].tolist() == [0, 5, 8, 12, 15, 19]
    keys = [[0, 1, 2, 3, 4], [0, 1, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14], [12, 15, 16, 17, 18]]
    assert varlen["kv_index"].tolist() == [k for seq in keys for k in seq]
    assert varlen["cu_seq_lens_k"].tolist() == [0, 5, 10, 14, 17, 22]
    assert varlen["cu_seq_lens_k"].dtype == varlen["cu_seq_lens_q"].dtype == torch.int32
    assert (varlen["max_length_q"], varlen["max_length_k"]) == (5, 5)


def test_flatten_without_prefix_sharing_gathers_nothing():
    rows = [[plain_segment([1, 2], [3], 0, group=0), plain_segment([4], [5, 6], 1, group=1)]]
    _, varlen = attention.flatten(assemble(rows, pad_id=0, layout="packed"))
    assert "kv_index" not in varlen and varlen["cu_seq_lens_k"] is varlen["cu_seq_lens_q"]


def test_a_branch_whose_prompt_is_missing_is_an_error():
    with pytest.raises(ValueError, match="names prefix group 7, which no earlier run of its row has"):
        attention.varlen_sequences([(0, 3, 3, 0), (4, 8, 7, 0)], 6)


def test_the_prefix_gather_sums_both_branches_gradients():
    """with_prefix_keys hands the kernel [1, H, K, D] keys gathered by kv_index; the prompt's key and
    value gradients are the sums over every sequence that read them (here, key 0 read twice)."""
    seen = {}

    def kernel(module, query, key, value, attention_mask, **kwargs):
        seen.update(key=key, kwargs=kwargs)
        return (key * value).sum(), None

    key = torch.arange(12.0).reshape(1, 1, 3, 4).requires_grad_()
    value = torch.ones(1, 1, 3, 4, requires_grad=True)
    index = torch.tensor([0, 1, 0, 2])
    out, _ = attention.with_prefix_keys(kernel)(None, None, key, value, None, kv_index=index, scaling=0.5)
    out.backward()
    assert torch.equal(seen["key"], key.detach()[:, :, index]) and seen["kwargs"] == {"scaling": 0.5}
    assert value.grad[0, 0].sum(dim=1).tolist() == [2 * (0 + 1 + 2 + 3), 4 + 5 + 6 + 7, 8 + 9 + 10 + 11]
    assert key.grad[0, 0, :, 0].tolist() == [2.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------ the choice

# What each kernel can express, from the kernels' definitions (not mpo.attention's table): masks (dense
# or block) express anything; varlen kernels run each sequence causally on its own, and with separate
# key boundaries a prefix-shared branch is a sequence whose keys are [its prompt ; itself].
CAN_EXPRESS = {
    "sdpa": {"plain", "packed", "shared"},
    "eager": {"plain", "packed", "shared"},
    "flex_attention": {"plain", "packed", "shared"},
    # separate query and key boundaries: a shared branch's queries against [its prompt ; itself]
    "flash_attention_2": {"plain", "packed", "shared"},
    "flash_attention_4": {"plain", "packed", "shared"},
    "torch_varlen": {"plain", "packed", "shared"},
    "sdpa_varlen": {"plain", "packed", "shared"},
}
COMPILES = {"flex_attention"}  # a kernel compiled per shape: never auto
PLATFORMS = [
    Platform(cuda=c, flash_attn=c and f, flex_backward=c and x, torch_varlen=c and v, flash_attn_4=c and f4)
    for c, f, x, v, f4 in itertools.product([False, True], repeat=5)
]


@pytest.mark.parametrize("platform", PLATFORMS, ids=str)
@pytest.mark.parametrize("layout", ["plain", "packed", "shared"])
def test_auto_picks_an_exact_compile_free_kernel_that_runs_there(platform, layout):
    choice = choose_kernels("auto", layout, platform)
    assert layout in CAN_EXPRESS[choice.text] and choice.text not in COMPILES
    if not platform.cuda:  # flash cannot run (sdpa_varlen: by name only on the CPU)
        assert choice == KernelChoice("sdpa", "sdpa", choice.reason)
    elif platform.flash_attn:  # padding-free varlen in every layout, flash-attn's own kernel first
        assert choice == KernelChoice("flash_attention_2", "flash_attention_2", choice.reason)
    elif platform.flash_attn_4:  # FlashAttention-4, installed without a compiler, on Hopper or newer
        assert choice == KernelChoice("flash_attention_4", "sdpa", choice.reason)
    elif platform.torch_varlen:  # PyTorch's varlen FlashAttention-2 without the packages
        assert choice == KernelChoice("torch_varlen", "sdpa", choice.reason)
    else:  # no varlen flash kernel: sdpa once per sequence where a mask would be L x L
        assert choice.text == ("sdpa" if layout == "plain" else "sdpa_varlen")
    assert choice.reason.startswith("auto: ")


def test_explicit_kernels_that_cannot_run_are_refused():
    gpu = Platform(cuda=True, flash_attn=True, flex_backward=True)
    cpu = Platform(cuda=False, flash_attn=False, flex_backward=False)
    with pytest.raises(UserError, match="needs a CUDA GPU and the flash-attn package"):
        choose_kernels("flash_attention_2", "plain", cpu)
    with pytest.raises(UserError, match="flex_attention cannot train here"):
        choose_kernels("flex_attention", "shared", cpu)
    with pytest.raises(UserError, match="torch_varlen needs a CUDA GPU and torch >= 2.9"):
        choose_kernels("torch_varlen", "shared", cpu)
    with pytest.raises(UserError, match="flash_attention_4 needs a Hopper or newer CUDA GPU .* flash-attn-4"):
        choose_kernels("flash_attention_4", "shared", gpu)
    assert choose_kernels("sdpa_varlen", "shared", cpu).text == "sdpa_varlen"  # by name, on the CPU
    assert choose_kernels("flash_attention_2", "shared", gpu).text == "flash_attention_2"
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


def test_a_kernel_the_table_says_cannot_express_a_layout_is_refused_naming_the_others(monkeypatch):
    monkeypatch.setitem(attention.EXPRESSES, "sdpa_varlen", {"plain", "packed"})
    with pytest.raises(
        UserError, match="sdpa_varlen cannot compute the 'shared' layout exactly; choose one of eager, sdpa"
    ):
        choose_kernels("sdpa_varlen", "shared", Platform(False, False, False))


@pytest.mark.parametrize(
    "cuda, major, packages, expected",
    [
        (
            False,
            0,
            {"flash-attn", "flash-attn-4", "triton", "torch.nn.attention.varlen"},
            Platform(False, False, False),
        ),
        (True, 8, set(), Platform(True, False, False)),
        (True, 8, {"flash-attn"}, Platform(True, True, False)),
        (True, 8, {"flash-attn", "triton"}, Platform(True, True, True)),
        (True, 8, {"torch.nn.attention.varlen"}, Platform(True, False, False, torch_varlen=True)),
        # flash-attn-4 alone (its flash_attn/cute/ makes `flash_attn` importable): no FlashAttention-2;
        # FlashAttention-4 trains from Hopper (9.x) on
        (True, 8, {"flash-attn-4", "flash_attn"}, Platform(True, False, False)),
        (True, 9, {"flash-attn-4", "flash_attn"}, Platform(True, False, False, flash_attn_4=True)),
    ],
)
def test_platform_detection_fakes_device_and_packages(monkeypatch, cuda, major, packages, expected):
    import importlib.metadata
    import importlib.util

    def version(name):
        if name not in packages:
            raise importlib.metadata.PackageNotFoundError(name)
        return "1.0"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (major, 0))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in packages else None)
    monkeypatch.setattr(importlib.metadata, "version", version)
    assert Platform.detect() == expected


def test_load_model_logs_its_choice_and_the_trainer_refuses_an_inexact_model(
    tiny_model, mixed_meta, tmp_path, caplog, monkeypatch
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
    # a model whose kernel (here, by the table) cannot compute prefix sharing is refused by the trainer
    monkeypatch.setitem(attention.EXPRESSES, "sdpa", {"plain", "packed"})
    processor = load_processor(tiny_model)
    data, _ = load_mmpr(mixed_meta, processor)
    args = MPOConfig(
        output_dir=str(tmp_path), report_to=[], precompute_ref_log_probs=False, prefix_sharing=True
    )
    with pytest.raises(
        UserError, match="sdpa cannot compute the 'shared' layout exactly; choose one of eager"
    ):
        MPOTrainer(model, args=args, train_dataset=data, processing_class=processor)


# Three sequences of a flattened row: 3 queries on their own 3 keys, 1 query on 4 keys (a prefix-shared
# branch led by 3 prompt keys), 7 queries on 7 keys. 4 query heads read 2 key heads.
CU_Q = torch.tensor([0, 3, 4, 11], dtype=torch.int32)
CU_K = torch.tensor([0, 3, 7, 14], dtype=torch.int32)


def _qkv():
    torch.manual_seed(0)
    return torch.randn(1, 4, 11, 8), torch.randn(1, 2, 14, 8), torch.randn(1, 2, 14, 8)


def _varlen(**kw) -> dict:
    return dict(cu_seq_lens_q=CU_Q, cu_seq_lens_k=CU_K, max_length_q=7, max_length_k=7, **kw)


def test_torch_varlen_passes_pytorchs_kernel_the_sequences_and_grouped_heads(monkeypatch):
    """The adapter around PyTorch's varlen FlashAttention-2 (CUDA only), with a CPU stand-in of that kernel:
    [N, H, D] tensors, int32 boundaries, the causal window (-1, 0), grouped key heads and the scale reach
    it; its output comes back as [1, N, H, D]. The stand-in computes the hand-written attention of the
    conftest (bottom-right causal, FlashAttention's rule)."""
    import torch.nn.attention.varlen as varlen
    from conftest import _varlen_reference_attention

    from mpo.attention import torch_varlen_attention

    def stand_in(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), scale=None, enable_gqa=False):
        assert window_size == (-1, 0) and enable_gqa and cu_q.dtype == cu_k.dtype == torch.int32
        assert (max_q, max_k) == (7, 7)
        out, _ = _varlen_reference_attention(
            None,
            *(x.transpose(0, 1)[None] for x in (q, k, v)),
            None,
            scaling=scale,
            cu_seq_lens_q=cu_q,
            cu_seq_lens_k=cu_k,
        )
        return out[0]

    monkeypatch.setattr(varlen, "varlen_attn", stand_in)
    q, k, v = _qkv()
    out, weights = torch_varlen_attention(None, q, k, v, None, scaling=0.3, **_varlen())
    want, _ = _varlen_reference_attention(None, q, k, v, None, scaling=0.3, **_varlen())
    assert weights is None and out.shape == (1, 11, 4, 8)
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match="one flattened row and no mask"):
        torch_varlen_attention(None, q, k, v, torch.ones(1, 1, 11, 14), **_varlen())


def test_sdpa_varlen_is_softmax_attention_within_each_sequence_bottom_right():
    """sdpa_varlen against attention written out token by token: query t of sequence s sees key j of s
    when j <= t's place among the queries + (keys - queries of s); softmax(q.k * scale) times v; query head
    h reads key head h // 2."""
    from mpo.attention import sdpa_varlen_attention

    q, k, v = _qkv()
    out, weights = sdpa_varlen_attention(None, q, k, v, None, scaling=0.3, **_varlen())
    want = torch.empty(1, 11, 4, 8)
    for s in range(3):
        qs, ks = range(int(CU_Q[s]), int(CU_Q[s + 1])), range(int(CU_K[s]), int(CU_K[s + 1]))
        shift = len(ks) - len(qs)
        for i, t in enumerate(qs):
            seen = list(ks)[: i + shift + 1]
            for h in range(4):
                probs = torch.softmax(torch.stack([q[0, h, t] @ k[0, h // 2, j] * 0.3 for j in seen]), 0)
                want[0, t, h] = sum(p * v[0, h // 2, j] for p, j in zip(probs, seen, strict=True))
    assert weights is None and out.shape == (1, 11, 4, 8)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one flattened row and no mask"):
        sdpa_varlen_attention(None, q, k, v, torch.ones(1, 1, 11, 14), **_varlen())
