"""The InternVL2.5 conversation template (ChatML with a fixed system message).

One conversation renders as::

    <|im_start|>system\n{SYSTEM}<|im_end|>\n
    <|im_start|>user\n{question, each <image> expanded}<|im_end|>\n
    <|im_start|>assistant\n{answer}<|im_end|>\n

and each ``<image>`` placeholder expands to ``<img>`` + ``<IMG_CONTEXT>`` x (tiles x tokens per tile)
+ ``</img>``. Everything in the project that turns text into model input goes through here, and the
tiny model's Jinja chat template (``chat_template_jinja``) renders the same strings.
"""

from __future__ import annotations

import functools

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
# The InternVL2.5 special tokens, in the order the original tokenizers add them.
SPECIAL_TOKENS = [
    ENDOFTEXT, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT,
    "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>", VIDEO_PLACEHOLDER,
]  # fmt: skip

# InternVL2.5's default system message (the original `internvl2_5` conversation template).
SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)


def image_tokens(num_tiles: int, tokens_per_tile: int) -> str:
    """The text that stands for one image of ``num_tiles`` tiles (thumbnail included)."""
    return IMG_START + IMG_CONTEXT * (num_tiles * tokens_per_tile) + IMG_END


def normalize_question(question: str, num_images: int, video: bool = False) -> str:
    """Put the image placeholders where the model expects them.

    Single image without ``<image>`` gets ``<image>\\n`` prepended (MMPR convention); a video (frame
    list) without placeholders gets ``Frame{i}: <image>`` lines; otherwise the count must match.
    """
    found = question.count(IMAGE_PLACEHOLDER)
    if found == num_images:
        return question
    if found == 0 and video:
        frames = "".join(f"Frame{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(num_images))
        return frames + question.replace(VIDEO_PLACEHOLDER + "\n", "").replace(VIDEO_PLACEHOLDER, "")
    if found == 0:
        return "".join(f"{IMAGE_PLACEHOLDER}\n" for _ in range(num_images)) + question
    raise ValueError(f"question has {found} {IMAGE_PLACEHOLDER} placeholders but {num_images} images")


def expand_images(text: str, tiles_per_image: list[int], tokens_per_tile: int) -> str:
    """Replace the i-th ``<image>`` by the image tokens of the i-th image."""
    parts = text.split(IMAGE_PLACEHOLDER)
    if len(parts) - 1 != len(tiles_per_image):
        raise ValueError(f"{len(parts) - 1} {IMAGE_PLACEHOLDER} placeholders for {len(tiles_per_image)} images")
    out = [parts[0]]
    for tiles, tail in zip(tiles_per_image, parts[1:], strict=True):
        out += [image_tokens(tiles, tokens_per_tile), tail]
    return "".join(out)


def render_turns(turns: list[tuple[str, str]], system: str | None = SYSTEM_MESSAGE) -> list[tuple[str, bool]]:
    """Render (role, text) turns into text segments flagged with whether they are supervised.

    Assistant replies and their closing ``<|im_end|>`` are supervised; everything else is not.
    """
    segments: list[tuple[str, bool]] = []
    if system is not None:
        segments.append((f"{IM_START}system\n{system}{IM_END}\n", False))
    for role, text in turns:
        if role == "assistant":
            segments.append((f"{IM_START}assistant\n", False))
            segments.append((f"{text}{IM_END}", True))
            segments.append(("\n", False))
        else:
            segments.append((f"{IM_START}{role}\n{text}{IM_END}\n", False))
    return segments


def prompt_text(question: str, system: str | None = SYSTEM_MESSAGE) -> str:
    """The prompt for one user question, ending with the assistant header (generation prompt)."""
    head = "".join(text for text, _ in render_turns([("user", question)], system))
    return head + f"{IM_START}assistant\n"


@functools.lru_cache(maxsize=8)  # called for every record: tokenise the probe once per tokenizer
def _leading_special_ids(tokenizer) -> tuple[int, ...]:
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start])
    return ()


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer itself puts before any text: ``<s>`` for InternLM2, none for Qwen2.

    Upstream InternVL tokenizes whole conversations with the special tokens on (``chat()`` and its
    training preprocessing), so an InternLM2-based checkpoint (2B, 8B, 26B) always saw ``<s>`` first.
    Prompts here are rendered and tokenised in pieces with the special tokens off; each sequence gets
    these ids once, at its start. Read from the tokenizer, so no family is named here.
    """
    return list(_leading_special_ids(tokenizer))


def response_text(answer: str) -> str:
    """A supervised assistant reply: the answer and the closing ``<|im_end|>``."""
    return f"{answer}{IM_END}"


# Jinja version of the template, for `processor.apply_chat_template` users. Images in message
# content render as `<IMG_CONTEXT>\n` (the processor expands them), like transformers' InternVL.
CHAT_TEMPLATE_JINJA = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + SYSTEM_MESSAGE + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<IMG_CONTEXT>\\n' }}"
    "{%- elif content['type'] == 'video' %}{{- '<video>\\n' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
