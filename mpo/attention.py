"""Attention kernels: which one runs, and what each needs so that it computes the token layout exactly.

Every collated batch, preference (:mod:`mpo.data.layout`) or SFT (:mod:`mpo.data.sft_data`), describes
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
                       ids restarting per sequence and explicit ``cu_seq_lens_*`` (varlen
                       flash-attention). Varlen runs each sequence causally on its own, so it
                       expresses "plain" and "packed" but not "shared": a branch that must see the
                       prompt but not its sibling is no contiguous causal sequence
``torch_varlen``       the same flattened rows through PyTorch's own varlen FlashAttention-2
                       (``torch.nn.attention.varlen``, torch >= 2.9, CUDA): padding-free training
                       on a GPU without the flash-attn package, registered with transformers here
``sdpa_varlen``        the same flattened rows, each sequence through sdpa's causal path on its own
                       (any device; registered here). A packed row's dense mask makes sdpa compute
                       every query against every key of the row, L^2, most of it masked; one call per
                       sequence computes the sum of the sequences' squares only. On the CPU (the tiny
                       model's SFT stage 2: rows of 512 tokens, about 6 samples each) a training step
                       took 28 % less on one thread. Same rule, other float rounding (about 1e-7
                       apart); asked for by name only (see :func:`choose_kernels`)
=====================  ==========================================================================

Plain rows keep the 2-D padding mask under sdpa / eager / flex (right padding plus the causal mask is
exact, and sdpa may then take its fused causal path). transformers' flash path detects packing from
position ids only when the batch has ONE row (``_is_packed_sequence``, transformers 5.24): with
several rows it silently attends across the packed samples of a row, which is why flash batches are
flattened here rather than left to that detection.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch

from mpo.errors import UserError

logger = logging.getLogger(__name__)

TORCH_VARLEN = "torch_varlen"
SDPA_VARLEN = "sdpa_varlen"
KERNELS = ("eager", "sdpa", "flex_attention", "flash_attention_2", TORCH_VARLEN, SDPA_VARLEN)
LAYOUTS = ("plain", "packed", "shared")
VARLEN_KERNELS = {
    "flash_attention_2",
    TORCH_VARLEN,
    SDPA_VARLEN,
}  # padding-free kernels that take cu_seq_lens instead of a mask

# Which layouts each kernel computes exactly (see the module docstring).
EXPRESSES: dict[str, set[str]] = {
    "eager": {"plain", "packed", "shared"},
    "sdpa": {"plain", "packed", "shared"},
    "flex_attention": {"plain", "packed", "shared"},
    "flash_attention_2": {"plain", "packed"},
    TORCH_VARLEN: {"plain", "packed"},
    SDPA_VARLEN: {"plain", "packed"},
}


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


def flatten(batch: dict) -> tuple[dict, dict]:
    """Padding-free varlen form: every [R, L] tensor of ``batch`` keeps its real tokens, row after row,
    as one [1, N] row; the returned kwargs give the sequence boundaries (``cu_seq_lens_q/k`` [S+1] int32,
    ``max_length_q/k``) as transformers' flash path takes them. A sequence is a maximal run of one
    ``attn_group`` inside a row."""
    keep = batch["attention_mask"].bool()
    shape = batch["input_ids"].shape
    flat = {k: (v[keep][None] if torch.is_tensor(v) and v.shape == shape else v) for k, v in batch.items()}
    group = flat["attn_group"][0]
    rows = torch.arange(shape[0], device=keep.device)[:, None].expand(shape)[keep]
    starts = torch.ones_like(group, dtype=torch.bool)
    starts[1:] = (group[1:] != group[:-1]) | (rows[1:] != rows[:-1])
    bounds = torch.cat([starts.nonzero()[:, 0], torch.tensor([group.numel()], device=group.device)])
    cu = bounds.to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    del flat["attention_mask"]
    return flat, {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def model_inputs(batch: dict, kernel: str, dtype: torch.dtype) -> tuple[dict, dict]:
    """``(batch, kwargs)``: the batch's per-token tensors as the kernel sees them (flattened under
    varlen kernels), and the language-model inputs (``input_ids``, ``position_ids``, the kernel's
    ``attention_mask`` or varlen kwargs) to pass to the model."""
    layout = batch["layout"]
    check_layout(kernel, layout)
    if kernel in VARLEN_KERNELS:
        batch, varlen = flatten(batch)
        return batch, {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], **varlen}
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if layout == "plain":
        kwargs["attention_mask"] = batch["attention_mask"]
    elif kernel == "flex_attention":
        kwargs["attention_mask"] = flex_block_mask(batch["attn_group"], batch["attn_prefix"])
    elif kernel == "eager":
        kwargs["attention_mask"] = additive_mask(batch["attn_group"], batch["attn_prefix"], dtype)
    else:
        kwargs["attention_mask"] = dense_mask(batch["attn_group"], batch["attn_prefix"])
    return batch, kwargs


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
            f"attn_implementation {kernel} cannot compute the {layout!r} layout exactly: varlen flash-attention "
            "runs each sequence on its own, and prefix sharing needs branches that see the prompt but not each "
            "other. Set attn_implementation: flex_attention (block-sparse), sdpa or auto, or prefix_sharing: false."
        )


@dataclass(frozen=True)
class Platform:
    """What the kernels need from the machine."""

    cuda: bool
    flash_attn: bool  # the flash-attn package imports
    flex_backward: bool  # flex attention trains here (CUDA with triton; torch has no CPU backward for it)
    torch_varlen: bool = False  # torch ships varlen FlashAttention-2 (torch >= 2.9) and CUDA is here

    @classmethod
    def detect(cls) -> Platform:
        cuda = torch.cuda.is_available()
        found = importlib.util.find_spec
        return cls(
            cuda=cuda,
            flash_attn=cuda and found("flash_attn") is not None,
            flex_backward=cuda and found("triton") is not None,
            torch_varlen=cuda and found("torch.nn.attention.varlen") is not None,
        )


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
    for ``auto`` the fastest exact one:

    - CUDA + flash-attn, plain or packed: ``flash_attention_2``, padding-free varlen;
    - CUDA without flash-attn, plain or packed: ``torch_varlen`` (PyTorch's varlen FlashAttention-2);
    - CUDA, a block-mask layout (packed without flash-attn, shared): ``flex_attention``, whose block
      mask skips what no query sees (``sdpa`` with a dense mask where flex cannot train);
    - otherwise ``sdpa`` (the CPU: flex has no CPU backward, flash-attn needs CUDA).

    ``sdpa_varlen`` is faster than ``sdpa`` for packed rows on the CPU but is not picked by ``auto``: its
    other float rounding alone moved `make demo` (before 0997ae3) from +6.2 points of MPO gain (McNemar
    p = 0.0013) to +3.0 (p = 0.13), so switching the CPU default changes every packed CPU run's numbers and
    is a recipe decision, not a kernel choice.

    The vision tower has no mask: flash-attn when it runs here, else sdpa (or eager when asked).
    """
    if requested in KERNELS:
        check_layout(requested, layout)
    vision = "flash_attention_2" if platform.flash_attn else "sdpa"
    if requested == "auto":
        if platform.flash_attn and layout in EXPRESSES["flash_attention_2"]:
            return KernelChoice(
                "flash_attention_2",
                vision,
                f"auto: CUDA with flash-attn, padding-free varlen is exact for {layout} rows",
            )
        if platform.torch_varlen and layout in EXPRESSES[TORCH_VARLEN]:
            return KernelChoice(
                TORCH_VARLEN,
                vision,
                "auto: CUDA without flash-attn, PyTorch's varlen "
                f"FlashAttention-2 is exact for {layout} rows",
            )
        if platform.cuda and layout != "plain" and platform.flex_backward:
            return KernelChoice(
                "flex_attention",
                vision,
                "auto: CUDA, the layout needs a block mask; flex skips "
                "the blocks no query sees" + ("" if platform.flash_attn else " (no flash-attn)"),
            )
        where = "CUDA" if platform.cuda else "CPU"
        return KernelChoice(
            "sdpa",
            vision,
            f"auto: {where}, sdpa takes the layout's mask"
            + ("" if platform.cuda else "; flex has no CPU backward, flash-attn needs CUDA"),
        )
    if requested not in KERNELS:
        raise UserError(
            f"attn_implementation must be 'auto' or one of {', '.join(KERNELS)}, got {requested!r}"
        )
    if requested == "flash_attention_2" and not platform.flash_attn:
        raise UserError(
            "attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn package "
            "(pip install 'internvl-mpo[flash]'); use auto or sdpa here"
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


# ------------------------------------------------------------------- PyTorch's varlen kernel


def torch_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface over ``torch.nn.attention.varlen.varlen_attn``: query [1, H, N, D],
    key / value [1, H_kv, N, D] of one flattened row -> ([1, N, H, D], None), causal within each sequence
    of ``cu_seq_lens_q`` (:func:`flatten`)."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f"{TORCH_VARLEN} takes one flattened row and no mask (mpo.attention.model_inputs)")
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each key head serves `groups` heads
    q = query[0].transpose(0, 1)
    k = key[0].repeat_interleave(groups, dim=0).transpose(0, 1)
    v = value[0].repeat_interleave(groups, dim=0).transpose(0, 1)
    params = inspect.signature(varlen_attn).parameters
    extra = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}  # older / newer torch
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
    """transformers' attention interface, one flattened row (query [1, H, N, D], key / value [1, H_kv, N, D])
    -> ([1, N, H, D], None): each sequence of ``cu_seq_lens_q`` (:func:`flatten`) through
    ``scaled_dot_product_attention`` with its causal mask alone, query head h reading key head
    h // (H / H_kv)."""
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f"{SDPA_VARLEN} takes one flattened row and no mask (mpo.attention.model_inputs)")
    sizes = kwargs["cu_seq_lens_q"].diff().tolist()
    grouped = query.shape[1] != key.shape[1]
    # split, not slices: its backward is one concatenation, where each slice's would fill a whole-row zero tensor
    pieces = [
        torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=grouped
        )
        for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2), strict=True)
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def register_kernels() -> None:
    """Make ``torch_varlen`` and ``sdpa_varlen`` ``attn_implementation``s transformers knows (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(TORCH_VARLEN, torch_varlen_attention)
    AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention)
