"""Model families: the lookup (errors by message), detection from config.json, and the template written
once: the Python renderer, the Jinja string and the training segments give the same text."""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from PIL import Image
from transformers import PreTrainedTokenizerFast

from mpo.cli import main as cli_main
from mpo.data.collator import PreferenceCollator
from mpo.errors import UserError
from mpo.models import convert, families
from mpo.models.families import internvl2_5, internvl3
from mpo.models.loading import checkpoint_family, load_processor
from mpo.models.tiny import build_tiny_model, train_tokenizer

ALL = list(families.FAMILIES.values())
SYSTEM_2_5 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

# Conversations in message-dict form: default system, own system, multi-turn, images, video, empty text.
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Blue."},
    ],
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is it?"}]}],
    [
        {"role": "system", "content": [{"type": "text", "text": "Be exact."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Image-1: "},
                {"type": "image"},
                {"type": "text", "text": "Image-2: "},
                {"type": "image"},
                {"type": "text", "text": "Same colour?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "No."}]},
    ],
    [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}],
    [{"role": "user", "content": ""}],
]


def jinja_render(template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """transformers' own Jinja renderer (what processor.apply_chat_template runs)."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer().backend_tokenizer)
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


# ------------------------------------------------------------------------------------------ lookup


def test_lookup_by_name_and_unknown_names():
    assert families.get("internvl2_5") is internvl2_5.FAMILY
    assert families.get("internvl3") is internvl3.FAMILY
    with pytest.raises(
        UserError, match=r"^unknown model family 'internvl9': expected one of internvl2_5, internvl3$"
    ):
        families.get("internvl9")


def test_detect_reads_the_config_key_and_names_the_file():
    assert (
        families.detect({"model_type": "internvl"}, "c.json") is internvl2_5.FAMILY
    )  # unmarked: InternVL2.5
    assert families.detect({"mpo_family": "internvl3"}, "c.json") is internvl3.FAMILY
    with pytest.raises(UserError, match=r"^ck/config.json: unknown model family 'llava': expected one of "):
        families.detect({"mpo_family": "llava"}, "ck/config.json")
    with pytest.raises(
        UserError, match=r"^ck/config.json: mpo_family must be a family name, got \['internvl3'\]"
    ):
        families.detect({"mpo_family": ["internvl3"]}, "ck/config.json")


def test_a_processor_without_a_family_is_refused():
    with pytest.raises(UserError, match="this processor has no model family: load it with"):
        families.of_processor(object())


def test_checkpoint_with_an_unknown_family_fails_at_load(tmp_path, tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "mpo_family": "internvl9"}))
    with pytest.raises(UserError, match=rf"^{tmp_path}/config.json: unknown model family 'internvl9'"):
        checkpoint_family(tmp_path)


def test_internvl3_converts_only_qwen2_llms():
    original = {"mpo_family": "internvl3", "llm_config": {"architectures": ["InternLM2ForCausalLM"]}}
    with pytest.raises(
        UserError,
        match=r"^src: unsupported LLM architecture 'InternLM2ForCausalLM' for InternVL3 "
        r"\(expected Qwen2ForCausalLM\)$",
    ):
        convert.llm_family(original, "src")
    assert convert.llm_family({**original, "mpo_family": "internvl2_5"}, "src") == "internlm2"
    assert (
        convert.llm_family({**original, "llm_config": {"architectures": ["Qwen2ForCausalLM"]}}, "src")
        == "qwen2"
    )


def test_tiny_internvl3_refuses_a_llama_llm(tmp_path):
    with pytest.raises(ValueError, match=r"^unknown llm 'llama' for InternVL3: expected qwen2$"):
        build_tiny_model(tmp_path / "m", llm="llama", family="internvl3")


# ---------------------------------------------------------------------------------------- template


@pytest.mark.parametrize("family", ALL, ids=lambda f: f.name)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_jinja_and_python_render_the_same_text(family, generation_prompt):
    jinja = family.template.jinja()
    for messages in CONVERSATIONS:
        assert jinja_render(jinja, messages, generation_prompt) == family.template.render(
            messages, generation_prompt
        )


@pytest.mark.parametrize("family", ALL, ids=lambda f: f.name)
def test_render_is_the_published_chatml_form(family):
    """One conversation written out by hand from upstream's ``internvl2_5`` conversation template
    (both families train with it): system turn, then each turn as <|im_start|>role\\n...<|im_end|>\\n."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Sure?"},
    ]
    expected = (
        f"<|im_start|>system\n{SYSTEM_2_5}<|im_end|>\n"
        "<|im_start|>user\n<IMG_CONTEXT>\nColour?<|im_end|>\n"
        "<|im_start|>assistant\nRed.<|im_end|>\n"
        "<|im_start|>user\nSure?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert family.template.render(messages, add_generation_prompt=True) == expected
    assert jinja_render(family.template.jinja(), messages, True) == expected


@pytest.mark.parametrize("family", ALL, ids=lambda f: f.name)
@pytest.mark.parametrize("system", [..., None, "Answer briefly."])
def test_training_segments_are_the_rendered_conversation(family, system):
    """The collator's and the SFT encoder's text (segments, prompt_text) is the rendered conversation."""
    turns = [("user", "Name a colour."), ("assistant", "Red."), ("user", "Another?"), ("assistant", "Blue.")]
    template = family.template
    messages = [{"role": role, "content": text} for role, text in turns]
    if system is None:
        expected = "".join(f"<|im_start|>{r}\n{t}<|im_end|>\n" for r, t in turns)
    else:
        head = [{"role": "system", "content": template.system_message if system is ... else system}]
        expected = template.render(head + messages)
    assert "".join(text for text, _ in template.segments(turns, system)) == expected
    assert [text for text, supervised in template.segments(turns, system) if supervised] == [
        "Red.<|im_end|>",
        "Blue.<|im_end|>",
    ]
    question = "What is 2 + 2?"
    assert template.prompt_text(question) == template.render([{"role": "user", "content": question}], True)


@pytest.mark.parametrize("family_name", list(families.FAMILIES))
def test_processor_chat_template_gives_the_collator_ids(tmp_path, family_name):
    """The Jinja written into a checkpoint, run by the processor on an image conversation, gives the ids the
    MPO collator builds for the same question (the processor expands <IMG_CONTEXT> by the tiles)."""
    model = build_tiny_model(tmp_path / "m", family=family_name)
    processor = load_processor(model)
    assert families.of_processor(processor).name == family_name
    assert processor.chat_template == families.get(family_name).template.jinja()
    (tmp_path / "red.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (128, 64), (220, 30, 30)).save(tmp_path / "red.png")
    image = Image.open(tmp_path / "red.png").convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(text=text, images=[image], return_tensors="pt")["input_ids"][0].tolist()
    record = {
        "image_paths": [str(tmp_path / "red.png")],
        "question": "<image>\nWhat colour?",
        "chosen": "red",
        "rejected": "blue",
        "max_dynamic_patch": 6,
    }
    prompt, *_ = PreferenceCollator(processor).encode(record)
    assert ids == prompt
    assert ids.count(processor.image_token_id) == 3 * 16  # 2 x 1 grid + thumbnail, 16 tokens per tile


def test_convert_records_the_family_both_ways(tmp_path):
    """``mpo convert --family internvl3``: the native config carries it (so training and loading see
    InternVL3), converting back writes it into the original config with upstream's template name."""
    src = REPO / "tests" / "fixtures" / "upstream"
    assert (
        cli_main(["convert", str(src / "qwen2_ln"), str(tmp_path / "native"), "--family", "internvl3"]) == 0
    )
    assert json.loads((tmp_path / "native" / "config.json").read_text())["mpo_family"] == "internvl3"
    assert checkpoint_family(tmp_path / "native") is internvl3.FAMILY
    assert cli_main(["convert", str(tmp_path / "native"), str(tmp_path / "back"), "--to", "original"]) == 0
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (back["mpo_family"], back["template"]) == ("internvl3", "internvl2_5")
    with pytest.raises(UserError, match="unsupported LLM architecture 'InternLM2ForCausalLM' for InternVL3"):
        convert.convert(src / "internlm2_rms", tmp_path / "refused", family="internvl3")
