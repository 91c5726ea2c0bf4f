"""The embedded default model: a tiny InternVL-architecture model that trains on 2 CPU cores.

Same shape as the family's models (InternViT -> pixel unshuffle 0.5 -> LayerNorm/MLP projector -> a Qwen2
or Llama LLM; InternVL3: Qwen2 only, as its Qwen2.5 LLMs), scaled down: 64 px tiles of 8 px patches give
64 patches, 16 image tokens per tile after pixel unshuffle. The tokenizer is a byte-level BPE trained
here, on text written below, with the family's special tokens and chat template; config.json records
the family (``mpo_family``). Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from mpo.models import families
from mpo.models.families.base import Family, tokens_per_tile
from mpo.models.native_files import internvl_processor

TILE_SIZE = 64
PATCH_SIZE = 8
MAX_TILES = 6
VOCAB_SIZE = 1024

# Text the tokenizer learns its merges from: the words of visual question answering, counting,
# chain-of-thought answers and the system message. Anything else still encodes (byte fallback).
_CORPUS = [
    "What is the colour of the shape? What color is the object in the image? Answer with a single word.",
    "How many shapes are there in the image? Count the objects. There are 0 1 2 3 4 5 6 7 8 9 10 shapes.",
    "Which shape is on the left? Which one is on the right, top, bottom, above, below, in the middle?",
    "Is the circle bigger than the square? Is there a triangle? Yes, no. Yes. No.",
    "red green blue yellow purple orange white black gray grey pink brown cyan magenta",
    "circle square triangle star cross diamond rectangle ellipse shape shapes object objects",
    "Answer with the option's letter from the given choices directly. A. B. C. D. Options: (A) (B) (C) (D)",
    "Answer the question using a single word or phrase. Please answer yes or no.",
    "Let's think step by step. First, I look at the image. I can see a red circle and a blue square.",
    "The image shows several coloured shapes on a plain background, so the answer is the number of them.",
    "Final answer: the answer is. Final answer: A Final answer: 3 Final answer: red Final answer: yes",
    "Your task is to answer the question below. Give step by step reasoning before you answer, and when "
    'you\'re ready to answer, please use the format "Final answer: .."',
    "Question: Hint: Please answer the question and provide the correct option letter at the end.",
    "larger smaller more fewer than the same as different most least total number sum of colour color",
    "Frame1: Frame2: Frame3: Frame4: Image-1: Image-2: Image-3: the first second third image video",
]


def train_tokenizer(
    vocab_size: int = VOCAB_SIZE, family: Family = families.UNMARKED
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (as in Qwen2) with the family's special tokens and chat template, its
    merges learnt from the corpus above and the family's system message."""
    tokens = family.tokens
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(tokens.all),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([family.template.system_message or "", *_CORPUS] * 8, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=tokens.turn_end,
        pad_token=tokens.pad,
        bos_token=None,
        padding_side="left",
        chat_template=family.template.jinja(),
        model_max_length=32768,
        extra_special_tokens={
            "start_image_token": tokens.img_start,
            "end_image_token": tokens.img_end,
            "context_image_token": tokens.img_context,
            "video_token": tokens.video,
        },
    )


def widen_vocabulary(tokenizer: PreTrainedTokenizerFast, size: int) -> PreTrainedTokenizerFast:
    """The same tokenizer with ``size`` entries: filler words `` w<id>`` fill the ids it did not have.

    Encoding is unchanged (no merge produces a filler); decoding any id below ``size`` gives text. A model
    built at a real vocabulary size (e.g. 151674) then generates words, never unknown ids.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in state["added_tokens"]}
    vocab.update({f"\u0120w{i}": i for i in range(size) if i not in taken})  # \u0120: byte-level space
    widened = Tokenizer.from_str(json.dumps(state))
    if widened.get_vocab_size() != size:
        raise ValueError(f"widened vocabulary has {widened.get_vocab_size()} entries, expected {size}")
    return PreTrainedTokenizerFast(tokenizer_object=widened, **tokenizer.init_kwargs)


TINY_VISION = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    image_size=TILE_SIZE,
    patch_size=PATCH_SIZE,
    norm_type="layer_norm",
    use_qk_norm=False,
    layer_scale_init_value=0.1,
    use_mean_pooling=True,
    hidden_act="gelu",
)
TINY_TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    tie_word_embeddings=False,
)


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    llm: str = "qwen2",
    *,
    vision: dict | None = None,
    text: dict | None = None,
    vocab_size: int | None = None,
    family: Family = families.UNMARKED,
) -> InternVLConfig:
    """The tiny config of ``family``: InternViT-300M-style vision tower, an LLM of ``family.tiny_llms``.

    ``vision`` / ``text`` override fields of the tiny widths (e.g. the real InternVL2.5-1B widths, see
    benchmarks/gpu_check.py); tokens per tile follow from image size, patch size and the 0.5 unshuffle.
    """
    if llm not in family.tiny_llms:
        raise ValueError(f"unknown llm {llm!r} for {family.title}: expected {' or '.join(family.tiny_llms)}")
    vision = {**TINY_VISION, **(vision or {})}
    tokens = family.tokens
    text_kwargs = dict(
        TINY_TEXT,
        **(text or {}),
        vocab_size=vocab_size or len(tokenizer),
        eos_token_id=tokenizer.convert_tokens_to_ids(tokens.turn_end),
        pad_token_id=tokenizer.convert_tokens_to_ids(tokens.pad),
    )
    text_config = (Qwen2Config if llm == "qwen2" else LlamaConfig)(**text_kwargs)
    return InternVLConfig(
        vision_config=vision,
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(tokens.img_context),
        image_seq_length=tokens_per_tile(vision["image_size"], vision["patch_size"]),
        **{families.FAMILY_KEY: family.name},
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=text_config.tie_word_embeddings,
    )


TOKENS_PER_TILE = tokens_per_tile(TILE_SIZE, PATCH_SIZE)  # 16


def tiny_processor(
    tokenizer: PreTrainedTokenizerFast,
    tile: int = TILE_SIZE,
    patch: int = PATCH_SIZE,
    max_tiles: int = MAX_TILES,
    family: Family = families.UNMARKED,
) -> InternVLProcessor:
    """Dynamic tiling (up to ``max_tiles`` tiles of ``tile`` px + thumbnail) with ImageNet normalisation,
    and the family's template."""
    return internvl_processor(tokenizer, tile, 1, max_tiles, tokens_per_tile(tile, patch), family)


def wider_text(hidden_size: int) -> dict:
    """Text overrides of a tiny LLM of width ``hidden_size``: the MLP stays 2x as wide, the heads keep their
    number (so their width scales). The progressive-scaling demo moves a ViT into such a wider LLM."""
    heads = TINY_TEXT["num_attention_heads"]
    if hidden_size <= 0 or hidden_size % heads:
        raise ValueError(f"text hidden size {hidden_size} is not a positive multiple of {heads} heads")
    return dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size)


def build_tiny_model(
    out: str | Path, llm: str = "qwen2", seed: int = 0, text: dict | None = None, family: str = "internvl2_5"
) -> Path:
    """Write the tiny model of ``family``, its tokenizer and processor to ``out``; same seed (and ``text``
    overrides of the LLM, e.g. :func:`wider_text`), same weights. The tokenizer is the same for every LLM."""
    out = Path(out)
    model_family = families.get(family)
    tokenizer = train_tokenizer(family=model_family)
    config = tiny_config(tokenizer, llm, text=text, family=model_family)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(out)
    tiny_processor(tokenizer, family=model_family).save_pretrained(out)
    return out
