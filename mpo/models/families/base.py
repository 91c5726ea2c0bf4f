"""What a model family is: the facts about one line of checkpoints that the rest of the code asks for.

A :class:`Family` holds the chat template (rendered in Python for training and generation, and as the
Jinja ``chat_template`` written into checkpoints, both from one :class:`ChatTemplate`), the special
tokens, the tiling and tokens per tile, the names of the vision / projector / LLM parts, and the
conversion rules between the original OpenGVLab layout and transformers' native one. Each family is one
module of :mod:`mpo.models.families`; :func:`mpo.models.families.detect` picks one from a config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import EllipsisType

# The processor attribute that carries its family (set where a processor is loaded or built).
PROCESSOR_ATTRIBUTE = "mpo_family"


@dataclass(frozen=True)
class Tokens:
    """The special tokens of a family's tokenizer, in the order the original tokenizers add them."""

    img_start: str
    img_end: str
    img_context: str
    video: str
    turn_start: str
    turn_end: str
    pad: str
    extra: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        """Every special token: pad, the turn markers, the image markers, ``extra``, the video placeholder."""
        return (
            self.pad,
            self.turn_start,
            self.turn_end,
            self.img_start,
            self.img_end,
            self.img_context,
            *self.extra,
            self.video,
        )

    @property
    def required(self) -> tuple[str, ...]:
        """The tokens a checkpoint's tokenizer must hold (the template and the image text use them)."""
        return (self.turn_start, self.turn_end, self.img_start, self.img_end, self.img_context)

    def image_text(self, num_tiles: int, tokens_per_tile: int) -> str:
        """The text that stands for one image of ``num_tiles`` tiles: start, tiles x tokens per tile
        context tokens, end."""
        return self.img_start + self.img_context * (num_tiles * tokens_per_tile) + self.img_end


@dataclass(frozen=True)
class ChatTemplate:
    """A ChatML-style template: each message is ``{turn_start}{role}\\n{content}{turn_end}\\n``.

    ``system_message`` (or ``None``) opens every conversation that does not start with its own system
    message. In message-dict form (``apply_chat_template``), an image item renders as ``image_item`` and a
    video item as ``video_item``; the processor expands them. :meth:`render` (Python) and :meth:`jinja`
    (the Jinja string written into checkpoints) are built from these fields alone, and the tests render
    both on the same conversations; :meth:`segments` is the training form of :meth:`render`.
    """

    system_message: str | None
    turn_start: str = "<|im_start|>"
    turn_end: str = "<|im_end|>"
    image_item: str = "<IMG_CONTEXT>\n"
    video_item: str = "<video>\n"

    def header(self, role: str) -> str:
        return f"{self.turn_start}{role}\n"

    @property
    def footer(self) -> str:
        return f"{self.turn_end}\n"

    def _system(self, system: str | None | EllipsisType) -> str | None:
        return self.system_message if system is ... else system

    def segments(
        self, turns: list[tuple[str, str]], system: str | None | EllipsisType = ...
    ) -> list[tuple[str, bool]]:
        """(role, text) turns as text segments flagged with whether they are supervised.

        ``system``: the system message (``...``: the template's, ``None``: none). Assistant replies and
        their closing ``turn_end`` are supervised; everything else is not.
        """
        out: list[tuple[str, bool]] = []
        system = self._system(system)
        if system is not None:
            out.append((self.header("system") + system + self.footer, False))
        for role, text in turns:
            if role == "assistant":
                out += [(self.header("assistant"), False), (self.response_text(text), True), ("\n", False)]
            else:
                out.append((self.header(role) + text + self.footer, False))
        return out

    def prompt_text(self, question: str, system: str | None | EllipsisType = ...) -> str:
        """The prompt for one user question, ending with the assistant header (generation prompt)."""
        return "".join(text for text, _ in self.segments([("user", question)], system)) + self.header(
            "assistant"
        )

    def response_text(self, answer: str) -> str:
        """A supervised assistant reply: the answer and the closing ``turn_end``."""
        return f"{answer}{self.turn_end}"

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """What :meth:`jinja` renders for ``messages`` (``{"role", "content"}`` dicts, content a string or
        a list of ``{"type": "text" | "image" | "video"}`` items), computed in Python."""
        out = []
        if self.system_message is not None and (not messages or messages[0]["role"] != "system"):
            out.append(self.header("system") + self.system_message + self.footer)
        items = {"image": self.image_item, "video": self.video_item}
        for message in messages:
            content = message["content"]
            if not isinstance(content, str):
                content = "".join(
                    c["text"] if c["type"] == "text" else items.get(c["type"], "") for c in content
                )
            out.append(self.header(message["role"]) + content + self.footer)
        if add_generation_prompt:
            out.append(self.header("assistant"))
        return "".join(out)

    def jinja(self) -> str:
        """The Jinja ``chat_template`` of this template (``processor.apply_chat_template``)."""

        def literal(text: str) -> str:  # a Jinja string literal
            return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

        system = ""
        if self.system_message is not None:
            text = self.header("system") + self.system_message + self.footer
            system = (
                "{%- if messages|length == 0 or messages[0]['role'] != 'system' %}{{- "
                + literal(text)
                + " }}{%- endif %}"
            )
        return (
            system
            + "{%- for message in messages %}"
            + "{{- "
            + literal(self.turn_start)
            + " + message['role'] + '\\n' }}"
            + "{%- if message['content'] is string %}{{- message['content'] }}"
            + "{%- else %}{%- for item in message['content'] %}"
            + "{%- if item['type'] == 'text' %}{{- item['text'] }}"
            + "{%- elif item['type'] == 'image' %}{{- "
            + literal(self.image_item)
            + " }}"
            + "{%- elif item['type'] == 'video' %}{{- "
            + literal(self.video_item)
            + " }}"
            + "{%- endif %}{%- endfor %}{%- endif %}"
            + "{{- "
            + literal(self.footer)
            + " }}"
            + "{%- endfor %}"
            + "{%- if add_generation_prompt %}{{- "
            + literal(self.header("assistant"))
            + " }}{%- endif %}"
        )


@dataclass(frozen=True)
class Tiling:
    """Dynamic high-resolution tiling: up to ``max_tiles`` square tiles of ``tile_size`` px plus a
    thumbnail; each tile is (tile / patch)^2 patches, ``downsample_ratio``^2 of them per image token
    after pixel unshuffle."""

    tile_size: int = 448
    patch_size: int = 14
    downsample_ratio: float = 0.5
    min_tiles: int = 1
    max_tiles: int = 12

    @property
    def tokens_per_tile(self) -> int:
        """(tile_size / patch_size)^2 x downsample_ratio^2 (InternVL: (448 / 14)^2 / 4 = 256)."""
        return tokens_per_tile(self.tile_size, self.patch_size, self.downsample_ratio)


def tokens_per_tile(tile_size: int, patch_size: int, downsample_ratio: float = 0.5) -> int:
    """Image tokens per tile: (tile / patch)^2 patches times downsample_ratio^2 (pixel unshuffle)."""
    return int((tile_size // patch_size) ** 2 * downsample_ratio**2)


@dataclass(frozen=True)
class Parts:
    """Native parameter-name prefixes of the vision tower, the projector and the LLM (lm_head included),
    and where the vision layers sit (the drop-path hooks go there)."""

    prefixes: dict[str, tuple[str, ...]]
    vision_layers: str

    def part_of(self, param_name: str) -> str:
        """The part ("vision", "projector" or "llm") a native parameter name belongs to."""
        name = param_name.removeprefix("base_model.model.")  # peft-wrapped models
        for part, prefixes in self.prefixes.items():
            if name.startswith(prefixes):
                return part
        raise ValueError(f"parameter {param_name!r} belongs to no part ({', '.join(self.prefixes)})")


@dataclass(frozen=True)
class Conversion:
    """How the original OpenGVLab layout of a family maps onto the native one.

    ``llm_architectures``: original LLM architecture -> the key-mapping rule set of
    :mod:`mpo.models.convert` (``qwen2``, ``internlm2``); an architecture not listed is refused.
    ``original_template``: the ``template`` the original config.json names (upstream's conversation
    template). ``original_names``: the original checkpoints, for messages.
    """

    llm_architectures: dict[str, str]
    original_template: str
    original_names: str


@dataclass(frozen=True)
class Family:
    """One model family: see the module docstring. ``tiny_llms``: the LLM kinds ``mpo tiny`` builds for
    it (``qwen2``, ``llama``); ``recipes``: its folder under recipes/."""

    name: str
    title: str
    template: ChatTemplate
    tokens: Tokens
    tiling: Tiling
    parts: Parts
    conversion: Conversion
    tiny_llms: tuple[str, ...]
    recipes: str
