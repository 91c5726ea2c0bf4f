"""The vLLM backend through a fake engine (vLLM needs a GPU): each prompt carries its own tile budget,
as the transformers backend tiles it, and the engine gets the parallel sizes and the image limit."""

from __future__ import annotations

import argparse
import sys
import types
from dataclasses import dataclass

from PIL import Image

from mpo.cli.options import add_vllm_arguments
from mpo.generation import GenerationRequest, SamplingParams, VLLMBackend, vllm_options


@dataclass
class FakeParams:
    n: int = 1
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None

    def clone(self):
        return FakeParams(**vars(self))


class FakeLLM:
    """Records the engine's arguments and the prompts it is given."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []

    def generate(self, prompts, params):
        self.calls.append((prompts, params))
        out = types.SimpleNamespace
        return [out(outputs=[out(text=f" answer {i} ") for _ in range(p.n)]) for i, p in enumerate(params)]


def _fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeParams
    monkeypatch.setitem(sys.modules, "vllm", module)


def test_each_prompt_carries_its_tile_budget_and_the_engine_its_sizes(monkeypatch, tmp_path, tiny_model):
    _fake_vllm(monkeypatch)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (64, 48), (40 * i, 0, 0)).save(paths[-1])
    parser = argparse.ArgumentParser()
    add_vllm_arguments(parser)
    args = parser.parse_args(
        ["--tensor-parallel-size", "8", "--data-parallel-size", "2", "--max-images-per-prompt", "16"]
    )
    backend = VLLMBackend(
        str(tiny_model), max_dynamic_patch=6, **vllm_options(args)
    )  # its family: the config's
    engine = backend.llm.kwargs
    assert engine["model"] == str(tiny_model) and engine["tensor_parallel_size"] == 8
    assert engine["data_parallel_size"] == 2 and engine["limit_mm_per_prompt"] == {"image": 16}
    assert engine["mm_processor_kwargs"] == {"crop_to_patches": True, "max_patches": 6}

    requests = [
        GenerationRequest(
            "<image>\nWhat colour?", [paths[0]], max_dynamic_patch=12
        ),  # 12 tiles for one image
        GenerationRequest(
            "<image><image><image>\nCompare.", paths, max_dynamic_patch=12, seed=7
        ),  # 12 // 3 = 4 each
        GenerationRequest("<image>\nSmall budget.", [paths[1]], max_dynamic_patch=1),  # one tile: no cropping
        GenerationRequest("What is 2 + 2?"),  # text only
    ]
    out = backend.generate(requests, SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=3))
    prompts, params = backend.llm.calls[0]
    assert [p.get("mm_processor_kwargs") for p in prompts] == [
        {"crop_to_patches": True, "max_patches": 12},
        {"crop_to_patches": True, "max_patches": 4},
        {"crop_to_patches": False, "max_patches": 1},
        None,
    ]
    assert [len(p.get("multi_modal_data", {}).get("image", [])) for p in prompts] == [1, 3, 1, 0]
    assert prompts[1]["prompt"].count("<IMG_CONTEXT>") == 3 and "<image>" not in prompts[1]["prompt"]
    assert [p.seed for p in params] == [3, 7, 3, 3] and all(p.n == 2 and p.max_tokens == 8 for p in params)
    assert out[1] == ["answer 1", "answer 1"]


def test_one_replica_passes_no_data_parallel_size(monkeypatch, tiny_model):
    _fake_vllm(monkeypatch)
    engine = VLLMBackend(str(tiny_model)).llm.kwargs
    assert "data_parallel_size" not in engine and engine["tensor_parallel_size"] == 1
