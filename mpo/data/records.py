"""The two record types, each defined once: a preference pair (:func:`mpo.data.mmpr.load_mmpr`) and an
SFT sample (:func:`mpo.data.sft_data.load_sft`).

Records are plain dicts at runtime (a ``datasets.Dataset`` and the DataLoaders carry them); these
TypedDicts name their keys and types. Both name their files ``image_paths``: TRL (1.16) takes a dataset
column ``image`` or ``images`` for vision data and then switches on its own vision branches, which the
preference trainer replaces (see :mod:`mpo.trainer`).
"""

from typing import Annotated, NotRequired, TypedDict, get_type_hints

from mpo.data.images import tile_budget
from mpo.data.meta import RowVisuals, Subset

MODEL_INPUT = (
    "model input"  # marks a field that changes what the model sees (``Annotated[type, MODEL_INPUT]``)
)


class PreferenceRecord(TypedDict):
    """One preference pair. The fields marked ``MODEL_INPUT`` are what the reference log-prob cache hashes
    (:func:`mpo.ref_cache.dataset_fingerprint`), in this order; the image files' sizes and times are
    hashed besides, and the rest follows from them and from the question."""

    image_paths: Annotated[list[str], MODEL_INPUT]  # image files, video frames, or one video file
    image_sizes: list[list[int]]  # (width, height) of every image shown
    is_video: bool
    video_frames: list[int]  # of a video file: the frames shown (``middle`` sampling); else empty
    question: Annotated[str, MODEL_INPUT]  # with one ``<image>`` per image shown
    chosen: Annotated[str, MODEL_INPUT]
    rejected: Annotated[str, MODEL_INPUT]
    max_dynamic_patch: Annotated[int, MODEL_INPUT]  # tiles per image
    subset: str
    source: str  # ``file:line``
    metadata: str  # the row's other keys, as JSON
    ref_chosen_logps: NotRequired[float]  # set by the reference pass
    ref_rejected_logps: NotRequired[float]


class SFTRecord(TypedDict):
    """One SFT sample: a conversation and what it shows."""

    image_paths: list[str]  # image files, video frames, or one video file
    image_sizes: list[list[int]]
    is_video: bool
    video_frames: list[int]  # of a video file: the load-time ``middle`` frames (training redraws them)
    max_dynamic_patch: int
    video_length: int  # frames of a video file, else 0
    system: str | None  # the row's system message (None: the template's)
    turns: list[list[str]]  # [[role, text], ...], roles ``user`` / ``assistant``
    data_augment: bool  # JPEG augmentation in training
    subset: str
    source: str  # ``file:line``
    length: NotRequired[int]  # tokens, image tokens included (set by ``load_sft``)
    supervised_tokens: NotRequired[int]


def model_input_keys(record_type: type) -> tuple[str, ...]:
    """The keys of ``record_type`` marked ``MODEL_INPUT``, in the order they are declared."""
    hints = get_type_hints(record_type, include_extras=True)
    return tuple(k for k, hint in hints.items() if MODEL_INPUT in getattr(hint, "__metadata__", ()))


def visual_fields(visuals: RowVisuals, subset: Subset) -> dict:
    """The fields both record types take from a row's images: its files, their sizes, the video's frames,
    and the tiles per image (one per video frame, else the subset's budget split across the images)."""
    n = len(visuals.sizes)
    return {
        "image_paths": [str(p) for p in visuals.paths],
        "image_sizes": visuals.sizes,
        "is_video": visuals.is_video,
        "video_frames": visuals.frames,
        "max_dynamic_patch": 1 if visuals.is_video else tile_budget(subset.max_dynamic_patch, n),
    }
