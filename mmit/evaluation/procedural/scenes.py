"""PIL-rendered scenes of coloured shapes on a 2 x 2 grid, with their ground truth.

A scene is a 64 x 64 px RGB image on a white background, split into four 32 x 32 px cells
(``top left``, ``top right``, ``bottom left``, ``bottom right``). Each object is one shape
(``circle``, ``square``, ``triangle``) in one palette colour, drawn inside its own cell (at most one
object per cell) with a random size and offset that never leaves the cell. Drawing uses no
anti-aliasing, so every object pixel has exactly its palette colour: the answers can be checked
from the pixels alone (:func:`cell_colors`). The cells are aligned with the 8 px patches of a
32 px vision tower after the 2x downscale (each cell is 2 x 2 patches).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from PIL import Image, ImageDraw

CANVAS = 64
CELL = CANVAS // 2
BACKGROUND = (255, 255, 255)
#: Palette colour names -> RGB (distinct in every channel pattern, far from white).
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
}
SHAPES = ("circle", "square", "triangle")
#: Cell names, row-major: index // 2 is the row (0 top), index % 2 the column (0 left).
POSITIONS = ("top left", "top right", "bottom left", "bottom right")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    position: str  # one of POSITIONS


@dataclass(frozen=True)
class Scene:
    objects: Tuple[SceneObject, ...]

    def count(self, color: Optional[str] = None) -> int:
        return sum(1 for o in self.objects if color is None or o.color == color)

    def at(self, position: str) -> Optional[SceneObject]:
        return next((o for o in self.objects if o.position == position), None)

    def with_color(self, color: str) -> List[SceneObject]:
        return [o for o in self.objects if o.color == color]


def random_scene(rng: random.Random, n_objects: int, distinct_colors: bool = False,
                 colors: Optional[List[str]] = None) -> Scene:
    """``n_objects`` (1..4) in distinct cells; colours drawn from ``colors`` (default the palette),
    all different when ``distinct_colors``."""
    if not 1 <= n_objects <= len(POSITIONS):
        raise ValueError(f"n_objects must be in 1..{len(POSITIONS)}, got {n_objects}")
    pool = list(colors or COLORS)
    cells = rng.sample(POSITIONS, n_objects)
    cols = rng.sample(pool, n_objects) if distinct_colors else [rng.choice(pool) for _ in cells]
    return Scene(tuple(SceneObject(rng.choice(SHAPES), c, p) for p, c in zip(cells, cols)))


def _cell_origin(position: str) -> Tuple[int, int]:
    i = POSITIONS.index(position)
    return (i % 2) * CELL, (i // 2) * CELL


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """Draw ``scene``: each shape 16..24 px wide, placed at a random offset fully inside its cell
    with a margin of at least 2 px. Returns a 64 x 64 RGB image."""
    img = Image.new("RGB", (CANVAS, CANVAS), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        x0, y0 = _cell_origin(o.position)
        size = rng.randint(16, 24)
        x = x0 + rng.randint(2, CELL - 2 - size)
        y = y0 + rng.randint(2, CELL - 2 - size)
        fill = COLORS[o.color]
        box = (x, y, x + size - 1, y + size - 1)
        if o.shape == "square":
            draw.rectangle(box, fill=fill)
        elif o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(x + (size - 1) / 2, y), (x, y + size - 1), (x + size - 1, y + size - 1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def cell_colors(img: Image.Image, min_pixels: int = 20) -> Dict[str, Optional[str]]:
    """Read the scene back from pixels: position -> the palette colour covering at least
    ``min_pixels`` pixels of that cell, or None for an empty cell (used to verify answers)."""
    px = img.convert("RGB").load()
    rgb_to_name = {v: k for k, v in COLORS.items()}
    out: Dict[str, Optional[str]] = {}
    for pos in POSITIONS:
        x0, y0 = _cell_origin(pos)
        counts: Dict[str, int] = {}
        for y in range(y0, y0 + CELL):
            for x in range(x0, x0 + CELL):
                name = rgb_to_name.get(px[x, y])
                if name:
                    counts[name] = counts.get(name, 0) + 1
        best = max(counts.items(), key=lambda kv: kv[1], default=(None, 0))
        out[pos] = best[0] if best[1] >= min_pixels else None
    return out


def cell_fill_ratio(img: Image.Image, position: str) -> float:
    """Fraction of the object's bounding box its pixels fill (square 1.0, circle ~0.79, triangle
    ~0.5): how the shape can be told from the pixels. 0.0 for an empty cell."""
    px = img.convert("RGB").load()
    x0, y0 = _cell_origin(position)
    pts = [(x, y) for y in range(y0, y0 + CELL) for x in range(x0, x0 + CELL) if px[x, y] != BACKGROUND]
    if not pts:
        return 0.0
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return len(pts) / ((max(xs) - min(xs) + 1) * (max(ys) - min(ys) + 1))
