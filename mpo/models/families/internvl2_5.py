"""InternVL2.5: InternViT -> pixel unshuffle 0.5 -> MLP projector -> Qwen2.5 or InternLM2.5 LLM.

Facts and their sources (OpenGVLab/InternVL, ``internvl_chat``):

- template: ChatML with a fixed Chinese system message, upstream's ``internvl2_5`` conversation template
  (``internvl/conversation.py``), which the original config.json names in ``template``;
- tokens: ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` and the grounding tokens, added to the LLM's tokenizer
  (``internvl/train/constants.py``);
- tiling: 448 px tiles of 14 px patches, 1 to 12 tiles plus a thumbnail, pixel unshuffle 0.5, so 256 image
  tokens per tile (``force_image_size``, ``max_dynamic_patch``, ``downsample_ratio`` of the configs);
- parts: transformers' ``InternVLForConditionalGeneration`` names;
- conversion: Qwen2 names for the Qwen2.5 LLMs (1B, 4B, 38B, 78B), InternLM2 names for the InternLM2.5
  LLMs (2B, 8B, 26B), which map onto Llama.
"""

from __future__ import annotations

from mpo.models.families.base import ChatTemplate, Conversion, Family, Parts, Tiling, Tokens

SYSTEM_MESSAGE = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

TOKENS = Tokens(
    img_start="<img>",
    img_end="</img>",
    img_context="<IMG_CONTEXT>",
    video="<video>",
    turn_start="<|im_start|>",
    turn_end="<|im_end|>",
    pad="<|endoftext|>",
    extra=("<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"),
)

PARTS = Parts(
    prefixes={
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "llm": ("model.language_model.", "lm_head."),
    },
    vision_layers="model.vision_tower.encoder.layer",
)

FAMILY = Family(
    name="internvl2_5",
    title="InternVL2.5",
    template=ChatTemplate(
        system_message=SYSTEM_MESSAGE,
        turn_start=TOKENS.turn_start,
        turn_end=TOKENS.turn_end,
        image_item=TOKENS.img_context + "\n",
        video_item=TOKENS.video + "\n",
    ),
    tokens=TOKENS,
    tiling=Tiling(tile_size=448, patch_size=14, downsample_ratio=0.5, min_tiles=1, max_tiles=12),
    parts=PARTS,
    conversion=Conversion(
        llm_architectures={"Qwen2ForCausalLM": "qwen2", "InternLM2ForCausalLM": "internlm2"},
        original_template="internvl2_5",
        original_names="OpenGVLab/InternVL2_5-*",
    ),
    tiny_llms=("qwen2", "llama"),
    recipes="internvl2_5",
)
