"""Benchmark ``mmit convert`` against a bare ``tarfile`` copy of the same images.

Builds a LLaVA-format corpus of N records, each with its own image file (copies of the real images
in ``../shared/samples`` when present, else JPEGs generated with PIL), then times, in this process:

* ``convert``: :func:`mmit.data.convert.convert` (``workers=1``, JSON parse, existence check, one
  read per image, content sniffing, header check + ``verify()``, original bytes into the tar,
  JSON member and per-shard stats);
* ``tarfile``: ``tarfile.open(out, "w").add(path)`` for the same image files (no JSON, no checks).

* ``convert --workers K``: the same with K processes (shard size n/8), for reference only: it uses
  K CPUs where ``tarfile`` uses one.

Throughput is image bytes / wall seconds (MB = 1e6 bytes), best of ``--repeat`` interleaved runs,
each started after ``os.sync()``. The target is ``ratio = convert / tarfile >= 0.8`` for ``workers=1``.

Where the time goes (workers=1, 1000 real images of 88 KB on average, 2-vCPU VM): the tar write
itself is cheaper than ``tarfile.add`` (no per-file stat/open/pwd lookup); the extra per record is
the header check (~75 us, PIL's pure-Python JPEG marker parser), the JSON/normalisation (~30 us) and
the ``.json`` member's tar header (~20 us). So the ratio grows with image size (~0.95 on 160 KB
photos) and shrinks on tmpfs, where the tar copy itself is nearly free. ``--check decode`` times a
full decode instead: ~20 MB/s, ratio ~0.1 (decoding a JPEG costs far more than copying it).

Usage: ``python bench/convert.py [--n 1000] [--repeat 5] [--check header|decode] [--workers 2]``
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
        # gradient + noise: ~160 KB per 640x480 JPEG at quality 90, like a COCO photo
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


def time_convert(ann: Path, root: Path, out: Path, check: str, workers: int = 1,
                 shard_size: int = 1000) -> float:
    shutil.rmtree(out, ignore_errors=True)
    _sync()
    t = time.perf_counter()
    stats = convert("llava", str(ann), str(out), media_root=str(root), shard_size=shard_size,
                    workers=workers, check=check, progress=False)
    dt = time.perf_counter() - t
    assert stats["skipped"] == {}, stats["skipped"]
    return dt


def time_tarfile(paths: List[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    _sync()
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
    ap.add_argument("--repeat", type=int, default=5, help="runs of each, best is kept")
    ap.add_argument("--check", choices=("header", "decode"), default="header")
    ap.add_argument("--workers", type=int, default=2,
                    help="also time convert with this many workers (shard size n/8); 1 = skip")
    ap.add_argument("--tmp", default=None, help="work folder (default: $TMPDIR; on tmpfs such as "
                    "/dev/shm the fixed per-record Python cost weighs more, so the ratio is lower)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mmit-bench-", dir=args.tmp) as d:
        tmp = Path(d)
        ann, root, paths, total = build_corpus(tmp, args.n)
        t_conv, t_tar, t_par = [], [], []
        par_shard = max(1, args.n // 8)
        for _ in range(args.repeat):
            # interleaved; each timed run starts after a sync, so write-back of the previous
            # run's output does not land in it
            t_tar.append(time_tarfile(paths, tmp / "tar"))
            t_conv.append(time_convert(ann, root, tmp / "shards", args.check))
            if args.workers > 1:
                t_par.append(time_convert(ann, root, tmp / "shards", args.check, args.workers,
                                          par_shard))
        mb = total / 1e6
        conv, tar = mb / min(t_conv), mb / min(t_tar)
        src = "shared/samples" if SAMPLES.is_dir() else "generated JPEGs"
        print(f"corpus: {args.n} records, {mb:.1f} MB of images ({src}), check={args.check}, "
              f"best of {args.repeat}, cpus={os.cpu_count()}")
        print(f"convert: {conv:.1f} MB/s  tarfile: {tar:.1f} MB/s  ratio: {conv / tar:.2f}")
        if t_par:
            par = mb / min(t_par)
            print(f"convert --workers {args.workers} --shard-size {par_shard}: {par:.1f} MB/s  "
                  f"tarfile: {tar:.1f} MB/s  ratio: {par / tar:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
