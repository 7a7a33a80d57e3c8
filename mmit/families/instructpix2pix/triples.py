"""Procedural edit triples (input image, instruction, edited image) for demos and tests.

No licensed real InstructPix2Pix triples are bundled, so the tiny demo draws one coloured shape
(square, circle or triangle) on a white canvas and applies one checkable edit:

* recolour: ``"make the square red"``
* move:     ``"move the circle left"`` (by a quarter of the canvas)
* resize:   ``"make the triangle bigger"`` / ``"smaller"``

Each sample follows the project's editing convention (see :mod:`mmit.families.instructpix2pix.data`) and keeps the
exact edit in ``meta`` (shape, colours, boxes, ``input_caption`` / ``output_caption`` for the CLIP
directional metric), so the result of an edit can be checked. Written as webdataset shards with
:class:`mmit.data.shards.ShardWriter` plus a ``_stats.json`` (``mmit.data.convert``'s layout).

CLI: ``python -m mmit.families.instructpix2pix.triples --output DIR [--num 512] [--size 64] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
from typing import Dict, Iterator, List, Optional, Tuple

from PIL import Image, ImageDraw

from mmit.data.sample import Media, Sample, Turn
from mmit.data.shards import ShardWriter, dump_json

SHAPES = ("square", "circle", "triangle")
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (235, 210, 30),
    "purple": (140, 40, 180), "orange": (245, 140, 20),
}
EDITS = ("recolour", "move", "resize")
_MOVES = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def draw_shape(size: int, shape: str, colour: str, box: Tuple[int, int, int, int]) -> Image.Image:
    """An RGB ``size x size`` white canvas with one filled ``shape`` of ``colour`` inside ``box``
    (left, top, right, bottom in pixels). Raises ``KeyError`` for an unknown shape or colour."""
    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    fill = COLOURS[colour]
    l, t, r, b = box
    if shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "triangle":
        d.polygon([((l + r) / 2, t), (r, b), (l, b)], fill=fill)
    else:
        raise KeyError(f"unknown shape {shape!r} (expected one of {SHAPES})")
    return im


def _box(cx: float, cy: float, half: float) -> Tuple[int, int, int, int]:
    return (round(cx - half), round(cy - half), round(cx + half) - 1, round(cy + half) - 1)


def _caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape} on a white background"


def make_triple(rng: random.Random, size: int = 64) -> Tuple[Image.Image, str, Image.Image, dict]:
    """One random ``(input image, instruction, edited image, meta)``; ``meta`` holds ``edit``,
    ``shape``, ``colour_in``/``colour_out``, ``box_in``/``box_out`` and the two captions."""
    shape, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
    edit = rng.choice(EDITS)
    half = size * rng.uniform(0.12, 0.2)
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size
    box_in = _box(cx, cy, half)
    colour_out, box_out = colour, box_in
    if edit == "recolour":
        colour_out = rng.choice([c for c in sorted(COLOURS) if c != colour])
        prompt = f"make the {shape} {colour_out}"
    elif edit == "move":
        where = rng.choice(sorted(_MOVES))
        dx, dy = _MOVES[where]
        box_out = _box(cx + dx * size / 4, cy + dy * size / 4, half)
        prompt = f"move the {shape} {where}"
    else:
        bigger = rng.random() < 0.5
        box_out = _box(cx, cy, half * (1.5 if bigger else 0.6))
        prompt = f"make the {shape} {'bigger' if bigger else 'smaller'}"
    meta = {"edit": edit, "shape": shape, "colour_in": colour, "colour_out": colour_out,
            "box_in": list(box_in), "box_out": list(box_out),
            "input_caption": _caption(colour, shape), "output_caption": _caption(colour_out, shape)}
    return draw_shape(size, shape, colour, box_in), prompt, draw_shape(size, shape, colour_out, box_out), meta


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def edit_sample(sample_id: str, input_png: bytes, prompt: str, edited_png: bytes, meta: Optional[dict] = None,
                source: str = "instructpix2pix") -> Sample:
    """A :class:`Sample` in the editing convention from two encoded images and the instruction."""
    return Sample(id=sample_id,
                  media=[Media("image", data=input_png, ext="png", meta={"role": "input"}),
                         Media("image", data=edited_png, ext="png", meta={"role": "edited"})],
                  turns=[Turn("user", "<image>\n" + prompt), Turn("assistant", "<image>")],
                  task="image-editing", source=source, meta=dict(meta or {}))


def procedural_samples(num: int, size: int = 64, seed: int = 0) -> Iterator[Sample]:
    """``num`` editing samples (ids ``edit-000000`` ...), a deterministic function of ``(size, seed)``."""
    rng = random.Random(seed)
    for i in range(num):
        src, prompt, dst, meta = make_triple(rng, size)
        yield edit_sample(f"edit-{i:06d}", _png(src), prompt, _png(dst), meta)


def write_triples(output: str, num: int, size: int = 64, seed: int = 0, shard_size: int = 1000) -> dict:
    """Write ``num`` procedural samples as shards ``NNNNN.tar`` (+ per-shard stats) and ``_stats.json``
    (written last) into ``output``. Returns the ``_stats.json`` dict. Raises ``ValueError`` for
    ``num < 1``."""
    if num < 1:
        raise ValueError(f"number of triples must be >= 1, got {num}")
    os.makedirs(output, exist_ok=True)
    shard_files: List[str] = []
    written, w = 0, None
    for i, s in enumerate(procedural_samples(num, size, seed)):
        if i % shard_size == 0:
            if w is not None:
                written += w.finish()["written"]
            w = ShardWriter(os.path.join(output, f"{len(shard_files):05d}.tar"))
            shard_files.append(os.path.basename(w.tar_path))
        w.write(s, i)
    written += w.finish()["written"]
    stats = {"format": "procedural-edits", "records_in": num, "written": written, "skipped": {},
             "shards": len(shard_files), "shard_files": shard_files, "size": size, "seed": seed}
    tmp = os.path.join(output, "_stats.json.tmp")
    with open(tmp, "wb") as f:
        f.write(dump_json(stats))
    os.replace(tmp, os.path.join(output, "_stats.json"))
    return stats


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmit.families.instructpix2pix.triples",
                                description="Write procedural InstructPix2Pix edit triples as webdataset shards.")
    p.add_argument("--output", required=True)
    p.add_argument("--num", type=int, default=512)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=1000)
    a = p.parse_args(argv)
    print(json.dumps(write_triples(a.output, a.num, a.size, a.seed, a.shard_size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
