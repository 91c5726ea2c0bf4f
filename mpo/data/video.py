"""Video files (``"video": "clip.mp4"``): how many frames, which ones, and decoding them (PyAV).

Frames are chosen as InternVL's training data loader chooses them (``get_frame_indices`` in
``internvl_chat/internvl/train/dataset.py``): a video of ``V`` frames shown as ``n`` frames is cut
into ``k = min(n, V)`` segments at the integer points ``s_j = int(j * V / k)``, j = 0..k, and
segment j covers frames ``s_j .. s_{j+1} - 1``. Then

- ``middle`` (deterministic): frame ``(s_j + s_{j+1} - 1) // 2`` of each segment;
- ``rand`` (training augmentation): one frame drawn uniformly from ``s_j .. s_{j+1} - 2`` of each
  segment; when a segment is a single frame (that range is empty) InternVL falls back to ``k``
  distinct frames drawn uniformly from the whole video, sorted.

When ``V < n`` the last chosen frame is repeated up to ``n`` frames. Each frame is one tile
(``max_dynamic_patch`` 1) and is shown as ``Frame{i}: <image>`` (:func:`mpo.data.template.normalize_question`).

The frame count: InternVL draws ``n`` uniformly from ``[min_num_frame, max_num_frame]`` (8 and 32
by default, here per meta.json subset) at every access. Here ``n`` is drawn once per video, from
its path as written in the row (:func:`num_frames_for`): token counts are then known when the data
is loaded (length filter, packing), precomputed reference log-probs apply to the same frames, and
pairs built from a video are trained on as many frames. ``rand`` positions are redrawn at every
SFT training collation; everything else (MPO, reference pass, evaluation, pair building) uses
``middle``.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from PIL import Image

# InternVL's defaults (``min_num_frame`` / ``max_num_frame`` of its training scripts).
MIN_NUM_FRAME = 8
MAX_NUM_FRAME = 32
SAMPLING = ("middle", "rand")


def num_frames_for(video: str, min_num_frame: int, max_num_frame: int) -> int:
    """Frames shown for ``video`` (its path as written in the row): ``min + h mod (max - min + 1)``
    with ``h`` the first 8 bytes of SHA-256 of the path, so every tool shows a video with as many frames."""
    span = max_num_frame - min_num_frame + 1
    h = int.from_bytes(hashlib.sha256(video.encode()).digest()[:8], "big")
    return min_num_frame + h % span


def segment_bounds(num_frames: int, video_length: int) -> list[tuple[int, int]]:
    """(first, last) frame of each of the ``min(num_frames, video_length)`` segments."""
    k = min(num_frames, video_length)
    cuts = [int(j * video_length / k) for j in range(k + 1)]
    return [(cuts[j], cuts[j + 1] - 1) for j in range(k)]


def frame_indices(
    num_frames: int, video_length: int, sample: str = "middle", rng: random.Random | None = None
) -> list[int]:
    """The ``num_frames`` frame numbers to show (see the module docstring for the rule)."""
    if video_length < 1 or num_frames < 1:
        raise ValueError(f"cannot sample {num_frames} frames from a video of {video_length} frames")
    bounds = segment_bounds(num_frames, video_length)
    if sample == "middle":
        chosen = [(first + last) // 2 for first, last in bounds]
    elif sample == "rand":
        rng = rng or random.Random()
        if all(last > first for first, last in bounds):
            chosen = [rng.randrange(first, last) for first, last in bounds]
        else:
            chosen = sorted(rng.sample(range(video_length), len(bounds)))
    else:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sample!r}")
    return chosen + [chosen[-1]] * (num_frames - len(chosen))


def probe_video(path: Path) -> tuple[int, int, int]:
    """(width, height, frame count) of a video file, without decoding it; ``ValueError`` when the
    file is missing, not a video, or has no frames. The count is the container's, else the number of
    video packets."""
    if not path.is_file():
        raise ValueError(f"missing video {path}")
    import av  # PyAV loads FFmpeg: only when a video is read

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"no video stream in {path}")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError as err:
        raise ValueError(f"corrupt video {path} ({err})") from None
    if count < 1 or not width or not height:
        raise ValueError(f"corrupt video {path} (no frames)")
    return width, height, count


def read_frames(path: Path, indices: list[int]) -> list[Image.Image]:
    """Decode the frames numbered ``indices`` (in decode order, 0-based; repeats allowed) as RGB
    images; ``ValueError`` when the file cannot be decoded or ends before the last wanted frame."""
    wanted = set(indices)
    found: dict[int, Image.Image] = {}
    import av  # PyAV loads FFmpeg: only when a video is read

    try:
        with av.open(str(path)) as container:
            for number, frame in enumerate(container.decode(video=0)):
                if number in wanted:
                    found[number] = frame.to_image().convert("RGB")
                    if len(found) == len(wanted):
                        break
    except (av.FFmpegError, FileNotFoundError) as err:
        raise ValueError(f"corrupt or missing video {path} ({err})") from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise ValueError(f"corrupt video {path} (frame {missing[0]} could not be decoded)")
    return [found[i] for i in indices]
