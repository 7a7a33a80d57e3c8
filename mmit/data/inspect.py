"""``mmit inspect OUT``: what is in a shard folder, and a contact sheet for a person to look at.

Prints the counts per task, source and media kind (from the per-shard ``NNNNN_stats.json`` that
``mmit convert`` writes; shards written by other tools are scanned instead, reading only their
``.json`` members), whether the conversion finished (``_stats.json`` present) and its skips, and
draws a contact-sheet PNG: a grid of a few samples taken from evenly spaced shards, each tile
showing the first image (or a labelled tile for video, audio, a point cloud drawn from above,
text-only), the source, task, id and the first user and assistant turns.

Usage: ``mmit inspect OUT [--png PATH] [--samples 8] [--cols 4] [--json]``.
"""

from __future__ import annotations

import argparse
import functools
import io
import itertools
import logging
import json
import os
import sys
import tarfile
import textwrap
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from mmit.data.media import decode_image
from mmit.data.sample import Sample, SampleError
from mmit.data.shards import NO_TASK, expand_urls, iter_shards, read_stats, stats_path

log = logging.getLogger("mmit.inspect")

TILE_W, IMG_H, TEXT_H = 280, 190, 176
_GROUPS = ("task", "source", "media_kind")


def _scan_counts(tars: Sequence[str]) -> Tuple[Dict[str, Counter], int, int]:
    """Counts from the ``.json`` members of ``tars`` (media members are skipped, not read)."""
    counts = {g: Counter() for g in _GROUPS}
    n = text_only = 0
    for tar in tars:
        with tarfile.open(tar, "r:") as tf:
            for member in tf:
                if not member.name.endswith(".json"):
                    continue
                d = json.loads(tf.extractfile(member).read())
                n += 1
                counts["task"][d.get("task") or NO_TASK] += 1
                counts["source"][d.get("source") or NO_TASK] += 1
                for m in d.get("media", []):
                    counts["media_kind"][m.get("kind", "?")] += 1
                text_only += not d.get("media")
    return counts, n, text_only


def summarize(folder: str) -> Dict[str, Any]:
    """Counts for a shard folder: ``shards``, ``samples``, ``counts`` (``task``/``source``/
    ``media_kind`` → count, most frequent first), ``text_only``, ``complete`` (``_stats.json``
    present), ``records_in``/``skipped`` (from ``_stats.json``, else None) and ``counted_from``
    (``stats`` or ``scan``). Raises ``FileNotFoundError`` if ``folder`` holds no ``*.tar``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"shard folder not found: {folder}")
    tars = expand_urls(folder)
    per = [read_stats(stats_path(t)) for t in tars]
    run = read_stats(os.path.join(folder, "_stats.json"))
    if all(s is not None and "counts" in s for s in per):
        counts = {g: Counter() for g in _GROUPS}
        for s in per:
            for g in _GROUPS:
                counts[g].update(s["counts"].get(g, {}))
        n, text_only, origin = sum(s["written"] for s in per), sum(s.get("text_only", 0)
                                                                  for s in per), "stats"
    else:
        counts, n, text_only = _scan_counts(tars)
        origin = "scan"
    return {"folder": os.path.abspath(folder), "shards": len(tars), "samples": n,
            "counts": {g: dict(c.most_common()) for g, c in counts.items()},
            "text_only": text_only, "complete": run is not None,
            "records_in": None if run is None else run.get("records_in"),
            "skipped": None if run is None else run.get("skipped"), "counted_from": origin}


def pick_samples(folder: str, n: int) -> List[Sample]:
    """Up to ``n`` samples (media bytes attached) from evenly spaced shards, in shard order."""
    tars = expand_urls(folder)
    if n <= 0:
        return []
    picked = sorted({round(i * (len(tars) - 1) / max(1, n - 1)) for i in range(n)}) \
        if len(tars) > 1 else [0]
    per = -(-n // len(picked))
    out: List[Sample] = []
    for i in picked:
        stream = iter_shards([tars[i]], split_by_node=False, split_by_worker=False)
        out.extend(itertools.islice(stream, min(per, n - len(out))))
        if len(out) >= n:
            break
    return out


@functools.lru_cache(maxsize=None)
def font_files() -> Tuple[str, ...]:
    """TrueType files tried for each character, in order: matplotlib's bundled DejaVu Sans (Latin,
    Greek, Cyrillic, many symbols such as ☕), its bundled STIX, then the system's fonts that
    matplotlib's font manager finds (CJK, emoji where installed)."""
    import matplotlib
    from matplotlib import font_manager

    ttf = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    first = [os.path.join(ttf, f) for f in ("DejaVuSans.ttf", "STIXGeneral.ttf")]
    rest = sorted(f for f in font_manager.findSystemFonts() if f.lower().endswith((".ttf", ".otf")))
    return tuple(dict.fromkeys(f for f in first + rest if os.path.isfile(f)))


@functools.lru_cache(maxsize=None)
def _cmap(path: str) -> frozenset:
    """Code points that the font at ``path`` has a glyph for (empty for an unreadable file)."""
    from fontTools.ttLib import TTFont

    try:
        return frozenset((TTFont(path, lazy=True, fontNumber=0)["cmap"].getBestCmap() or {}).keys())
    except Exception:
        return frozenset()


class TextPainter:
    """Draws text at one size with per-character font fallback over :func:`font_files`; characters
    no font has are drawn with the first font (a box) and counted in ``missing`` (shared between
    painters), so the sheet can say how many it could not show."""

    def __init__(self, size: int, missing: Optional[Counter] = None):
        self.size = size
        self.missing = Counter() if missing is None else missing
        self.files = font_files()
        self._fonts: Dict[int, Any] = {}

    def _font(self, k: int) -> Any:
        if k not in self._fonts:
            if not self.files:  # no TrueType file at all: Pillow's own font
                self._fonts[k] = ImageFont.load_default(size=self.size)
            else:
                self._fonts[k] = ImageFont.truetype(self.files[k], self.size)
        return self._fonts[k]

    def _which(self, ch: str) -> int:
        if ch.isspace() or not self.files:
            return 0
        for k, f in enumerate(self.files):
            if ord(ch) in _cmap(f):
                return k
        self.missing[ch] += 1
        return 0

    def runs(self, text: str) -> List[Tuple[str, Any]]:
        """``text`` split into ``(piece, font)`` runs, each piece drawable by its font."""
        out: List[Tuple[str, Any]] = []
        for k, group in itertools.groupby(text, key=self._which):
            out.append(("".join(group), self._font(k)))
        return out

    def length(self, draw: ImageDraw.ImageDraw, text: str) -> float:
        return sum(draw.textlength(piece, font=font) for piece, font in self.runs(text))

    def text(self, draw: ImageDraw.ImageDraw, xy: Tuple[float, float], text: str, fill: Any) -> None:
        x, y = xy
        for piece, font in self.runs(text):
            draw.text((x, y), piece, fill=fill, font=font)
            x += draw.textlength(piece, font=font)


def _placeholder(label: str, detail: str, fonts: Tuple[Any, Any]) -> Image.Image:
    im = Image.new("RGB", (TILE_W, IMG_H), (52, 61, 76))
    d = ImageDraw.Draw(im)
    for text, font, y, fill in ((label, fonts[1], IMG_H // 2 - 22, (236, 239, 244)),
                                (detail, fonts[0], IMG_H // 2 + 10, (200, 205, 215))):
        font.text(d, ((TILE_W - font.length(d, text)) / 2, y), text, fill)
    return im


def _pointcloud_view(data: bytes, detail: str, fonts: Tuple[Any, Any]) -> Image.Image:
    """Points seen from above (x right, y up), coloured by height, with a label."""
    im = _placeholder("", "", fonts)
    try:
        pts = np.load(io.BytesIO(data), allow_pickle=False)[:, :3].astype(np.float64)
    except Exception:
        return _placeholder("POINT CLOUD", detail + " (unreadable)", fonts)
    pts = pts[np.isfinite(pts).all(1)][:: max(1, len(pts) // 4000)]
    d = ImageDraw.Draw(im)
    if len(pts):
        lo, hi = pts.min(0), pts.max(0)
        span = max(float((hi - lo)[:2].max()), 1e-9)
        z = (pts[:, 2] - lo[2]) / max(float(hi[2] - lo[2]), 1e-9)
        for (x, y, _), c in zip(pts, z):
            px = 20 + (x - lo[0]) / span * (IMG_H - 40) + (TILE_W - IMG_H) / 2
            py = IMG_H - 20 - (y - lo[1]) / span * (IMG_H - 40)
            d.point((px, py), fill=(int(90 + 165 * c), 200, int(255 - 165 * c)))
    fonts[0].text(d, (6, 4), "POINT CLOUD " + detail, (236, 239, 244))
    return im


def _media_view(sample: Sample, fonts: Tuple[Any, Any]) -> Image.Image:
    if not sample.media:
        return _placeholder("TEXT ONLY", f"{len(sample.turns)} turns", fonts)
    m = sample.media[0]
    size = f"{len(m.data or b'') / 1e6:.2f} MB" if len(m.data or b"") >= 1e5 else \
        f"{len(m.data or b'') / 1e3:.1f} KB"
    detail = f"{m.ext} · {size}"
    if m.kind == "image":
        try:
            im = decode_image(m.data or b"", f"sample {sample.id!r}")
        except SampleError:
            return _placeholder("UNDECODABLE IMAGE", detail, fonts)
        im = ImageOps.contain(im, (TILE_W, IMG_H), Image.Resampling.BICUBIC)  # up or down
        canvas = Image.new("RGB", (TILE_W, IMG_H), (235, 235, 235))
        canvas.paste(im, ((TILE_W - im.width) // 2, (IMG_H - im.height) // 2))
        return canvas
    if m.kind == "pointcloud":
        shape = m.meta.get("shape")
        return _pointcloud_view(m.data or b"", f"{shape[0]}x{shape[1]}" if shape else detail,
                                fonts)
    return _placeholder(m.kind.upper(), detail, fonts)


def _wrap(text: str, width: int, lines: int) -> List[str]:
    out = textwrap.wrap(" ".join(text.split()), width) or [""]
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: width - 1] + "…"
    return out


def _tile(sample: Sample, fonts: Tuple[Any, Any]) -> Image.Image:
    tile = Image.new("RGB", (TILE_W, IMG_H + TEXT_H), "white")
    tile.paste(_media_view(sample, fonts), (0, 0))
    d = ImageDraw.Draw(tile)
    kinds = Counter(m.kind for m in sample.media)
    media = ", ".join(f"{v} {k}" for k, v in kinds.items()) or "no media"
    first = sample.media[0].meta if sample.media else {}
    if "width" in first and "height" in first:
        media += f" · {first['width']}x{first['height']}"
    y = IMG_H + 4
    head = f"{sample.source or '?'} · {sample.task or 'no task'}"
    fonts[0].text(d, (6, y), _wrap(head, 40, 1)[0], (20, 60, 140))
    y += 16
    fonts[0].text(d, (6, y), _wrap(f"id {sample.id} · {media}", 42, 1)[0], (90, 90, 90))
    y += 18
    user = next((t.content for t in sample.turns if t.role == "user"), "")
    bot = next((t.content for t in sample.turns if t.role == "assistant"), "")
    for role, text, n, color in (("USER", user, 5, (0, 0, 0)), ("ASSISTANT", bot, 3, (0, 110, 50))):
        for line in _wrap(f"{role}: {text}", 42, n):
            fonts[0].text(d, (6, y), line, color)
            y += 15
        y += 3
    d.rectangle((0, 0, TILE_W - 1, IMG_H + TEXT_H - 1), outline=(180, 180, 180))
    return tile


def contact_sheet(samples: Sequence[Sample], path: str, cols: int = 4,
                  title: Optional[str] = None) -> str:
    """Draw ``samples`` as a grid of tiles (280x366 px each, ``cols`` per row) under a title line
    and save it as PNG at ``path`` (folders created). Text is drawn with DejaVu Sans and fallback
    fonts (:class:`TextPainter`); characters no font has are drawn as boxes and logged as one
    warning with their counts. Returns ``path``. Raises ``ValueError`` when ``samples`` is empty."""
    if not samples:
        raise ValueError("no samples to draw")
    missing: Counter = Counter()
    fonts = (TextPainter(12, missing), TextPainter(20, missing))
    cols = max(1, min(cols, len(samples)))
    rows = -(-len(samples) // cols)
    pad, head = 8, 30
    sheet = Image.new("RGB", (pad + cols * (TILE_W + pad), head + rows * (IMG_H + TEXT_H + pad)),
                      (250, 250, 250))
    TextPainter(14, missing).text(ImageDraw.Draw(sheet), (pad, 8), title or "", (0, 0, 0))
    for i, s in enumerate(samples):
        r, c = divmod(i, cols)
        sheet.paste(_tile(s, fonts), (pad + c * (TILE_W + pad), head + r * (IMG_H + TEXT_H + pad)))
    if missing:
        log.warning("contact sheet: %d character(s) in no available font, drawn as boxes: %s",
                    sum(missing.values()), ", ".join(f"{c!r} U+{ord(c):04X} x{n}" for c, n in missing.most_common(10)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path, format="PNG")
    return path


def _counts_line(name: str, counts: Dict[str, int], top: int = 12) -> str:
    items = list(counts.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:top]) or "-"
    more = f", ... {len(items) - top} more" if len(items) > top else ""
    return f"{name:<15}{text}{more}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry (``mmit inspect``); prints the counts and the PNG's path. Returns 0, or 2 with
    one line on stderr when the folder is missing or holds no shards."""
    p = argparse.ArgumentParser(prog="mmit inspect",
                                description="Counts and a contact sheet of converted shards.")
    p.add_argument("folder", help="output folder of `mmit convert` (or any folder of *.tar shards)")
    p.add_argument("--png", default=None, help="contact sheet path (default FOLDER/_contact_sheet.png)")
    p.add_argument("--samples", type=int, default=8, help="samples on the sheet (default 8)")
    p.add_argument("--cols", type=int, default=4, help="tiles per row (default 4)")
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        info = summarize(args.folder)
        png = args.png or os.path.join(args.folder, "_contact_sheet.png")
        picked = pick_samples(args.folder, args.samples)
        if picked:
            title = (f"{info['folder']}: {info['samples']} samples in {info['shards']} shard(s); "
                     f"{len(picked)} shown")
            info["contact_sheet"] = os.path.abspath(contact_sheet(picked, png, args.cols, title))
        else:
            info["contact_sheet"] = None
    except (OSError, ValueError) as e:
        print(f"mmit inspect: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return 0
    state = "incomplete: no _stats.json, conversion not finished"
    if info["complete"]:
        sk = info["skipped"] or {}
        state = (f"complete: {info['records_in']} records in, {info['samples']} written, "
                 f"{sum(sk.values())} skipped" +
                 (f" ({', '.join(f'{k}={v}' for k, v in sorted(sk.items()))})" if sk else ""))
    print(f"{info['folder']}: {info['samples']} samples in {info['shards']} shard(s) ({state})")
    print(_counts_line("by task:", info["counts"]["task"]))
    print(_counts_line("by source:", info["counts"]["source"]))
    print(_counts_line("by media kind:", {**info["counts"]["media_kind"],
                                          "text-only": info["text_only"]}))
    print(f"contact sheet: {info['contact_sheet'] or '(no samples)'}"
          + (f" ({len(picked)} samples)" if picked else ""))
    return 0
