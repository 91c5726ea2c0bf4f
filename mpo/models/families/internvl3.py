"""InternVL3, as transformers' ``-hf`` checkpoints load it (``InternVLForConditionalGeneration``).

The architecture is InternVL2.5's: InternViT-300M-448px-V2_5 (1B-14B) or InternViT-6B-448px-V2_5
(38B, 78B) -> pixel unshuffle 0.5 -> MLP projector -> a Qwen2.5 LLM. What differs, and where it is read:

- LLM: Qwen2.5 at every size converted here (1B 0.5B, 2B 1.5B, 8B 7B, 14B 14B, 38B 32B, 78B 72B);
  the 9B's InternLM3 is not supported (transformers' ``convert_internvl_weights_to_hf.py``, its
  ``LM_TYPE_CORRESPONDENCE``), so conversion accepts only ``Qwen2ForCausalLM``;
- template: upstream trains and chats with the ``internvl2_5`` conversation template, system message
  included (``internvl_chat/shell/internvl3.0/mpo/internvl3_*_mpo.sh``: ``--conv_style "internvl2_5"``),
  so the template is InternVL2.5's. The published ``-hf`` checkpoints' own ``chat_template`` has no
  system message (transformers' converter writes a template without one); this project renders prompts
  itself, with the message upstream trained with, and writes this template into the checkpoints it builds;
- tokens, tiling (448 px, 1-12 tiles + thumbnail, 256 tokens per tile) and part names: as InternVL2.5
  (``--force_image_size 448 --down_sample_ratio 0.5 --dynamic_image_size True --use_thumbnail True``);
- V2PE (variable visual position encoding, used in InternVL3's pre-training) is not part of the ``-hf``
  model, so positions are the usual 0, 1, 2, ... as for InternVL2.5;
- MPO settings: ``recipes/internvl3/`` (lr 2e-7, max length 12288, sigmoid 0.8 + bco_pair 0.2 + SFT 1).
"""

from __future__ import annotations

from dataclasses import replace

from mpo.models.families import internvl2_5
from mpo.models.families.base import Conversion, Family

FAMILY: Family = replace(
    internvl2_5.FAMILY,
    name="internvl3",
    title="InternVL3",
    conversion=Conversion(
        llm_architectures={"Qwen2ForCausalLM": "qwen2"},
        original_template="internvl2_5",
        original_names="OpenGVLab/InternVL3-*",
    ),
    tiny_llms=("qwen2",),
    recipes="internvl3",
)
