"""The synthetic visual question-answering task: the embedded default data.

Images of coloured shapes (circle, square, triangle, diamond in six colours) on a white background,
drawn with PIL without anti-aliasing, so that every question has an exact answer that can be read
back from the pixels. Seven skills, each at three difficulty levels (more and smaller shapes, closer
margins):

==============  ==========================================================================
colour          colour of the single shape (1) / of the clearly largest shape (2, 3)
count           number of shapes (1-2 / 3-4 / 5-6), or of the shapes of one colour (3)
position        shape or colour of the leftmost / rightmost / topmost / bottommost shape
shape           shape of the only object of a given colour
compare         "is there a red circle?" (1), "more red than blue?" (2), most frequent colour (3)
multi_image     "Image-1: <image>\\nImage-2: <image>\\nWhich image has more shapes?" (2-3 images)
arithmetic      text-only "What is 3 + 4?" (so every input shape exists)
==============  ==========================================================================

Each question is asked either as multiple choice (options in the question, the ground truth is the
letter) or as a short answer (a word or a number). ``mpo synthetic OUT`` writes three disjoint
splits: ``OUT/sft`` (InternVL meta.json + conversations, 30 % of them chain-of-thought answers
ending in ``Final answer: X``), ``OUT/qa`` (questions with ground truth and the true chain of thought,
``reasoning``, for the correctness-based preference pipeline) and ``OUT/eval/eval.tsv`` (VLMEvalKit
TSV, with the same ``reasoning``). A chain of thought lists the shapes it reads by colour ("I see a red
shape and a blue shape."), names a kind where the question asks for one, and ends in its conclusion.
Splits never share a scene: every scene (or text-only question) is hashed into one of ten buckets and
each split only takes its own buckets. Everything is deterministic for a seed.

The parts, in the order a record is made:

==========================  ===================================================================
``scenes``                  colours, shapes, sizes; placing shapes and drawing a scene
``wording``                 how a chain of thought words what it sees (shapes listed by colour)
``item``                    :class:`Item`, one question with its exact answer and reasoning
``skills_reading``          colour, count, position, shape questions
``skills_reasoning``        compare, multi-image, arithmetic questions
``samples``                 the plan of (skill, difficulty, format), the split buckets, the formats
``splits``                  :func:`generate`: the three splits, their images, the disjointness check
``writers``                 the files: sft/ and qa/ (meta.json + jsonl), eval/eval.tsv
``chance``                  :func:`chance_accuracy`, the accuracy of a random guess
``cli``                     ``mpo synthetic`` (also ``python -m data_builders.synthetic``)
==========================  ===================================================================
"""

from __future__ import annotations

from data_builders.synthetic.chance import chance_accuracy
from data_builders.synthetic.item import YES_NO, Item
from data_builders.synthetic.samples import (
    BUCKETS,
    COT_FRACTION,
    FORMATS,
    LETTERS,
    SKILL_WEIGHTS,
    SKILLS,
    SPLITS,
    Sample,
    bucket,
    make_item,
    make_sample,
)
from data_builders.synthetic.scenes import (
    BACKGROUND,
    COLOURS,
    COUNT_RANGE,
    GAP,
    IMAGE_SIZES,
    MARGIN,
    MAX_SHAPES,
    POSITION_MIN_SEPARATION,
    SHAPES,
    SIZE_RANGE,
    TILE,
    Scene,
    Shape,
    Sizes,
    image_tiles,
    render,
    shape_area,
    sizes_up_to,
)
from data_builders.synthetic.splits import generate
from data_builders.synthetic.writers import EVAL_COLUMNS
from mpo.prompts import COT_INSTRUCTION, MC_INSTRUCTION, SHORT_INSTRUCTION, build_question

__all__ = [
    "BACKGROUND",
    "BUCKETS",
    "COLOURS",
    "COT_FRACTION",
    "COT_INSTRUCTION",
    "COUNT_RANGE",
    "EVAL_COLUMNS",
    "FORMATS",
    "GAP",
    "IMAGE_SIZES",
    "LETTERS",
    "MARGIN",
    "MAX_SHAPES",
    "MC_INSTRUCTION",
    "POSITION_MIN_SEPARATION",
    "SHAPES",
    "SHORT_INSTRUCTION",
    "SIZE_RANGE",
    "SKILLS",
    "SKILL_WEIGHTS",
    "SPLITS",
    "TILE",
    "YES_NO",
    "Item",
    "Sample",
    "Scene",
    "Shape",
    "Sizes",
    "bucket",
    "build_question",
    "chance_accuracy",
    "generate",
    "image_tiles",
    "make_item",
    "make_sample",
    "render",
    "shape_area",
    "sizes_up_to",
]
