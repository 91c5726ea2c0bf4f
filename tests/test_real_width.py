"""InternVL2.5-1B at its real widths on the CPU: a downloaded-style original checkpoint is converted, generates
pairs and trains two MPO steps within 20 GiB (benchmarks/real_width_1b.py, which also times it; ~3.8 GB of disk).
`make test-real` runs it; `make test` leaves it out (marker ``real``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from test_sizes import upstream_shapes

from benchmarks.real_width_1b import MAX_DYNAMIC_PATCH, MAX_NEW_TOKENS, MEMORY_LIMIT_GIB, STEPS, run
from mpo.models.loading import load_processor
from mpo.models.sizes import SIZES
from mpo.models.tiny import train_tokenizer, widen_vocabulary


def _shapes(folder) -> dict[str, tuple[int, ...]]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            out |= {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return out


def test_widened_vocabulary_encodes_as_before_and_decodes_every_id():
    tokenizer = train_tokenizer()
    wide = widen_vocabulary(tokenizer, 5000)
    assert len(tokenizer) < 5000 == len(wide) == wide.backend_tokenizer.get_vocab_size()
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nWhat colour is the circle?<|im_end|>"
    assert wide(text).input_ids == tokenizer(text).input_ids
    assert wide.decode([4999, 4000]) == " w4999 w4000"  # filler ids: the words the docstring promises
    old = len(tokenizer)
    assert wide.decode(list(range(old))) == tokenizer.decode(list(range(old)))
    assert (wide.eos_token, wide.pad_token, wide.padding_side) == (
        tokenizer.eos_token,
        tokenizer.pad_token,
        "left",
    )
    with pytest.raises(ValueError, match="expected 100"):
        widen_vocabulary(tokenizer, 100)  # cannot shrink


@pytest.mark.slow
@pytest.mark.real
def test_real_1b_widths_convert_generate_and_train_on_two_cores(tmp_path):
    work = tmp_path / "work"
    results = run(work, out=tmp_path / "results")

    # The "download": the original OpenGVLab layout, every tensor at the published 1B shape.
    assert _shapes(work / "InternVL2_5-1B") == upstream_shapes(SIZES["1b"])
    config = json.loads((work / "InternVL2_5-1B" / "config.json").read_text())
    assert config["model_type"] == "internvl_chat" and config["llm_config"]["vocab_size"] == 151674

    # Converted back: 448 px tiles, 256 tokens each; an 896 x 448 image at max_dynamic_patch 2 is 2 tiles +
    # the thumbnail, as the training data asks.
    processor = load_processor(work / "InternVL2_5-1B-native")
    pixels = processor.image_processor(
        Image.new("RGB", (896, 448)), max_patches=MAX_DYNAMIC_PATCH, return_tensors="pt"
    )["pixel_values"]
    assert tuple(pixels.shape) == (3, 3, 448, 448) and processor.image_seq_length == 256

    # build-pairs generated (at most 16 new tokens each) and kept pairs; training ran both steps on them.
    pairs = [
        json.loads(line) for f in (work / "pairs").glob("*.jsonl") for line in f.read_text().splitlines()
    ]
    assert results["pairs"]["kept"] == len(pairs) >= 1
    tokenizer = processor.tokenizer
    for (
        pair
    ) in pairs:  # the widened vocabulary decodes every id as one word or a piece of the tiny vocabulary
        assert 2 <= len(pair["chosen"].split()) <= MAX_NEW_TOKENS
    assert results["global_step"] == STEPS and len(results["train_log"]) == STEPS
    assert all(math.isfinite(e["loss"]) for e in results["train_log"])
    adapter = safe_open(str(work / "run" / "adapter_model.safetensors"), framework="pt")
    names = list(adapter.keys())
    assert names and all("lora_" in n and "language_model" in n for n in names)
    assert any(torch.count_nonzero(adapter.get_tensor(n)) for n in names if "lora_B" in n)  # a step was taken
    assert tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") is not None

    assert results["peak_rss_gib"] < MEMORY_LIMIT_GIB, results["phases"]
