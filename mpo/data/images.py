"""Images: lazy loading, dynamic high-resolution tiling through the checkpoint's image processor,
JPEG augmentation."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

from mpo.data.video import read_frames


def check_image(path: Path) -> tuple[int, int]:
    """(width, height) of an image that decodes completely; raises ``ValueError`` naming what is wrong.

    The whole image is decoded (``Image.load``), not only its header (``Image.verify`` passes a PNG
    cut short after a valid header): a file that loads here also loads in the collator.
    """
    if not path.is_file():
        raise ValueError(f"missing image {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"corrupt image {path} ({err})") from None


def load_image(path: Path) -> Image.Image:
    """Decode an image to RGB; raises ``ValueError`` for a missing or corrupt file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
        raise ValueError(f"corrupt or missing image {path} ({err})") from None


def load_visuals(paths: list[str], frames: list[int] | None = None) -> list[Image.Image]:
    """The images of a record: each file of ``paths``, or, when ``frames`` is given, those frames of
    the single video file ``paths[0]`` (:func:`mpo.data.video.read_frames`). ``ValueError`` if any fails."""
    if frames:
        return read_frames(Path(paths[0]), list(frames))
    return [load_image(Path(p)) for p in paths]


def tile_budget(max_dynamic_patch: int, num_images: int) -> int:
    """Tiles per image: the subset's budget divided across the images of one sample (at least 1)."""
    return max(1, max_dynamic_patch // max(1, num_images))


def count_tiles(width: int, height: int, tile_size: int, max_tiles: int, min_tiles: int = 1) -> int:
    """How many tiles dynamic tiling makes (the grid plus a thumbnail when the grid has > 1 tile)."""
    cols, rows = get_optimal_tiled_canvas((height, width), (tile_size, tile_size), min_tiles, max_tiles)
    grid = cols * rows
    return grid + 1 if grid > 1 else grid


def tiling_kwargs(max_tiles: int) -> dict:
    """The image processor's arguments for dynamic tiling into at most ``max_tiles`` tiles (one tile,
    the whole image resized, when ``max_tiles`` is 1): transformers' processor, and vLLM's per prompt."""
    return {"crop_to_patches": max_tiles > 1, "max_patches": max_tiles}


def tiles_for(image_processor, images: list[Image.Image], max_tiles: int) -> tuple[torch.Tensor, list[int]]:
    """Pixel values of every tile of every image ([T, 3, H, W]) and the tile count per image."""
    out = image_processor(images=images, **tiling_kwargs(max_tiles), return_tensors="pt")
    return out["pixel_values"], [int(n) for n in out["num_patches"]]


# Random JPEG compression of the InternVL2.5 training recipe: quality drawn uniformly in this range.
JPEG_QUALITY_RANGE = (75, 100)


def blank_tile(image_processor) -> torch.Tensor:
    """One black tile [1, 3, H, W]: what a batch without images feeds the vision tower, so that every
    rank runs the same modules (DDP, ZeRO-3); its image tokens are seen by no real token."""
    size = image_processor.size
    return torch.zeros(1, 3, size["height"], size["width"])


def jpeg_compress(image: Image.Image, quality: int) -> Image.Image:
    """Encode ``image`` as JPEG at ``quality`` (1..100) and decode it again (same size, RGB)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return img.convert("RGB")
