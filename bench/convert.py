"""Benchmark ``mmit convert`` against a bare ``tarfile`` copy of the same images.

Builds a LLaVA-format corpus of N records, each with its own image file (copies of the real images
in ``../shared/samples`` when present, else JPEGs generated with PIL), then times, in this process:

* ``convert``: :func:`mmit.data.convert.convert` (``workers=1``, JSON parse, existence check, one
  read per image, content sniffing, header check + ``verify()``, original bytes into the tar,
  JSON member and per-shard stats);
* ``tarfile``: ``tarfile.open(out, "w").add(path)`` for the same image files (no JSON, no checks).

Throughput is image bytes / wall seconds (MB = 1e6 bytes), best of ``--repeat`` runs each. The target
is ``ratio = convert / tarfile >= 0.8``. ``--check decode`` times the full-decode check instead
(expect a much lower ratio: decoding a JPEG costs far more than copying it).

Usage: ``python bench/convert.py [--n 1000] [--repeat 3] [--check header|decode]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmit.data.convert import convert  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / ".." / "shared" / "samples"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def source_images(tmp: Path) -> List[Path]:
    """Real sample images if ``../shared/samples`` exists, else 16 generated 640x480 JPEGs."""
    found = sorted(p for p in SAMPLES.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES) \
        if SAMPLES.is_dir() else []
    if found:
        return found
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    gen = tmp / "generated"
    gen.mkdir()
    for i in range(16):
        # smooth gradient + noise: compresses like a photo (~60-120 KB at quality 90)
        y, x = np.mgrid[0:480, 0:640]
        base = np.stack([(x + 7 * i) % 256, (y + 13 * i) % 256, (x + y) % 256], -1)
        arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        p = gen / f"gen_{i:02d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        out.append(p)
    return out


def build_corpus(tmp: Path, n: int) -> Tuple[Path, Path, List[Path], int]:
    """Write ``n`` image files (one per record) and a LLaVA JSON; returns (json, root, images,
    total image bytes)."""
    src = source_images(tmp)
    root = tmp / "images"
    root.mkdir()
    records, paths, total = [], [], 0
    for i in range(n):
        s = src[i % len(src)]
        rel = f"{i // 1000:05d}/{i:09d}{s.suffix.lower()}"
        dst = root / rel
        dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(s, dst)
        paths.append(dst)
        total += dst.stat().st_size
        q = "Render a clear and concise summary of the photo."
        records.append({"id": f"{i:09d}", "image": rel, "conversations": [
            {"from": "human", "value": f"{q}\n<image>" if i % 2 else f"<image>\n{q}"},
            {"from": "gpt", "value": f"caption number {i} of the benchmark corpus"}]})
    ann = tmp / "bench_llava.json"
    ann.write_text(json.dumps(records))
    return ann, root, paths, total


def time_convert(ann: Path, root: Path, out: Path, check: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    stats = convert("llava", str(ann), str(out), media_root=str(root), shard_size=1000,
                    workers=1, check=check, progress=False)
    dt = time.perf_counter() - t
    assert stats["skipped"] == {}, stats["skipped"]
    return dt


def time_tarfile(paths: List[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with tarfile.open(out / "plain.tar", "w") as tf:
        for i, p in enumerate(paths):
            tf.add(p, arcname=f"{i:09d}{p.suffix}")
    return time.perf_counter() - t


def _sync() -> None:
    if hasattr(os, "sync"):
        os.sync()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="records / image files (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, best is kept")
    ap.add_argument("--check", choices=("header", "decode"), default="header")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mmit-bench-") as d:
        tmp = Path(d)
        ann, root, paths, total = build_corpus(tmp, args.n)
        t_conv, t_tar = [], []
        for _ in range(args.repeat):
            # interleaved; dirty pages of the previous run are flushed first so that its
            # write-back does not land in the next timed run
            _sync()
            t_tar.append(time_tarfile(paths, tmp / "tar"))
            _sync()
            t_conv.append(time_convert(ann, root, tmp / "shards", args.check))
        mb = total / 1e6
        conv, tar = mb / min(t_conv), mb / min(t_tar)
        src = "shared/samples" if SAMPLES.is_dir() else "generated JPEGs"
        print(f"corpus: {args.n} records, {mb:.1f} MB of images ({src}), check={args.check}")
        print(f"convert: {conv:.1f} MB/s  tarfile: {tar:.1f} MB/s  ratio: {conv / tar:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
