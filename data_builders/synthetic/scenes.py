"""Scenes of the synthetic task: the shapes, their colours and sizes, where they go, and how they are drawn.

Flat colours on white, drawn with PIL without anti-aliasing, so that every answer can be read back from the
pixels. Shapes never touch (``GAP``) nor the border (``MARGIN``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from random import Random

from PIL import Image, ImageDraw

from data_builders.synthetic.wording import article
from mpo.errors import UserError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 190),
    "orange": (245, 130, 20),
}
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle", "diamond")
# (width, height): 1 tile; 2 tiles + thumbnail; 2 tiles + thumbnail; 4 tiles + thumbnail (64 px tiles).
IMAGE_SIZES = ((64, 64), (128, 64), (64, 128), (128, 128))
Sizes = Sequence[tuple[int, int]]
TILE = 64


def image_tiles(width: int, height: int) -> int:
    """Tiles the model sees for an image of this size: one per 64 px tile, plus a thumbnail when
    there are several."""
    n = (width // TILE) * (height // TILE)
    return n if n == 1 else n + 1


def sizes_up_to(max_tiles: int) -> tuple[tuple[int, int], ...]:
    """The image sizes of IMAGE_SIZES the model sees as at most ``max_tiles`` tiles."""
    sizes = tuple(size for size in IMAGE_SIZES if image_tiles(*size) <= max_tiles)
    if not sizes:
        raise UserError(f"--max-tiles must be at least 1, got {max_tiles}")
    return sizes


MAX_SHAPES = 6
MARGIN = 2  # free pixels between a shape and the image border
GAP = 3  # free pixels between two shapes' boxes: every shape is its own connected blob
# Shape side in pixels, and number of shapes in a generic scene, per difficulty. Shapes must cover
# several 8 px patches of a 64 px tile: at 8-15 px the tiny model never learned even the colour skill
# (held-out accuracy at chance after 800 steps); at these sizes it learns it (75 % in 600 steps).
SIZE_RANGE = {1: (24, 34), 2: (16, 24), 3: (11, 18)}
COUNT_RANGE = {1: (1, 2), 2: (3, 4), 3: (5, 6)}
POSITION_MIN_SEPARATION = 6  # pixels between the extreme shape's centre and the next one's


# ---------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    x: int  # top-left corner of the shape's size x size box
    y: int
    size: int

    @property
    def cx(self) -> float:
        return self.x + (self.size - 1) / 2

    @property
    def cy(self) -> float:
        return self.y + (self.size - 1) / 2

    @property
    def area(self) -> int:
        return shape_area(self.kind, self.size)

    def phrase(self, kind: bool = False) -> str:
        """How a chain of thought names the shape: "a red shape", or with ``kind`` "a red circle"."""
        return f"{article(self.colour)} {self.colour} {self.kind if kind else 'shape'}"


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    shapes: tuple[Shape, ...]

    def key(self) -> str:
        shapes = sorted((s.x, s.y, s.size, s.kind, s.colour) for s in self.shapes)
        return f"{self.width}x{self.height}:{shapes}"


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: int, y: int, size: int, fill) -> None:
    x1, y1 = x + size - 1, y + size - 1
    mx, my = x + (size - 1) // 2, y + (size - 1) // 2
    if kind == "circle":
        draw.ellipse((x, y, x1, y1), fill=fill)
    elif kind == "square":
        draw.rectangle((x, y, x1, y1), fill=fill)
    elif kind == "triangle":
        draw.polygon([(mx, y), (x1, y1), (x, y1)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(mx, y), (x1, my), (mx, y1), (x, my)], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")


@cache
def shape_area(kind: str, size: int) -> int:
    """Pixels a shape covers once drawn (rasterisation is translation invariant for integer boxes)."""
    mask = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(mask), kind, 0, 0, size, 255)
    return mask.histogram()[255]


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image: flat colours, no anti-aliasing."""
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        _draw_shape(draw, s.kind, s.x, s.y, s.size, COLOURS[s.colour])
    return image


def place(rng: Random, specs: list[tuple[str, str, int]], sizes: Sizes = IMAGE_SIZES) -> Scene | None:
    """Put shapes (kind, colour, size) at random non-touching places in an image of a random size."""
    width, height = rng.choice(sizes)
    order = sorted(range(len(specs)), key=lambda i: -specs[i][2])  # big ones first
    placed: dict[int, Shape] = {}
    for i in order:
        kind, colour, size = specs[i]
        if size + 2 * MARGIN > min(width, height):
            return None
        for _ in range(60):
            x = rng.randint(MARGIN, width - MARGIN - size)
            y = rng.randint(MARGIN, height - MARGIN - size)
            if all(
                x + size + GAP <= o.x
                or o.x + o.size + GAP <= x
                or y + size + GAP <= o.y
                or o.y + o.size + GAP <= y
                for o in placed.values()
            ):
                placed[i] = Shape(kind, colour, x, y, size)
                break
        else:
            return None
    return Scene(width, height, tuple(placed[i] for i in range(len(specs))))


def random_specs(
    rng: Random, n: int, difficulty: int, colours=None, kinds=None
) -> list[tuple[str, str, int]]:
    lo, hi = SIZE_RANGE[difficulty]
    return [
        (rng.choice(kinds or SHAPES), rng.choice(colours or list(COLOURS)), rng.randint(lo, hi))
        for _ in range(n)
    ]


def n_shapes(rng: Random, difficulty: int) -> int:
    return rng.randint(*COUNT_RANGE[difficulty])
