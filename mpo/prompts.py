"""Question prompts: how a question, its options and the answer instruction become one user turn.

The SFT data, the preference-data builders and evaluation all build prompts here, so a model is
evaluated with exactly the prompts it was trained on. Direct answers end with the multiple-choice
or short-answer instruction; chain-of-thought answers end with :data:`COT_INSTRUCTION` (the MPO
format: reasoning, then ``Final answer: ..``).
"""

from __future__ import annotations

__all__ = [
    "COT_INSTRUCTION",
    "KNOWN_INSTRUCTIONS",
    "MC_INSTRUCTION",
    "SHORT_INSTRUCTION",
    "answer_instruction",
    "build_question",
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
)


def answer_instruction(multiple_choice: bool, cot: bool = False) -> str:
    """The last line of a prompt: CoT, multiple-choice letter, or single word/phrase."""
    return COT_INSTRUCTION if cot else MC_INSTRUCTION if multiple_choice else SHORT_INSTRUCTION


def build_question(
    core: str,
    num_images: int,
    choices: dict[str, str] | None = None,
    cot: bool = False,
    *,
    list_options: bool = True,
) -> str:
    """The full prompt: image placeholders, the question, the options (MC) and the answer instruction.

    One image: ``<image>\\n`` first; several: one ``Image-k: <image>`` line each (unless ``core``
    already carries them); none: text only. The instruction is ``COT_INSTRUCTION`` when ``cot``,
    otherwise the direct multiple-choice or short-answer instruction. ``list_options=False`` keeps
    the options out of the prompt (for questions that already list them) but still asks for a letter.
    """
    if num_images == 1 and "<image>" not in core:
        core = "<image>\n" + core
    elif num_images > 1 and core.count("<image>") != num_images:
        core = "".join(f"Image-{k + 1}: <image>\n" for k in range(num_images)) + core
    lines = [core]
    if choices and list_options:
        lines += [f"{letter}. {option}" for letter, option in choices.items()]
    lines.append(answer_instruction(bool(choices), cot))
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
