"""Converting checkpoints made by OpenGVLab's own code (tests/fixtures/upstream, see make_fixtures.py).

Each fixture is a tiny original-layout InternVL2.5 checkpoint as published (sharded bf16 safetensors,
slow-tokenizer files, remote-code tokenizer class) plus what upstream computed with it: the input ids its
``chat()`` builds for a question about ``image.png``, its tiles of that image, its logits and its greedy
tokens. The converted checkpoint must reproduce all of them through ``load_processor`` + ``load_model``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList, TokenizersBackend

from mpo import cli
from mpo.errors import UserError
from mpo.models import convert as conv
from mpo.models import native_files
from mpo.models.loading import load_model, load_processor

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
NAMES = ["qwen2_ln", "internlm2_rms"]


def expected(name: str) -> dict:
    return json.loads((FIXTURES / name / "expected.json").read_text())


def original_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("model*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


@pytest.fixture(scope="module", params=NAMES)
def converted(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "native"
    conv.convert(FIXTURES / request.param, out)
    return request.param, out


def chat_inputs(processor, question: str) -> dict:
    """The processor's inputs for one user turn with ``image.png`` and ``question``, via the chat template."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=[text], images=[Image.open(FIXTURES / "image.png")], return_tensors="pt")


def seeded_pixels(exp: dict) -> torch.Tensor:
    """The pixel values upstream's logits and tokens were computed with (same seed, same torch)."""
    gen = torch.Generator().manual_seed(exp["pixel_seed"])
    return torch.randn(exp["num_tiles"], 3, 448, 448, generator=gen)


class ForceAt(LogitsProcessor):
    """Leave only ``token`` possible once the sequence is ``length`` long."""

    def __init__(self, length: int, token: int) -> None:
        self.length, self.token = length, token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == self.length:
            forced = torch.full_like(scores, float("-inf"))
            forced[:, self.token] = 0.0
            return forced
        return scores


# ---------------------------------------------------------------------------------------------
# The converted checkpoint does what upstream does


def test_chat_prompt_ids_and_tiles_equal_upstream(converted) -> None:
    name, out = converted
    exp = expected(name)
    processor = load_processor(out)
    inputs = chat_inputs(processor, exp["question"])
    assert inputs["input_ids"][0].tolist() == exp["prompt_ids"]
    assert inputs["pixel_values"].shape == (exp["num_tiles"], 3, 448, 448)
    upstream = load_file(FIXTURES / name / "upstream.safetensors")["tile_means"]
    means = torch.nn.functional.avg_pool2d(inputs["pixel_values"].float(), 28)
    torch.testing.assert_close(means, upstream, atol=1e-4, rtol=0)
    assert processor.image_seq_length == exp["num_image_token"] == 256
    assert processor.image_processor.max_patches == original_config(name)["max_dynamic_patch"]


def test_logits_and_greedy_tokens_equal_upstream(converted) -> None:
    name, out = converted
    exp = expected(name)
    model = load_model(out).eval()
    ids, pixels = torch.tensor([exp["prompt_ids"]]), seeded_pixels(exp)
    upstream = load_file(FIXTURES / name / "upstream.safetensors")
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits[0]
    torch.testing.assert_close(logits[upstream["positions"]], upstream["logits"], atol=1e-4, rtol=0)
    generated = model.generate(
        input_ids=ids, pixel_values=pixels, max_new_tokens=len(exp["generated_ids"]), do_sample=False
    )
    assert generated[0, ids.shape[1] :].tolist() == exp["generated_ids"]


def test_generation_stops_at_the_end_of_turn(converted) -> None:
    name, out = converted
    exp = expected(name)
    model, processor = load_model(out).eval(), load_processor(out)
    end = exp["end_of_turn_id"]  # what upstream's chat() passes as eos: <|im_end|>
    assert processor.tokenizer.convert_ids_to_tokens(end) == "<|im_end|>"
    assert processor.tokenizer.eos_token_id == end  # mpo's generation passes the tokenizer's eos
    ids, pixels = torch.tensor([exp["prompt_ids"]]), seeded_pixels(exp)
    force = LogitsProcessorList([ForceAt(ids.shape[1] + 3, end)])
    generated = model.generate(
        input_ids=ids, pixel_values=pixels, max_new_tokens=12, do_sample=False, logits_processor=force
    )[0, ids.shape[1] :].tolist()
    assert generated == exp["generated_ids"][:3] + [end]


def test_complete_files_and_no_invented_tokens(converted) -> None:
    name, out = converted
    rows = original_config(name)["llm_config"]["vocab_size"]  # embedding rows, sized to the tokenizer
    processor = load_processor(out)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == rows and max(tokenizer.get_vocab().values()) == rows - 1
    used = [
        processor.image_token_id,
        processor.start_image_token_id,
        processor.end_image_token_id,
        tokenizer.convert_tokens_to_ids(processor.video_token),
        tokenizer.pad_token_id,
    ]
    assert all(0 <= token_id < rows for token_id in used)
    assert load_model(out).get_input_embeddings().weight.shape[0] == rows
    assert {"tokenizer.json", "processor_config.json", "chat_template.jinja", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not list(out.glob("*.py")) and "auto_map" not in json.loads(
        (out / "tokenizer_config.json").read_text()
    )
    # a second load does not grow the vocabulary (named tokens missing from it would be added on load)
    assert len(load_processor(out).tokenizer) == rows


# ---------------------------------------------------------------------------------------------
# Other sources


def copy_fixture(name: str, dst: Path) -> Path:
    shutil.copytree(
        FIXTURES / name, dst, ignore=shutil.ignore_patterns("expected.json", "upstream.safetensors")
    )
    return dst


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("extra_as", ["strings", "dicts"])
def test_transformers5_saved_tokenizer_converts(tmp_path: Path, name: str, extra_as: str) -> None:
    """A tokenizer re-saved with transformers 5 (tokenizer.json, extra_special_tokens as a list) in SRC."""
    src = copy_fixture(name, tmp_path / "src")
    slow = ["vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "special_tokens_map.json"]
    if name.startswith("internlm2"):  # what AutoTokenizer would give, without the remote code
        resaved = TokenizersBackend.from_pretrained(str(src), add_bos_token=True)
    else:
        resaved = AutoTokenizer.from_pretrained(str(src))
    for file in slow:
        (src / file).unlink(missing_ok=True)
    resaved.save_pretrained(src)
    config = json.loads((src / "tokenizer_config.json").read_text())
    assert isinstance(config["extra_special_tokens"], list)
    if extra_as == "dicts":
        config["extra_special_tokens"] = [
            {"content": t, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
            for t in config["extra_special_tokens"]
        ]
        (src / "tokenizer_config.json").write_text(json.dumps(config))
    conv.convert(src, tmp_path / "native")
    processor = load_processor(tmp_path / "native")
    exp = expected(name)
    assert chat_inputs(processor, exp["question"])["input_ids"][0].tolist() == exp["prompt_ids"]
    assert len(processor.tokenizer) == original_config(name)["llm_config"]["vocab_size"]


def test_native_source_is_a_noop(converted, tmp_path: Path, capsys) -> None:
    _, out = converted
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = conv.convert(out, tmp_path / "again")
    assert list(result) == [] and "already a native" in result.notes[0]
    assert not (tmp_path / "again").exists()
    assert cli.main(["convert", str(out), str(tmp_path / "again")]) == 0
    assert "already a native (-hf) checkpoint" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_token_outside_the_embedding_is_refused(tmp_path: Path) -> None:
    src = copy_fixture("qwen2_ln", tmp_path / "src")
    rows = original_config("qwen2_ln")["llm_config"]["vocab_size"]
    added = json.loads((src / "added_tokens.json").read_text())
    (src / "added_tokens.json").write_text(json.dumps({**added, "<video>": rows}))
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"][str(rows)] = {
        "content": "<video>",
        "special": True,
        "normalized": False,
        "lstrip": False,
        "rstrip": False,
        "single_word": False,
    }
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=f"outside the {rows}-row embedding: '<video>' \\({rows}\\)"):
        conv.convert(src, tmp_path / "native")
    assert not (tmp_path / "native").exists()


def test_source_without_tokenizer_is_refused(tmp_path: Path) -> None:
    src = copy_fixture("internlm2_rms", tmp_path / "src")
    (src / "tokenizer.model").unlink()
    with pytest.raises(UserError, match="no tokenizer files"):
        conv.convert(src, tmp_path / "native")


def test_to_original_names_or_copies_the_remote_code(converted, tmp_path: Path, capsys) -> None:
    name, out = converted
    result = conv.convert(out, tmp_path / "bare", to="original")
    assert len(result.notes) == 1
    for file in ("configuration_internvl_chat.py", "modeling_internvl_chat.py", "--code-from"):
        assert file in result.notes[0]
    assert cli.main(["convert", str(out), str(tmp_path / "bare2"), "--to", "original"]) == 0
    assert "modeling_internvl_chat.py" in capsys.readouterr().err
    # the weights are upstream's own, tensor for tensor
    upstream = load_tensors(FIXTURES / name)
    back = load_tensors(tmp_path / "bare")
    assert sorted(back) == sorted(upstream)
    assert all(torch.equal(back[k], upstream[k]) for k in upstream)

    code = copy_fixture(name, tmp_path / "code")  # an original checkpoint with its remote code
    for file in ("configuration_internvl_chat.py", "modeling_internvl_chat.py", "conversation.py"):
        (code / file).write_text("# upstream remote code\n")
    result = conv.convert(out, tmp_path / "full", to="original", code_from=code)
    assert result.notes == []
    written = {p.name for p in (tmp_path / "full").iterdir()}
    assert {"configuration_internvl_chat.py", "modeling_internvl_chat.py", "conversation.py"} <= written
    slow = {"vocab.json", "merges.txt"} if name == "qwen2_ln" else {"tokenizer.model"}
    assert slow <= written and "tokenizer.json" not in written
    assert (tmp_path / "full" / "tokenizer_config.json").read_bytes() == (
        code / "tokenizer_config.json"
    ).read_bytes()

    (code / "modeling_internvl_chat.py").unlink()
    with pytest.raises(
        UserError, match=f"^{code}: not an original checkpoint with remote code \\(no modeling_"
    ):
        conv.convert(out, tmp_path / "partial", to="original", code_from=code)
    assert not (tmp_path / "partial").exists()
    capsys.readouterr()
    assert cli.main(["convert", str(FIXTURES / name), str(tmp_path / "n"), "--code-from", str(code)]) == 1
    assert "--code-from applies to --to original only" in capsys.readouterr().err


def test_load_processor_names_a_missing_processor(converted, tmp_path: Path) -> None:
    _, out = converted
    bare = tmp_path / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("processor_config.json"))
    with pytest.raises(UserError, match=f"^{bare}: no processor \\(processor_config.json\\)"):
        load_processor(bare)


def test_tiling_other_than_internvl25_is_refused(tmp_path: Path) -> None:
    src = copy_fixture("qwen2_ln", tmp_path / "src")
    config = original_config("qwen2_ln")
    for key in ("use_thumbnail", "dynamic_image_size"):
        (src / "config.json").write_text(json.dumps({**config, key: False}))
        with pytest.raises(UserError, match=f"^{src / 'config.json'}: dynamic_image_size and use_thumbnail"):
            conv.convert(src, tmp_path / "native")


def test_tokenizer_without_the_image_tokens_is_refused(tmp_path: Path) -> None:
    src = copy_fixture("qwen2_ln", tmp_path / "src")
    added = json.loads((src / "added_tokens.json").read_text())
    context_id = added.pop("<IMG_CONTEXT>")
    (src / "added_tokens.json").write_text(json.dumps(added))
    config = json.loads((src / "tokenizer_config.json").read_text())
    del config["added_tokens_decoder"][str(context_id)]
    config["additional_special_tokens"] = [
        t for t in config["additional_special_tokens"] if t != "<IMG_CONTEXT>"
    ]
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(
        UserError, match=f"^{src}: the tokenizer lacks the InternVL2.5 token\\(s\\) <IMG_CONTEXT>"
    ):
        conv.convert(src, tmp_path / "native")


def test_sentencepiece_missing_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(native_files, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="needs the sentencepiece package"):
        conv.convert(FIXTURES / "internlm2_rms", tmp_path / "native")
