"""Every prompt this project builds for a converted published checkpoint has upstream's ids.

Upstream InternVL tokenizes a conversation with the tokenizer's special tokens on (``chat()`` and its
training preprocessing), so InternLM2-based checkpoints (2B, 8B, 26B) always see ``<s>`` first and
Qwen2-based ones see nothing extra. The fixtures' ``prompt_ids`` are what upstream's ``chat()`` built
(tests/fixtures/upstream/make_fixtures.py); here the MPO collator, the SFT encoder and the generation
backend each build the same prompt from the same question and image.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mpo.data.collator import PreferenceCollator
from mpo.data.mmpr import load_mmpr
from mpo.data.sft_collator import SFTCollator
from mpo.data.sft_data import load_sft
from mpo.generation import GenerationRequest, TransformersBackend
from mpo.models import convert as conv
from mpo.models.loading import load_model, load_processor

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"


@pytest.fixture(scope="module", params=["qwen2_ln", "internlm2_rms"])
def case(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    conv.convert(FIXTURES / request.param, root / "native")
    expected = json.loads((FIXTURES / request.param / "expected.json").read_text())
    shutil.copy(FIXTURES / "image.png", root / "image.png")
    return root, expected


def _meta(root: Path, name: str, row: dict) -> Path:
    (root / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    meta = {name: {"root": ".", "annotation": f"{name}.jsonl", "max_dynamic_patch": 12}}
    (root / f"{name}_meta.json").write_text(json.dumps(meta))
    return root / f"{name}_meta.json"


def test_preference_collator_prompt_equals_upstream(case):
    root, exp = case
    processor = load_processor(root / "native")
    row = {"image": "image.png", "question": exp["question"], "chosen": "3", "rejected": "4"}
    data, _ = load_mmpr(_meta(root, "pairs", row), processor)
    prompt, chosen, _, pixels = PreferenceCollator(processor).encode(data[0])
    assert prompt == exp["prompt_ids"]
    assert pixels.shape[0] == exp["num_tiles"]


def test_sft_encoder_prompt_equals_upstream(case):
    root, exp = case
    processor = load_processor(root / "native")
    row = {
        "image": "image.png",
        "conversations": [{"from": "human", "value": exp["question"]}, {"from": "gpt", "value": "3"}],
    }
    records, _ = load_sft(_meta(root, "sft", row), processor)
    batch = SFTCollator(processor, train=False)([records[0]])
    ids = batch["input_ids"][0].tolist()
    assert ids[: len(exp["prompt_ids"])] == exp["prompt_ids"]
    assert all(label == -100 for label in batch["labels"][0, : len(exp["prompt_ids"])].tolist())


def test_generation_prompt_equals_upstream(case):
    root, exp = case
    backend = TransformersBackend(
        load_model(root / "native", training=False), load_processor(root / "native")
    )
    text, pixels = backend._encode(GenerationRequest(exp["question"], [str(root / "image.png")], 12))
    assert backend.tokenize([text])["input_ids"][0].tolist() == exp["prompt_ids"]
    assert pixels.shape[0] == exp["num_tiles"]
