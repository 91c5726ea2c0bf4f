"""Prompts with images are tokenised with one context token per image, then expanded: the ids must be the
tokenizer's own ids of the fully expanded text, for the Qwen2 (byte-level BPE) and InternLM2
(sentencepiece) tokenizers of the published checkpoints (converted from tests/fixtures/upstream)."""

from __future__ import annotations

import pytest

from mpo.data.template import expand_images, tokenize_with_images
from mpo.models import convert as conv
from mpo.models import families
from mpo.models.loading import load_processor
from tests.test_prompt_ids_upstream import FIXTURES

TEXTS = [
    ("<image>\nHow many red circles are there?", [13]),
    ("Compare <image> and <image>: which is larger?", [5, 1]),
    ("<image><image>\n前一张图和后一张图有什么不同？", [2, 7]),
    ("Frame1: <image>\nFrame2: <image>\n  leading spaces <image>trailing", [1, 1, 1]),
    ("no image at all, just  two  spaces\n\n", []),
    ("<image>", [3]),
]


@pytest.fixture(scope="module", params=["qwen2_ln", "internlm2_rms"])
def processor(request, tmp_path_factory):
    native = tmp_path_factory.mktemp(request.param) / "native"
    conv.convert(FIXTURES / request.param, native)
    return load_processor(native)


@pytest.mark.parametrize(("text", "tiles"), TEXTS)
def test_ids_equal_the_tokenizer_on_the_expanded_text(processor, text, tiles):
    family = families.of_processor(processor)
    prompt = family.template.prompt_text(text)
    n = processor.image_seq_length
    expected = processor.tokenizer(expand_images(prompt, tiles, n, family.tokens), add_special_tokens=False)
    got = tokenize_with_images(processor.tokenizer, prompt, tiles, n, family.tokens)
    assert got == expected["input_ids"]
    context = processor.tokenizer.convert_tokens_to_ids(family.tokens.img_context)
    assert got.count(context) == sum(tiles) * n


def test_a_literal_context_token_is_refused(processor):
    family = families.of_processor(processor)
    with pytest.raises(ValueError, match="literal <IMG_CONTEXT>"):
        tokenize_with_images(processor.tokenizer, "<image> and <IMG_CONTEXT>", [1], 4, family.tokens)
