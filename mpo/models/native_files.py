"""The files besides the weights that make a native InternVL checkpoint usable.

A converted checkpoint needs a fast tokenizer (``tokenizer.json``), its family's chat template, an
``InternVLProcessor`` with the checkpoint's tiling and a ``generation_config.json`` that stops at the end
of a turn. Published original-layout checkpoints ship slow-tokenizer files instead: Qwen2's byte-level
BPE ``vocab.json`` + ``merges.txt``, or InternLM2's sentencepiece ``tokenizer.model`` with a remote-code
tokenizer class. Both are turned into a fast tokenizer by transformers' own converters (the Qwen2
byte-level BPE, and the sentencepiece converter that follows the model's own normaliser settings), with
the class named here so that no code from the checkpoint runs. Tokens keep their ids: no token the
checkpoint's embedding does not have is added.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any

from transformers import (
    GenerationConfig,
    GotOcr2ImageProcessor,
    InternVLProcessor,
    InternVLVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2Tokenizer,
    TokenizersBackend,
)

from mpo.errors import UserError
from mpo.models import families
from mpo.models.families.base import Family

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Defaults of upstream's slow tokenizer classes that their tokenizer_config.json does not repeat:
# InternLM2Tokenizer puts <s> before every text.
SLOW_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {"InternLM2Tokenizer": {"add_bos_token": True}}
TOKENIZER_SOURCES = "tokenizer.json, vocab.json + merges.txt, or tokenizer.model"


def source_tokenizer(src: Path, tokenizer_config: dict[str, Any]) -> TokenizersBackend:
    """SRC's tokenizer as a fast tokenizer, from ``tokenizer.json`` if present, else converted.

    ``vocab.json`` + ``merges.txt`` go through transformers' Qwen2 byte-level BPE, ``tokenizer.model``
    through its sentencepiece converter (plus the defaults of the slow class the config names, e.g.
    InternLM2's leading ``<s>``). Added tokens keep the ids ``tokenizer_config.json`` /
    ``added_tokens.json`` give them. The config's ``extra_special_tokens`` / ``additional_special_tokens``
    lists are not re-added (whatever their form: transformers 5 writes strings, other writers dicts):
    their tokens are added tokens already. ``tokenizer_config`` is SRC's tokenizer_config.json ({} if none).
    """
    kwargs: dict[str, Any] = {"extra_special_tokens": [], "additional_special_tokens": []}
    if (src / "tokenizer.json").is_file():
        tokenizer_class: type[TokenizersBackend] = TokenizersBackend
    elif (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        tokenizer_class = Qwen2Tokenizer
    elif (src / "tokenizer.model").is_file():
        if find_spec("sentencepiece") is None:
            raise UserError(
                f"{src}: reading tokenizer.model needs the sentencepiece package (pip install sentencepiece)"
            )
        tokenizer_class = TokenizersBackend
        kwargs.update(SLOW_CLASS_DEFAULTS.get(str(tokenizer_config.get("tokenizer_class")), {}))
    else:
        raise UserError(f"{src}: no tokenizer files (expected {TOKENIZER_SOURCES})")
    try:
        return tokenizer_class.from_pretrained(str(src), **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise UserError(f"{src}: cannot read the tokenizer ({' '.join(str(err).split())})") from err


def image_tokens(vocab: dict[str, int], family: Family) -> dict[str, str]:
    """The tokens ``InternVLProcessor`` reads from the tokenizer (the family's), all taken from ``vocab``.

    The video token is ``<video>`` when the vocabulary has it. Published InternVL2.5 tokenizers do not
    (InternVL2.5 shows a video as ``Frame{i}: <image>`` lines), and a named token the vocabulary lacks
    would be added on every load, past the embedding; so the processor's video placeholder is then
    ``<img>``, which is in the vocabulary and which the processor replaces by frames as it would ``<video>``.
    """
    tokens = family.tokens
    return {
        "start_image_token": tokens.img_start,
        "end_image_token": tokens.img_end,
        "context_image_token": tokens.img_context,
        "video_token": tokens.video if tokens.video in vocab else tokens.img_start,
    }


def native_tokenizer(source: TokenizersBackend, where: Path | str, family: Family) -> PreTrainedTokenizerFast:
    """The converted checkpoint's tokenizer: SRC's vocabulary and added tokens, the end of a turn
    (``<|im_end|>``) as eos (``chat()`` stops there; InternLM2 chat models: id 92542, whatever the LLM
    config calls its eos), the image tokens named for the processor, the family's chat template."""
    vocab = source.get_vocab()
    missing = [token for token in family.tokens.required if token not in vocab]
    if missing:
        raise UserError(f"{where}: the tokenizer lacks the {family.title} token(s) {', '.join(missing)}")
    bos = {"add_bos_token": True} if source.add_bos_token else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=source.backend_tokenizer,
        bos_token=source.bos_token,
        eos_token=family.tokens.turn_end,
        pad_token=source.pad_token or source.eos_token,
        unk_token=source.unk_token,
        extra_special_tokens=image_tokens(vocab, family),
        model_max_length=source.model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=family.template.jinja(),
        **bos,
    )


def check_token_ids(tokenizer: PreTrainedTokenizerFast, rows: int, where: Path | str) -> None:
    """Every id the tokenizer can produce must index the ``rows``-row embedding; UserError naming the
    tokens that do not."""
    outside = sorted((i, t) for t, i in tokenizer.get_vocab().items() if i >= rows)
    if outside:
        shown = ", ".join(f"{t!r} ({i})" for i, t in outside[:8])
        raise UserError(
            f"{where}: the tokenizer has {len(outside)} token(s) outside the {rows}-row embedding: {shown}"
        )


def internvl_processor(
    tokenizer: PreTrainedTokenizerFast,
    tile_size: int,
    min_tiles: int,
    max_tiles: int,
    tokens_per_tile: int,
    family: Family,
) -> InternVLProcessor:
    """Dynamic tiling: up to ``max_tiles`` square tiles of ``tile_size`` px plus a thumbnail,
    ImageNet-normalised, each tile ``tokens_per_tile`` image tokens, and the family's chat template; the
    family is attached (:func:`mpo.models.families.of_processor`)."""
    common = dict(
        size={"height": tile_size, "width": tile_size},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
    )
    image_processor = GotOcr2ImageProcessor(
        crop_to_patches=True, min_patches=min_tiles, max_patches=max_tiles, **common
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(**common),
        image_seq_length=tokens_per_tile,
        chat_template=family.template.jinja(),
    )
    return families.attach(processor, family)


def original_tiling(original: dict[str, Any], where: Path | str, family: Family) -> tuple[int, int, int]:
    """(tile size, min tiles, max tiles) of an original config.json dict; a tile range it does not state
    is the family's (``family.tiling``).

    InternVL tiles dynamically with a thumbnail; transformers' GotOcr2 image processor always adds the
    thumbnail, so a config without it (or without dynamic tiling) is refused rather than altered.
    """
    if not original.get("dynamic_image_size", True) or not original.get("use_thumbnail", True):
        raise UserError(
            f"{where}: dynamic_image_size and use_thumbnail must be true (InternVL tiling); "
            "the native image processor has no other mode"
        )
    side = original.get("force_image_size") or original["vision_config"]["image_size"]
    min_tiles = int(original.get("min_dynamic_patch", family.tiling.min_tiles))
    return int(side), min_tiles, int(original.get("max_dynamic_patch", family.tiling.max_tiles))


def generation_config(
    source: dict[str, Any],
    tokenizer: PreTrainedTokenizerFast,
    llm_eos: int | list[int] | None,
    family: Family,
) -> GenerationConfig:
    """SRC's generation config (``source``, {} if none) with eos ids: the end-of-turn id first, then
    SRC's and the LLM config's eos ids."""
    base = {k: v for k, v in source.items() if k not in ("transformers_version", "_from_model_config")}
    eos: list[int] = [tokenizer.convert_tokens_to_ids(family.tokens.turn_end)]
    for ids in (base.get("eos_token_id"), llm_eos):
        for token_id in ids if isinstance(ids, list) else [ids]:
            if token_id is not None and token_id not in eos:
                eos.append(int(token_id))
    base.update(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    if tokenizer.bos_token_id is not None:
        base["bos_token_id"] = tokenizer.bos_token_id
    return GenerationConfig(**base)
