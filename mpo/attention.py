"""Attention kernels: which one runs, and what each needs so that it computes the token layout exactly.

Every collated batch, preference (:mod:`mpo.data.layout`) or SFT (:mod:`mpo.data.sft_collator`), describes
its tokens with the same per-token tensors::

    input_ids      [R, L]
    position_ids   [R, L]   restart wherever a sequence (or a prefix-shared branch) restarts
    attention_mask [R, L]   1 on real tokens, 0 on padding
    attn_group     [R, L]   attention group of each token, unique in the batch; -1 on padding
    attn_prefix    [R, L]   a second group the token may also see (its segment's shared prompt);
                            equal to ``attn_group`` where there is none
    layout         str      "plain" (one sequence per row), "packed" (several per row) or "shared"
                            (prefix sharing: branches that see a common prefix but not each other)

and one visibility rule for all of them (:func:`visible`)::

    q sees k  <=>  (k <= q  and  group[k] >= 0  and  group[k] in {group[q], prefix[q]})  or  k = q

The second clause gives every padding query one key, so no row of the mask is empty. Padding never
feeds a real token, so it changes nothing that is scored.

What each kernel takes (transformers 5.24; :func:`model_inputs` builds it, in one place):

=====================  ==========================================================================
``sdpa``               boolean 4-D mask [R, 1, L, L], True = attend
``eager``              additive 4-D mask in the model's dtype: 0 = attend, dtype min = not.
                       ``eager_attention_forward`` ADDS the mask to the scores, so a boolean mask
                       would add 0/1 and hide nothing
``flex_attention``     a ``BlockMask`` of the same rule (``create_block_mask``); fully masked
                       blocks are skipped, no L x L tensor is built
``flash_attention_2``  no mask at all: rows are flattened into one padding-free row with position
                       ids restarting per sequence and explicit ``cu_seq_lens_q`` / ``cu_seq_lens_k``
                       (varlen flash-attention, :func:`flatten`). Prefix sharing: a pair's prompt
                       and chosen branch are one causal sequence; the rejected branch's queries see
                       the keys [prompt ; rejected], gathered by ``kv_index``
                       (:func:`with_prefix_keys`), causal aligned to the bottom right
``flash_attention_4``  the same flattened rows through FlashAttention-4 (the flash-attn-4 package:
                       pure Python, kernels built at first use, no compiler; backward on Hopper or
                       newer), transformers' own name, behind the same gather
``torch_varlen``       the same flattened rows through PyTorch's own varlen FlashAttention-2
                       (``torch.nn.attention.varlen``, torch >= 2.9, CUDA): padding-free training
                       on a GPU without the flash-attn package, registered with transformers here
``sdpa_varlen``        the same flattened rows, each sequence through sdpa on its own (any device;
                       registered here; bottom-right causal through ``causal_lower_right``). A packed
                       row's dense mask makes sdpa compute every query against every key of the row,
                       L^2, most of it masked; one call per sequence computes the sum of the
                       sequences' squares only. On the CPU (the tiny model's SFT stage 2: rows of
                       512 tokens, about 6 samples each) a training step took 28 % less on one
                       thread. Same rule, other float rounding (about 1e-7 apart); on the CPU asked
                       for by name only (see :func:`choose_kernels`)
=====================  ==========================================================================

Plain rows keep the 2-D padding mask under sdpa and eager (right padding plus the causal mask is exact,
and sdpa may then take its fused causal path); under flex they get the block mask of the rule too, since
transformers (5.24) compiles the block mask it would build from the 2-D mask. transformers' flash path
detects packing from position ids only when the batch has ONE row (``_is_packed_sequence``, transformers
5.24): with several rows it silently attends across the packed samples of a row, which is why flash
batches are flattened here rather than left to that detection.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass

import torch

from mpo.errors import UserError

logger = logging.getLogger(__name__)

TORCH_VARLEN = "torch_varlen"
SDPA_VARLEN = "sdpa_varlen"
FLASH_4 = "flash_attention_4"  # transformers' name for FlashAttention-4 (the flash-attn-4 package, CuTe DSL)
KERNELS = ("eager", "sdpa", "flex_attention", "flash_attention_2", FLASH_4, TORCH_VARLEN, SDPA_VARLEN)
LAYOUTS = ("plain", "packed", "shared")
VARLEN_KERNELS = {
    "flash_attention_2",
    FLASH_4,
    TORCH_VARLEN,
    SDPA_VARLEN,
}  # padding-free kernels that take cu_seq_lens instead of a mask

# Which layouts each kernel computes exactly (see the module docstring): every kernel, every layout.
# The table stays the one place to say otherwise, should a kernel that cannot be exact be added.
EXPRESSES: dict[str, set[str]] = {kernel: set(LAYOUTS) for kernel in KERNELS}


# ---------------------------------------------------------------------------------------- the rule


def visible(q_group, q_prefix, k_group, q_idx, k_idx):
    """Whether query ``q_idx`` sees key ``k_idx`` (tensors broadcast; also a flex ``mask_mod`` body)."""
    same = (k_group == q_group) | (k_group == q_prefix)
    return ((k_idx <= q_idx) & (k_group >= 0) & same) | (q_idx == k_idx)


def dense_mask(group: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """The rule as a boolean [R, 1, L, L] tensor (True = attend)."""
    idx = torch.arange(group.shape[1], device=group.device)
    allowed = visible(group[:, :, None], prefix[:, :, None], group[:, None, :], idx[:, None], idx[None, :])
    return allowed[:, None]


def additive_mask(group: torch.Tensor, prefix: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The rule as an additive [R, 1, L, L] mask in ``dtype``: 0 = attend, the dtype's minimum = not."""
    allowed = dense_mask(group, prefix)
    return torch.zeros(allowed.shape, dtype=dtype, device=group.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )


def flex_block_mask(group: torch.Tensor, prefix: torch.Tensor):
    """The rule as a flex-attention ``BlockMask`` over [R, L] tokens (heads broadcast)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return visible(group[b, q_idx], prefix[b, q_idx], group[b, kv_idx], q_idx, kv_idx)

    r, length = group.shape
    return create_block_mask(mask_mod, B=r, H=None, Q_LEN=length, KV_LEN=length, device=group.device)


def varlen_sequences(
    runs: list[tuple[int, int, int, int]], total: int
) -> list[tuple[int, int, tuple | None]]:
    """The query sequences of a flattened row and the detached prefix each one also sees.

    ``runs`` are the maximal runs of one attention group, in order, as ``(start, group, prefix, row)`` (the
    group and prefix group of the run's tokens, the batch row they came from); ``total`` is the number of
    tokens. A run whose prefix group is its own group starts a sequence; a run that directly follows the
    run of its prefix group continues that sequence (a shared prompt and its first branch are one causal
    sequence); any other run starts a sequence that also sees its prefix's tokens, ``(start, end)``.
    Returns ``(start, end, prefix span or None)`` per sequence.
    """
    spans: dict[tuple[int, int], tuple[int, int]] = {}
    out: list[tuple[int, int, tuple | None]] = []
    for i, (start, group, prefix, row) in enumerate(runs):
        end = runs[i + 1][0] if i + 1 < len(runs) else total
        spans[(row, group)] = (start, end)
        previous = runs[i - 1] if i else None
        if prefix == group:
            out.append((start, end, None))
        elif previous is not None and previous[3] == row and previous[1] == prefix:
            out[-1] = (out[-1][0], end, out[-1][2])
        elif (row, prefix) in spans:
            out.append((start, end, spans[(row, prefix)]))
        else:
            raise ValueError(
                f"attention group {group} names prefix group {prefix}, which no earlier run of its row has"
            )
    return out


def flatten(batch: dict) -> tuple[dict, dict]:
    """Padding-free varlen form: every [R, L] tensor of ``batch`` keeps its real tokens, row after row,
    as one [1, N] row; the returned kwargs describe its sequences as the varlen kernels take them::

        cu_seq_lens_q  [S+1] int32   query boundaries: S causal sequences of the N tokens
        cu_seq_lens_k  [S+1] int32   key boundaries, over the keys ``kv_index`` gathers (or the N tokens)
        max_length_q / max_length_k  int
        kv_index       [K] int64     only with prefix sharing: the keys of every sequence, as positions
                                     of the N tokens (a detached branch: its prompt's, then its own)

    Sequences come from :func:`varlen_sequences`. Under prefix sharing, a pair's prompt and its chosen
    branch are one causal sequence, and the rejected branch is a sequence of its own whose keys are
    [prompt ; rejected]: its queries are the last ones of those keys, so causality is aligned to the
    bottom right (query i of n sees key j of P + n when j <= i + P), flash-attention's rule when the
    query is shorter than the key. The prompt and its image tokens still run once; their keys and values
    are gathered for both branches, and the gather's backward sums both branches' gradients.
    """
    keep = batch["attention_mask"].bool()
    shape = batch["input_ids"].shape
    flat = {k: (v[keep][None] if torch.is_tensor(v) and v.shape == shape else v) for k, v in batch.items()}
    group, prefix = flat["attn_group"][0], flat["attn_prefix"][0]
    rows = torch.arange(shape[0], device=keep.device)[:, None].expand(shape)[keep]
    starts = torch.ones_like(group, dtype=torch.bool)
    starts[1:] = (group[1:] != group[:-1]) | (rows[1:] != rows[:-1])
    first = starts.nonzero()[:, 0]
    runs = torch.stack([first, group[first], prefix[first], rows[first]], dim=1).tolist()  # one device sync
    sequences = varlen_sequences([tuple(r) for r in runs], group.numel())
    del flat["attention_mask"]
    return flat, varlen_kwargs(sequences, group.device)


def varlen_kwargs(sequences: list[tuple[int, int, tuple | None]], device: torch.device) -> dict:
    """The varlen kwargs of :func:`flatten` for ``(start, end, prefix span)`` sequences."""
    bounds = [start for start, _, _ in sequences] + [sequences[-1][1]]
    cu_q = torch.tensor(bounds, dtype=torch.int32)
    longest_q = int(cu_q.diff().max())
    if all(span is None for _, _, span in sequences):
        cu = cu_q.to(device)
        return {
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest_q,
            "max_length_k": longest_q,
        }
    pieces = [
        piece for start, end, span in sequences for piece in ((span,) if span else ()) + ((start, end),)
    ]
    piece_start = torch.tensor([a for a, _ in pieces])
    piece_len = torch.tensor([b - a for a, b in pieces])
    piece_offset = torch.cumsum(piece_len, 0) - piece_len  # where each piece lands among the keys
    kv_index = torch.arange(int(piece_len.sum())) + torch.repeat_interleave(
        piece_start - piece_offset, piece_len
    )
    keys = [(span[1] - span[0] if span else 0) + end - start for start, end, span in sequences]
    cu_k = torch.tensor([0, *keys], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {
        "cu_seq_lens_q": cu_q.to(device),
        "cu_seq_lens_k": cu_k.to(device),
        "max_length_q": longest_q,
        "max_length_k": max(keys),
        "kv_index": kv_index.to(device),
    }


def model_inputs(batch: dict, kernel: str, dtype: torch.dtype) -> tuple[dict, dict]:
    """``(batch, kwargs)``: the batch's per-token tensors as the kernel sees them (flattened under
    varlen kernels, padded to :func:`flex_length` under flex), and the language-model inputs
    (``input_ids``, ``position_ids``, the kernel's ``attention_mask`` or varlen kwargs) to pass to the model."""
    layout = batch["layout"]
    check_layout(kernel, layout)
    if kernel in VARLEN_KERNELS:
        batch, varlen = flatten(batch)
        return batch, {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], **varlen}
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if kernel == "flex_attention":  # every layout: transformers' own block mask for plain rows compiles too
        batch = pad_to(batch, flex_length(batch["input_ids"].shape[1]))
        kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
        kwargs["attention_mask"] = flex_block_mask(batch["attn_group"], batch["attn_prefix"])
    elif layout == "plain":
        kwargs["attention_mask"] = batch["attention_mask"]
    elif kernel == "eager":
        kwargs["attention_mask"] = additive_mask(batch["attn_group"], batch["attn_prefix"], dtype)
    else:
        kwargs["attention_mask"] = dense_mask(batch["attn_group"], batch["attn_prefix"])
    return batch, kwargs


# ------------------------------------------------------------------------------ flex's compilations
#
# transformers (5.24) runs flex attention through one torch.compile of ``flex_attention``: every new
# row length may compile again, and past dynamo's recompile limit torch would run it uncompiled, building
# the L x L scores. Rows under flex are therefore padded to a few lengths, the limit covers all of them,
# and hitting it anyway is an error rather than a silent fallback (:func:`bound_flex_compilations`). The
# row count is a shape too: dynamo (torch 2.14, automatic dynamic shapes on by default) makes it dynamic
# after its first change; with static shapes each (rows, length) pair compiles once.

FLEX_MIN_LENGTH = 128  # flex's block size
FLEX_RECOMPILE_LIMIT = 64  # > the number of flex_length buckets up to 2^20 tokens (4 per doubling)
PAD_FILL = {"shift_labels": -100, "labels": -100, "logp_index": -1, "attn_group": -1, "attn_prefix": -1}


def flex_length(n: int) -> int:
    """``n`` tokens rounded up to one of four lengths per doubling (5/4, 6/4, 7/4, 8/4 of a power of two):
    at most 25 % padding, and about 4 log2(L_max / 128) row lengths, hence compilations, in a whole run."""
    if n <= FLEX_MIN_LENGTH:
        return FLEX_MIN_LENGTH
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step


def pad_to(batch: dict, length: int) -> dict:
    """``batch`` with every [R, L] tensor right-padded to ``length``: padding tokens see only themselves
    (group -1, mask 0) and are never scored (labels -100, index -1)."""
    shape = batch["input_ids"].shape
    extra = length - shape[1]
    if extra <= 0:
        return batch
    return {
        k: torch.nn.functional.pad(v, (0, extra), value=PAD_FILL.get(k, 0))
        if torch.is_tensor(v) and v.shape == shape
        else v
        for k, v in batch.items()
    }


def bound_flex_compilations() -> None:
    """Let dynamo compile every :func:`flex_length` bucket, and fail, never fall back to eager flex,
    past that (``torch._dynamo.config``, torch 2.14)."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, FLEX_RECOMPILE_LIMIT)
    config.fail_on_recompile_limit_hit = True


def compilations() -> int:
    """Graphs torch.compile has compiled in this process so far (dynamo's ``unique_graphs`` counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def text_kernel(model: torch.nn.Module) -> str:
    """The attention implementation of the (unwrapped) InternVL model's language model."""
    config = model.config
    return getattr(config, "text_config", config)._attn_implementation or "sdpa"


# ------------------------------------------------------------------------------------ the choice


def check_layout(kernel: str, layout: str) -> None:
    """Refuse a kernel that cannot compute ``layout`` exactly, saying what to change."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown token layout {layout!r}; expected one of {LAYOUTS}")
    if kernel in EXPRESSES and layout not in EXPRESSES[kernel]:
        raise UserError(
            f"attn_implementation {kernel} cannot compute the {layout!r} layout exactly; choose one of "
            f"{', '.join(k for k in KERNELS if layout in EXPRESSES[k])} or auto"
        )


@dataclass(frozen=True)
class Platform:
    """What the kernels need from the machine."""

    cuda: bool
    flash_attn: bool  # the flash-attn package (FlashAttention-2) is installed
    flex_backward: bool  # flex attention trains here (CUDA with triton; torch has no CPU backward for it)
    torch_varlen: bool = False  # torch ships varlen FlashAttention-2 (torch >= 2.9) and CUDA is here
    flash_attn_4: bool = False  # flash-attn-4 is installed and the GPU is Hopper or newer (its backward)

    @classmethod
    def detect(cls) -> Platform:
        cuda = torch.cuda.is_available()
        found = importlib.util.find_spec
        return cls(
            cuda=cuda,
            # by distribution, as transformers does: flash-attn-4 installs flash_attn/cute/ alone, which
            # makes a bare `flash_attn` namespace package importable without FlashAttention-2
            flash_attn=cuda and installed("flash-attn"),
            flex_backward=cuda and found("triton") is not None,
            torch_varlen=cuda and found("torch.nn.attention.varlen") is not None,
            flash_attn_4=cuda and installed("flash-attn-4") and torch.cuda.get_device_capability()[0] >= 9,
        )


def installed(distribution: str) -> bool:
    """Whether the Python distribution ``distribution`` (its PyPI name) is installed."""
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class KernelChoice:
    """Attention implementations of the language model and of the vision tower, and why."""

    text: str
    vision: str
    reason: str

    def for_transformers(self) -> dict[str, str]:
        """``attn_implementation`` for ``from_pretrained``: one kernel per sub-config."""
        return {"": self.text, "text_config": self.text, "vision_config": self.vision}

    def describe(self, layout: str) -> str:
        return f"attention: {self.text} for the language model ({layout} layout), {self.vision} for the vision tower: {self.reason}"


def layout_of(*, prefix_sharing: bool = False, packed: bool = False) -> str:
    """The layout name of a trainer's switches."""
    return "shared" if prefix_sharing else "packed" if packed else "plain"


def choose_kernels(requested: str, layout: str, platform: Platform, *, training: bool = True) -> KernelChoice:
    """The kernel for ``layout``: ``requested`` if it is exact for it and runs here, else an error;
    for ``auto`` the fastest exact kernel that compiles nothing:

    - CUDA + flash-attn: ``flash_attention_2``, padding-free varlen, every layout (prefix sharing
      through separate query and key boundaries, :func:`flatten`);
    - Hopper or newer + flash-attn-4 (no flash-attn): ``flash_attention_4``, the same rows;
    - CUDA without either: ``torch_varlen`` (PyTorch's varlen FlashAttention-2, torch >= 2.9);
    - CUDA without any of them: ``sdpa_varlen`` for packed and shared rows (sdpa once per sequence, no L x L
      mask), ``sdpa`` for plain rows;
    - the CPU: ``sdpa``.

    ``flex_attention`` runs only when asked for by name: it compiles, once per bucket of row lengths
    (:func:`flex_length`). ``sdpa_varlen``
    is not the CPU's ``auto`` even where it is faster: its other float rounding alone moved `make demo`
    (before 0997ae3) from +6.2 points of MPO gain (McNemar p = 0.0013) to +3.0 (p = 0.13), so switching
    the CPU default changes every CPU run's numbers and is a recipe decision, not a kernel choice.

    The vision tower has no mask: flash-attn when it runs here, else sdpa (or eager when asked).
    """
    if requested in KERNELS:
        check_layout(requested, layout)
    vision = "flash_attention_2" if platform.flash_attn else "sdpa"
    if requested == "auto":
        return _auto(layout, platform, vision)
    if requested not in KERNELS:
        raise UserError(
            f"attn_implementation must be 'auto' or one of {', '.join(KERNELS)}, got {requested!r}"
        )
    if requested == "flash_attention_2" and not platform.flash_attn:
        raise UserError(
            "attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn package "
            "(pip install 'internvl-mpo[flash]'); use auto or sdpa here"
        )
    if requested == FLASH_4 and not platform.flash_attn_4:
        raise UserError(
            f"attn_implementation {FLASH_4} needs a Hopper or newer CUDA GPU (its backward) and the flash-attn-4 "
            "package (pip install --pre flash-attn-4; no compiler needed); use auto here"
        )
    if requested == TORCH_VARLEN and not platform.torch_varlen:
        raise UserError(
            f"attn_implementation {TORCH_VARLEN} needs a CUDA GPU and torch >= 2.9 "
            f"(torch.nn.attention.varlen; this is torch {torch.__version__}); use auto or sdpa here"
        )
    if requested == "flex_attention" and training and not platform.flex_backward:
        raise UserError(
            f"attn_implementation flex_attention cannot train here: torch {torch.__version__} has no "
            "flex-attention backward on the CPU. Use sdpa, eager or auto to train on the CPU"
        )
    if requested in ("eager", "sdpa"):
        vision = requested
    return KernelChoice(requested, vision, "requested")


def kernel_help() -> str:
    """The ``attn_implementation`` help of every config that takes one, from :func:`choose_kernels`."""
    return (
        "'auto' = the fastest exact kernel that compiles nothing (mpo.attention.choose_kernels): "
        "flash_attention_2 on a GPU with flash-attn, else flash_attention_4 with flash-attn-4 on Hopper or newer, "
        "else torch_varlen (PyTorch's varlen FlashAttention-2), "
        "padding-free in every layout, prefix sharing included; sdpa on the CPU. Or one of "
        f"{', '.join(KERNELS)} (sdpa_varlen: sdpa once per sequence, any device; flex_attention compiles once "
        "per bucket of row lengths). A kernel that cannot compute the layout exactly or cannot run here is an error."
    )


def _auto(layout: str, platform: Platform, vision: str) -> KernelChoice:
    """``auto`` of :func:`choose_kernels`."""
    if platform.flash_attn:
        return KernelChoice(
            "flash_attention_2",
            vision,
            f"auto: CUDA with flash-attn, padding-free varlen, exact for {layout} rows",
        )
    if platform.flash_attn_4:
        return KernelChoice(
            FLASH_4,
            vision,
            f"auto: Hopper or newer with flash-attn-4, padding-free varlen, exact for {layout} rows",
        )
    if platform.torch_varlen:
        return KernelChoice(
            TORCH_VARLEN,
            vision,
            f"auto: CUDA without flash-attn, PyTorch's varlen FlashAttention-2, exact for {layout} rows",
        )
    if platform.cuda:
        kernel = "sdpa" if layout == "plain" else SDPA_VARLEN
        return KernelChoice(
            kernel,
            vision,
            f"auto: CUDA without a varlen flash kernel, {kernel} for {layout} rows compiles nothing",
        )
    return KernelChoice(
        "sdpa",
        vision,
        "auto: CPU, sdpa takes the layout's mask; flex has no CPU backward, flash-attn needs CUDA",
    )


# ---------------------------------------------------------------------------- the varlen kernels
#
# Each varlen kernel takes one flattened row (query [1, H, N, D]) and keys / values already gathered per
# sequence (key [1, H_kv, K, D]), and computes every sequence of ``cu_seq_lens_q`` against its keys of
# ``cu_seq_lens_k``, causally aligned to the bottom right. :func:`with_prefix_keys` does the gather.


def with_prefix_keys(kernel):
    """``kernel`` (a transformers attention function over varlen kwargs) behind the gather of
    :func:`flatten`'s ``kv_index``: key / value [1, H_kv, N, D] -> [1, H_kv, K, D]. Without ``kv_index``
    (plain and packed rows) the kernel gets its arguments untouched."""

    def attend(module, query, key, value, attention_mask, *args, **kwargs):
        index = kwargs.pop("kv_index", None)
        if index is not None:
            key, value = key.index_select(2, index), value.index_select(2, index)
        return kernel(module, query, key, value, attention_mask, *args, **kwargs)

    attend.__name__ = attend.__qualname__ = f"{getattr(kernel, '__name__', 'kernel')}_with_prefix_keys"
    attend.__doc__ = kernel.__doc__
    return attend


def _one_row(name: str, query: torch.Tensor, attention_mask) -> None:
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f"{name} takes one flattened row and no mask (mpo.attention.model_inputs)")


def torch_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface over ``torch.nn.attention.varlen.varlen_attn`` (PyTorch's
    FlashAttention-2): query [1, H, N, D], key / value [1, H_kv, K, D] -> ([1, N, H, D], None). Its causal
    window (-1, 0) is FlashAttention's, aligned to the bottom right when a sequence has more keys than
    queries."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    _one_row(TORCH_VARLEN, query, attention_mask)
    params = inspect.signature(varlen_attn).parameters
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
    extra = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}  # older / newer torch
    if query.shape[1] != key.shape[1]:  # grouped-query attention: each key head serves H / H_kv heads
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:  # torch before enable_gqa (2.9): repeat the key heads
            groups = query.shape[1] // key.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if scaling is not None and "scale" in params:
        extra["scale"] = scaling
    out = varlen_attn(
        q,
        k,
        v,
        kwargs["cu_seq_lens_q"].to(torch.int32),
        kwargs["cu_seq_lens_k"].to(torch.int32),
        int(kwargs["max_length_q"]),
        int(kwargs["max_length_k"]),
        **extra,
    )
    return out.unsqueeze(0), None


def sdpa_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface, one flattened row (query [1, H, N, D], key / value
    [1, H_kv, K, D]) -> ([1, N, H, D], None): each sequence through ``scaled_dot_product_attention`` on
    its own, query head h reading key head h // (H / H_kv). A sequence with as many keys as queries takes
    sdpa's causal path; one with more keys (a prefix-shared branch) takes torch's lower-right causal bias
    (``causal_lower_right``: query i of n sees key j of m when j <= i + m - n), which sdpa's fused CUDA
    kernels take without building the mask."""
    from torch.nn.attention.bias import causal_lower_right

    _one_row(SDPA_VARLEN, query, attention_mask)
    sizes_q = kwargs["cu_seq_lens_q"].diff().tolist()
    sizes_k = kwargs["cu_seq_lens_k"].diff().tolist()
    grouped = query.shape[1] != key.shape[1]
    pieces = []
    # split, not slices: its backward is one concatenation, where each slice's would fill a whole-row zero tensor
    for q, k, v in zip(query.split(sizes_q, 2), key.split(sizes_k, 2), value.split(sizes_k, 2), strict=True):
        n, m = q.shape[2], k.shape[2]
        causal = {"is_causal": True} if n == m else {"attn_mask": causal_lower_right(n, m)}
        pieces.append(
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, scale=scaling, enable_gqa=grouped, **causal
            )
        )
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def register_kernels() -> None:
    """Make ``torch_varlen`` and ``sdpa_varlen`` ``attn_implementation``s transformers knows, and put
    ``flash_attention_2`` and ``flash_attention_4`` behind the prefix-key gather (idempotent). transformers 5.24's own
    ``flash_attention_forward`` takes separate ``cu_seq_lens_k`` but has no way to gather keys; without
    ``kv_index`` it runs unchanged."""
    from transformers import AttentionInterface
    from transformers.integrations.flash_attention import flash_attention_forward

    for name, kernel in (
        (TORCH_VARLEN, torch_varlen_attention),
        (SDPA_VARLEN, sdpa_varlen_attention),
        ("flash_attention_2", flash_attention_forward),
        (FLASH_4, flash_attention_forward),
    ):
        AttentionInterface.register(name, with_prefix_keys(kernel))
