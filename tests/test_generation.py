"""The transformers generation backend runs each prompt once for all its samples, and samples what
transformers' own ``generate(num_return_sequences=n)`` over the whole prompt samples."""

from __future__ import annotations

import math

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


def test_the_cache_keyword_of_releases_before_5_24_carries_the_same_cache(backend, requests, monkeypatch):
    """Releases before transformers 5.24 take the KV cache as ``past_key_values`` (5.24 still accepts it, as
    a deprecated alias of ``cache``): the prompt pass fills the cache under that name and generate continues
    from it, with the same samples as under ``cache``."""
    import mpo.generation

    assert mpo.generation._cache_argument(backend.model.model.forward) == "cache"  # 5.24, as pinned
    params = SamplingParams(n=3, temperature=1.0, top_k=50, max_new_tokens=12, seed=4)
    current = backend.generate(requests, params)
    seen = []
    real_forward = backend.model.model.forward
    monkeypatch.setattr(mpo.generation, "_cache_argument", lambda forward: "past_key_values")
    monkeypatch.setattr(
        backend.model.model, "forward", lambda *a, **kw: seen.append(set(kw)) or real_forward(*a, **kw)
    )
    assert backend.generate(requests, params) == current
    assert "past_key_values" in seen[0] and "cache" not in seen[0]  # the prompt pass used the old name


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


def _inverse_cdf_reference(
    logits: list[float], u: float, temperature: float, top_k: int, top_p: float
) -> int:
    """One row by hand over the whole vocabulary: scale, keep the top k (ties with the k-th kept), keep
    the most likely tokens (transformers' rule: drop the least likely while the dropped mass stays within
    1 - top_p), then the first token whose
    cumulative probability (vocabulary order) exceeds u times the total."""
    scaled = [x / temperature for x in logits]
    if top_k:
        kth = sorted(scaled, reverse=True)[top_k - 1]
        scaled = [x if x >= kth else -math.inf for x in scaled]
    peak = max(scaled)
    weights = [math.exp(x - peak) for x in scaled]
    if top_p < 1.0:  # least likely first (ties by position): drop while the mass so far is <= 1 - top_p
        total, mass = sum(weights), 0.0
        ascending = sorted(range(len(weights)), key=lambda i: (weights[i], i))
        for i in ascending[:-1]:  # the most likely token always stays
            mass += weights[i]
            if mass / total > 1 - top_p:
                break
            weights[i] = 0.0
    target, running = u * sum(weights), 0.0
    for i, w in enumerate(weights):
        running += w
        if running > target:
            return i
    raise AssertionError("u beyond the total")


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 50, 1.0), (1.3, 20, 0.8), (1.0, 7, 1.0)]
)
def test_row_sampler_draws_the_whole_vocabulary_inverse_cdf(temperature, top_k, top_p):
    vocab, rows, steps = 300, 6, 5
    params = SamplingParams(n=rows, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=steps)
    seeds = [row_seed(21, k) for k in range(rows)]
    sampler = _RowSampler(seeds, params)
    uniforms = [
        torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds
    ]
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        scores = torch.randn(rows, vocab, generator=gen) * 3
        if top_p == 1.0:  # (where top-p cuts through exact ties, torch.sort's order among them decides)
            scores[1, 10:40] = scores[1].max()  # 30 tokens tied at the top: top-k keeps all of them
            scores[2, :] = 0.5  # every token tied
        out = sampler(None, scores.clone())
        for r in range(rows):
            expected = _inverse_cdf_reference(
                scores[r].tolist(), float(uniforms[r][step]), temperature, top_k, top_p
            )
            assert out[r].argmax().item() == expected
            assert torch.isinf(out[r]).sum().item() == vocab - 1  # only the drawn token stays possible
