"""The transformers generation backend runs each prompt once for all its samples, and samples what
transformers' own ``generate(num_return_sequences=n)`` over the whole prompt samples."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import LogitsProcessorList

from mpo.generation import GenerationRequest, SamplingParams, TransformersBackend, _RowSampler, row_seed
from mpo.models.loading import load_model, load_processor


@pytest.fixture(scope="module")
def backend(tiny_model) -> TransformersBackend:
    return TransformersBackend(
        load_model(tiny_model, training=False), load_processor(tiny_model), batch_size=3, progress=False
    )


@pytest.fixture(scope="module")
def requests(tmp_path_factory) -> list[GenerationRequest]:
    """Three prompts of different lengths (so the batch is left-padded): a wide image (several tiles),
    no image, a square image; the middle one carries no seed of its own."""
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (192, 64), "red").save(root / "wide.png")
    Image.new("RGB", (64, 64), "blue").save(root / "square.png")
    return [
        GenerationRequest("<image>\nWhat colour is the picture?", [str(root / "wide.png")], 6, seed=11),
        GenerationRequest("Name three shapes, then count them."),
        GenerationRequest("<image>\nIs it blue?", [str(root / "square.png")], 6, seed=12),
    ]


def _plain_generate(backend: TransformersBackend, requests, params: SamplingParams, **sampling) -> list:
    """transformers' own path: every prompt copied ``n`` times before one forward pass over all of it."""
    encoded = [backend._encode(r) for r in requests]
    enc = backend.tokenize([t for t, _ in encoded])
    pixels = torch.cat([p for _, p in encoded if p is not None])
    torch.manual_seed(params.seed)
    gen = backend.model.generate(
        **enc,
        pixel_values=pixels,
        num_return_sequences=params.n,
        max_new_tokens=params.max_new_tokens,
        pad_token_id=backend.processor.tokenizer.pad_token_id,
        eos_token_id=backend.processor.tokenizer.eos_token_id,
        **sampling,
    )
    texts = backend.processor.tokenizer.batch_decode(
        gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
    )
    return [[t.strip() for t in texts[i : i + params.n]] for i in range(0, len(texts), params.n)]


def test_greedy_equals_generate_over_the_whole_prompt(backend, requests):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    assert backend.generate(requests, params) == _plain_generate(backend, requests, params, do_sample=False)


def test_sampling_equals_generate_with_num_return_sequences(backend, requests):
    params = SamplingParams(n=3, temperature=1.0, top_k=50, max_new_tokens=12, seed=4)
    unseeded = [GenerationRequest(r.question, r.images, r.max_dynamic_patch) for r in requests]
    expected = _plain_generate(
        backend, unseeded, params, do_sample=True, temperature=1.0, top_k=50, top_p=1.0
    )
    got = backend.generate(unseeded, params)
    assert got == expected
    assert len({t for row in got for t in row}) > 3  # really sampled


def test_seeded_samples_equal_generate_with_num_return_sequences(backend, requests):
    params = SamplingParams(n=3, temperature=1.0, top_k=50, max_new_tokens=12, seed=4)
    seeds = [r.seed if r.seed is not None else params.seed + i for i, r in enumerate(requests)]
    sampler = _RowSampler([row_seed(s, k) for s in seeds for k in range(params.n)], params)
    expected = _plain_generate(
        backend,
        requests,
        params,
        do_sample=True,  # generate's own sampling then sees one possible token per row
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        logits_processor=LogitsProcessorList([sampler]),
    )
    assert backend.generate(requests, params) == expected
    # a request's samples depend on its seed alone, not on the batch it is in
    alone = TransformersBackend(backend.model, backend.processor, batch_size=1, progress=False)
    assert alone.generate([requests[2]], params)[0] == expected[2]


def test_each_prompt_runs_through_the_llm_once(backend, requests):
    """With n samples the prompt's tokens pass the LLM once per request, not n times: the first pass sees
    B rows of the prompt less its last token, every later pass one new token per sample."""
    shapes = []
    llm = backend.model.model.language_model
    hook = llm.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        backend.generate(requests, SamplingParams(n=4, temperature=1.0, max_new_tokens=5))
    finally:
        hook.remove()
    prompt_len = backend.tokenize([backend._encode(r)[0] for r in requests])["input_ids"].shape[1]
    assert shapes[0] == (3, prompt_len - 1)
    assert shapes[1] == (12, 1)  # the prompt's last token, once per sample
    assert all(s[0] == 12 and s[1] == 1 for s in shapes[1:])
