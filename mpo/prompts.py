"""Question prompts: how a question, its options and the answer instruction become one user turn.

The SFT data, the preference-data builders and evaluation all build prompts here, so a model is
evaluated with exactly the prompts it was trained on. Direct answers end with the multiple-choice
or short-answer instruction; chain-of-thought answers end with :data:`COT_INSTRUCTION` (the MPO
format: reasoning, then ``Final answer: ..``).
"""

from __future__ import annotations

import re

__all__ = [
    "COT_INSTRUCTION",
    "KNOWN_INSTRUCTIONS",
    "MC_INSTRUCTION",
    "SHORT_INSTRUCTION",
    "answer_instruction",
    "build_question",
    "cot_question",
    "options_listed",
    "parse_choices",
    "strip_answer_format",
    "strip_instruction",
]

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
COT_INSTRUCTION = 'Answer the question step by step and end with "Final answer: .."'
# Trailing answer-format instructions that :func:`strip_instruction` removes: ours, and the usual
# ones of public benchmarks (VLMEvalKit, LLaVA, MME).
KNOWN_INSTRUCTIONS = (
    MC_INSTRUCTION,
    SHORT_INSTRUCTION,
    COT_INSTRUCTION,
    "Answer with the option's letter from the given choices directly",
    "Answer the question using a single word or phrase",
    "Please answer yes or no.",
    "Please answer yes or no",
    "Answer yes or no.",
    "Please select the correct answer from the options above.",
    "Answer with the option letter from the given choices directly.",
    "Answer the question directly.",
)


def answer_instruction(multiple_choice: bool, cot: bool = False) -> str:
    """The last line of a prompt: CoT, multiple-choice letter, or single word/phrase."""
    return COT_INSTRUCTION if cot else MC_INSTRUCTION if multiple_choice else SHORT_INSTRUCTION


def parse_choices(value) -> dict[str, str] | None:
    """A row's ``choices`` as ``{letter: option text}``: a dict keyed by capital letters, or a list
    of option texts (lettered A, B, ...). Empty or absent: ``None``. Anything else: ``ValueError``."""
    if value in (None, {}, []):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and len(value) <= 26:
        return {chr(ord("A") + i): v for i, v in enumerate(value)}
    if isinstance(value, dict) and all(
        isinstance(k, str) and len(k.strip()) == 1 and k.strip().isupper() and isinstance(v, str)
        for k, v in value.items()
    ):
        return {k.strip(): v for k, v in value.items()}
    raise ValueError('expected {"A": "option text", ...} or a list of option texts')


def options_listed(text: str, choices: dict[str, str]) -> bool:
    """Whether every option already appears in ``text`` on its own line ("A. cat", "(A) cat", "A) cat",
    "A: cat")."""
    lines = {" ".join(line.split()) for line in text.splitlines()}
    for letter, option in choices.items():
        forms = (f"{letter}. {option}", f"({letter}) {option}", f"{letter}) {option}", f"{letter}: {option}")
        if not any(" ".join(form.split()) in lines for form in forms):
            return False
    return True


def build_question(
    core: str,
    num_images: int | None,
    choices: dict[str, str] | None = None,
    cot: bool = False,
    *,
    instruction: str | None = None,
    hint: str | None = None,
) -> str:
    """The full prompt: image placeholders, hint, the question, the options (MC) and the answer instruction.

    One image: ``<image>\\n`` first; several: one ``Image-k: <image>`` line each (unless ``core``
    already carries them); none: text only; ``num_images=None`` leaves placeholders as they are.
    ``hint`` becomes a ``Hint: ...`` line before the question. The options are listed one per line
    (``A. text``) unless the question already lists them all (:func:`options_listed`). The last
    line is ``instruction`` when given (``""``: none), else ``COT_INSTRUCTION`` when ``cot``, else
    the direct multiple-choice or short-answer instruction. Evaluation and the pair builders both
    build their prompts here, so a row is shown the same way to both.
    """
    if hint:
        core = f"Hint: {hint}\n{core}"
    if num_images == 1 and "<image>" not in core:
        core = "<image>\n" + core
    elif num_images is not None and num_images > 1 and core.count("<image>") != num_images:
        core = "".join(f"Image-{k + 1}: <image>\n" for k in range(num_images)) + core
    lines = [core]
    if choices and not options_listed(core, choices):
        lines += [f"{letter}. {option}" for letter, option in choices.items()]
    if instruction is None:
        instruction = answer_instruction(bool(choices), cot)
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)


def strip_instruction(question: str) -> str:
    """``question`` without a trailing answer-format instruction (any of :data:`KNOWN_INSTRUCTIONS`).

    Only an instruction at the very end is removed (on its own line or after the last sentence),
    repeatedly, so ``"...?\\nAnswer the question using a single word or phrase."`` becomes ``"...?"``.
    """
    text = question.rstrip()
    longest_first = sorted(KNOWN_INSTRUCTIONS, key=len, reverse=True)
    changed = True
    while changed:
        changed = False
        for instruction in longest_first:
            head = text[: len(text) - len(instruction)]
            if text.lower().endswith(instruction.lower()) and (not head or head[-1].isspace()):
                text, changed = head.rstrip(), True
                break
    return text


# A last line (not the first, and not a question: no "?") that only tells how to format the answer,
# in the wording of public benchmarks that :data:`mpo.prompts.KNOWN_INSTRUCTIONS` doesn't list: it
# starts with answer/respond/reply (or "please ...") and names a format (a letter, a word or phrase,
# yes or no, a number, directly, ...).
_FORMAT_LINE = re.compile(
    r"\n[ \t]*(?:please[ \t]+)?(?:answer|respond|reply)\b[^\n?]*"
    r"\b(?:letter|single word|phrase|yes or no|directly|number|integer|format|option|step by step)\b[^\n?]*$",
    re.IGNORECASE,
)


def strip_answer_format(question: str) -> str:
    """``question`` without its trailing answer-format instructions.

    The known instructions of :func:`mpo.prompts.strip_instruction` first, then any last line that
    only says how to format the answer ("Please answer with the letter of the correct option.").
    The first line is never removed, so a question is never emptied.
    """
    text = strip_instruction(question)
    while True:
        match = _FORMAT_LINE.search(text)
        if match is None or not text[: match.start()].strip():
            return text
        text = strip_instruction(text[: match.start()].rstrip())


def cot_question(
    question: str, instruction: str = COT_INSTRUCTION, choices: dict[str, str] | None = None
) -> str:
    """The chain-of-thought prompt: the question without its answer-format instruction, the options
    of ``choices`` unless the question lists them already, then ``instruction`` (by default the one
    the synthetic SFT data teaches, ending in "Final answer: .."). Built by
    :func:`mpo.prompts.build_question`, as evaluation builds its prompts."""
    return build_question(strip_answer_format(question), None, choices, cot=True, instruction=instruction)
