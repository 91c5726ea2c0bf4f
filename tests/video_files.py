"""Tiny test videos whose frames say which frame they are.

Frame ``i`` of a video made by :func:`write_video` is one solid colour with red = ``RED_STEP * i``,
so the index of a decoded frame is ``round(red / RED_STEP)`` even after lossy (MPEG-4) coding.
Written with PyAV (the encoder side of the library the project decodes with).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

RED_STEP = 10  # red channel step between consecutive frames: up to 26 frames, far apart after coding


def write_video(path: Path, num_frames: int, size: tuple[int, int] = (64, 48), fps: int = 10) -> Path:
    """An MPEG-4 ``.mp4`` of ``num_frames`` solid frames (frame i: red = RED_STEP * i)."""
    assert RED_STEP * (num_frames - 1) <= 255, "too many frames for distinct colours"
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 20_000_000  # near-lossless: each frame keeps its colour
        for i in range(num_frames):
            pixels = np.zeros((height, width, 3), np.uint8)
            pixels[..., 0], pixels[..., 1], pixels[..., 2] = RED_STEP * i, 128, 64
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_number(image) -> int:
    """Which frame of a :func:`write_video` video a decoded PIL image is."""
    red = float(np.asarray(image.convert("RGB"), dtype=np.float64)[..., 0].mean())
    return round(red / RED_STEP)
