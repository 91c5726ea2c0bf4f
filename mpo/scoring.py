"""Sequence log-probs of a collated batch: the one scoring routine of training, evaluation and dashboards.

    log π(y | x) = Σ_t log π(y_t | x, y_<t)      summed over the response tokens of each scored sequence

A batch is any token layout of :mod:`mpo.data.layout` (plain rows, prefix sharing, packing) with its
per-token ``shift_labels`` (the token predicted at each position, -100 where nothing is scored) and
``logp_index`` (which sequence a scored position belongs to, -1 elsewhere), plus its images
(``pixel_values``, and ``feature_repeats`` > 1 when the vision tower runs once for several rows).
:func:`mpo.attention.model_inputs` gives the model's attention kernel its mask or flattened rows; TRL's
fused head (trl 1.16, :func:`trl.trainer.utils.add_fused_lm_head`) scores only the labelled positions,
in chunks, so no [rows, length, vocabulary] logits tensor is built; a scatter-add sums them per sequence.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from trl.trainer.utils import add_fused_lm_head

from mpo import attention
from mpo.fused_head import compact_lm_head


def scored_sequences(batch: dict) -> int:
    """How many sequences ``batch`` scores: ``num_sequences``, or two per pair of a preference batch."""
    return int(batch["num_sequences"]) if "num_sequences" in batch else 2 * int(batch["num_pairs"])


def with_fused_head(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with TRL's fused head computing log-probs only (trl 1.16's also computes entropy, mean
    logits and top-1 hits at every position for its own metrics), on the base model of a PEFT wrapper.
    TRL replaces a head it added before, so this may follow DPOTrainer's own."""
    add_fused_lm_head(
        model.get_base_model() if isinstance(model, PeftModel) else model, outputs=("log_probs",)
    )
    return model


def sequence_logps(
    model: torch.nn.Module, batch: dict, internvl: torch.nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs [S] and scored lengths [S] of the ``S`` sequences of ``batch``.

    ``model`` is what runs the forward (a DDP or DeepSpeed wrapper in training); ``internvl`` is the
    InternVL model inside it (default: ``model`` itself, or its PEFT base), whose dtype, attention kernel
    and vision tower are read. Its fused head must be added (:func:`with_fused_head`). For a preference
    batch, chosen of pair i is sequence 2i and rejected 2i + 1.
    """
    internvl = model if internvl is None else internvl
    internvl = internvl.get_base_model() if isinstance(internvl, PeftModel) else internvl
    batch, kwargs = attention.model_inputs(batch, attention.text_kernel(internvl), internvl.dtype)
    pixel_values = batch["pixel_values"]
    repeats = int(batch.get("feature_repeats", 1))
    if repeats > 1:  # vision tower once, its features for every row that shows the images
        features = internvl.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        features.pooler_output = features.pooler_output.repeat(repeats, 1, 1)
        kwargs["mm_encoder_outputs"] = {"image": features}
    else:
        kwargs["pixel_values"] = pixel_values
    with compact_lm_head():
        out = model(**kwargs, shift_labels=batch["shift_labels"], use_cache=False, fused_lm_head=True)
    index = batch["logp_index"]
    scored = index >= 0
    n = scored_sequences(batch)
    log_probs = out.log_probs[:, -index.size(1) :]
    logps = log_probs.new_zeros(n).index_add(0, index[scored], log_probs[scored])
    lengths = torch.bincount(index[scored], minlength=n)
    return logps, lengths
