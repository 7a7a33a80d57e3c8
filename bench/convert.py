"""Benchmark ``mmit convert``: per source format against a ``tarfile`` copy of the same media, and
``--workers 2`` against one worker when images are resized.

1. Per format: an input of ``--n`` records in the format's own on-disk layout (DATASETS.md) is
   built from real media (``demo_data/images`` and ``../shared/samples``; LAMM's point clouds are
   generated ``.npy`` arrays); formats whose media are not available, or that are not registered,
   get a line saying they were skipped. Timed in this process, interleaved, best of ``--repeat``:
   ``convert`` (one worker: parse, existence checks, reads, content sniffing, header checks, tar
   and JSON members, per-shard stats) and ``tarfile`` (``TarFile.add`` of the same media files, or
   ``addfile`` of inline bytes such as MIMIC-IT's base64 store; no JSON, no checks).
   MB/s = media bytes (1e6) / wall seconds of the best run. ``ratio``, the figure of record, is
   the median over the ``--repeat`` pairs of ``tarfile seconds / convert seconds``, each pair run
   back to back: on a shared virtual machine, where one run in ten is 30% faster or slower than
   the rest, the best of each side alone swings by ±0.15 from one invocation to the next. Beside
   it the best-over-best ratio and the ratio of CPU seconds (user + system, best of each). ``mimic-it:distinct`` is MIMIC-IT with a
   different image for every instruction (the ``mimic-it`` input reuses ~20 images, as in-context
   examples and the instructions of one image do; the reader decodes a reused image once).
   Media files are hard links (or copies) inside each input folder: symlinks leading out of the
   media root are refused by the readers' confinement.
2. Resize scaling: LLaVA records over the demo photos (up to 1500x720) with
   ``--resize-max-side`` (default 224); ``--workers`` (default 2) processes vs one, shard size
   ``n/8``. Target ratio >= 1.6 (on an otherwise idle machine with at least 2 cores). Printed
   beside it: a control (2 processes vs 1 on a pure CPU loop: what the machine gives right now)
   and the CPU seconds of both runs (the parallel run's overhead).

Usage: ``python bench/convert.py [--n 1000] [--repeat 7] [--formats llava,lamm] [--resize-n 600]``
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import resource
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mmit.data.convert import convert  # noqa: E402
from mmit.data.sources import available_formats, get_reader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples"
DEMO_JSON, DEMO_IMAGES = ROOT / "demo_data" / "llava_demo.json", ROOT / "demo_data" / "images"


class Skip(Exception):
    """This format's sample input cannot be built here."""


def _images() -> List[Path]:
    found = sorted(p for p in DEMO_IMAGES.rglob("*") if p.is_file())
    if SAMPLES.is_dir():
        found += sorted((SAMPLES / "otter" / "images").glob("*"))
    return found


def _videos() -> List[Path]:
    if not SAMPLES.is_dir():
        raise Skip("needs ../shared/samples (videos)")
    return sorted(SAMPLES.glob("videochat/example/*.mp4")) + \
        sorted(SAMPLES.glob("video_llama/examples/*.mp4"))


def _link(src: Path, dst: Path) -> str:
    """``dst`` as a hard link to ``src`` (a copy across file systems). Not a symlink: media are
    confined to the media root by their real location, so a symlink out of it is refused."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        try:
            os.link(src.resolve(), dst)
        except OSError:
            shutil.copyfile(src, dst)
    return str(dst)


def _conv(i: int, what: str = "image") -> List[Dict[str, str]]:
    return [{"from": "human", "value": f"<image>\nDescribe the {what} in detail (record {i})."},
            {"from": "gpt", "value": f"A detailed description number {i} of the {what}."}]


Built = Tuple[str, str, Dict[str, Any]]  # input, media_root, reader options


def b_llava(d: Path, n: int) -> Built:
    recs = json.loads(DEMO_JSON.read_text())
    out = [dict(r, id=f"{r.get('id', k)}-{i}") for i, (k, r) in
           zip(range(n), ((k % len(recs), recs[k % len(recs)]) for k in range(n)))]
    (d / "llava.json").write_text(json.dumps(out))
    return str(d / "llava.json"), str(DEMO_IMAGES), {}


def b_sharegpt4v(d: Path, n: int) -> Built:
    imgs, recs = _images(), []
    for i in range(n):
        src = imgs[i % len(imgs)]
        rel = f"coco/train2017/{i:012d}{src.suffix}"
        _link(src, d / "data" / rel)
        recs.append({"id": f"{i:012d}", "image": rel, "conversations": _conv(i)})
    (d / "data" / "sharegpt4v").mkdir(parents=True, exist_ok=True)
    (d / "data" / "sharegpt4v" / "cap.json").write_text(json.dumps(recs))
    return str(d / "data" / "sharegpt4v" / "cap.json"), str(d / "data"), {}


def b_vision_flan(d: Path, n: int) -> Built:
    imgs, recs = _images(), []
    for i in range(n):
        src = imgs[i % len(imgs)]
        name = f"VQA-E+image_question_answer_{i}_0.{i}{src.suffix}"
        _link(src, d / "images_191task_1k" / name)
        recs.append({"id": f"vqa-e_{i}", "image": f"./images_191task_1k/{name}",
                     "task_name": "VQA-E+image_question_answer", "conversations": _conv(i)})
    (d / "annotation_191-task_1k.json").write_text(json.dumps(recs))
    return str(d / "annotation_191-task_1k.json"), str(d), {}


def b_multiinstruct(d: Path, n: int) -> Built:
    if not SAMPLES.is_dir():
        raise Skip("needs ../shared/samples/multiinstruct")
    lines = (SAMPLES / "multiinstruct" / "train.jsonl").read_text().splitlines()
    imgs, out = _images(), []
    for i in range(n):
        r = json.loads(lines[i % len(lines)])
        src = imgs[i % len(imgs)]
        rel = f"raw_datasets/MSCOCO2014/train2014/COCO_train2014_{i:012d}{src.suffix}"
        _link(src, d / rel)
        out.append(json.dumps(dict(r, unique_id=f"{r.get('unique_id')}-{i}", image_path="./" + rel)))
    (d / "train.jsonl").write_text("\n".join(out) + "\n")
    return str(d / "train.jsonl"), str(d), {}


def b_lamm(d: Path, n: int) -> Built:
    imgs, recs, rng = _images(), [], np.random.default_rng(0)
    for i in range(n):
        if i % 4 == 3:  # a 3D record: generated xyz+rgb cloud, 4096 points (ShapeNet files' size)
            rel = f"shapenet_pcls/{i:08d}_4096.npy"
            (d / "shapenet_pcls").mkdir(exist_ok=True)
            np.save(d / rel, rng.normal(size=(4096, 6)).astype(np.float32))
            recs.append({"pcl": rel, "conversations": [
                {"from": "human", "value": "What is this point cloud?"},
                {"from": "gpt", "value": f"A sofa, number {i}."}], "task_type": "classification3d",
                "src_dataset": "ShapeNet", "src_id": f"{i:08d}"})
        else:
            src = imgs[i % len(imgs)]
            rel = f"coco_images/{i:012d}{src.suffix}"
            _link(src, d / rel)
            c = _conv(i)
            c[0]["value"] = c[0]["value"].replace("<image>\n", "")
            recs.append({"id": f"{i:012d}", "image": rel, "conversations": c,
                         "task_type": "conversation", "src_image": "coco2017"})
    (d / "lamm.json").write_text(json.dumps(recs))
    return str(d / "lamm.json"), str(d), {}


def b_videochat(d: Path, n: int) -> Built:
    vids, recs = _videos(), []
    for i in range(n):
        rel = f"videos/000001_000050/{i:010d}.mp4"
        _link(vids[i % len(vids)], d / rel)
        recs.append({"video": rel, "QA": [{"q": f"What happens in the video ({i})?",
                                           "a": "Someone moves."}]})
    (d / "videochat_instruct.json").write_text(json.dumps(recs))
    return str(d / "videochat_instruct.json"), str(d), {}


def b_webvid(d: Path, n: int) -> Built:
    vids = _videos()
    with open(d / "results_2M_val.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        for i in range(n):
            vid = str(1000000000 + i)
            _link(vids[i % len(vids)], d / "videos" / "000001_000050" / f"{vid}.mp4")
            w.writerow([vid, f"https://example.invalid/{vid}.mp4", "PT00H00M12S", "000001_000050",
                        f"Clip {i}, with a comma, and \"quotes\"."])
    return str(d / "results_2M_val.csv"), str(d / "videos"), {}


def b_instructpix2pix(d: Path, n: int) -> Built:
    if not SAMPLES.is_dir():
        raise Skip("needs ../shared/samples/instructpix2pix")
    before, after = SAMPLES / "instructpix2pix" / "example.jpg", SAMPLES / "instructpix2pix" / "dataset.jpg"
    seeds = []
    for i in range((n + 1) // 2):  # two seeds per prompt folder
        folder = d / "ds" / f"{i:07d}"
        folder.mkdir(parents=True)
        (folder / "prompt.json").write_text(json.dumps(
            {"input": "a photo", "edit": f"turn him into a cyborg ({i})", "output": "a cyborg"}))
        for seed in (11, 22):
            _link(before, folder / f"{seed}_0.jpg")
            _link(after, folder / f"{seed}_1.jpg")
        seeds.append([f"{i:07d}", [11, 22]])
    (d / "ds" / "seeds.json").write_text(json.dumps(seeds))
    return str(d / "ds"), str(d / "ds"), {}


def b_mimic_it(d: Path, n: int) -> Built:
    imgs = _images()
    store = {f"LA_IMG_{k:06d}": base64.b64encode(p.read_bytes()).decode() for k, p in enumerate(imgs)}
    data = {f"LA_INS_{i:06d}": {"instruction": f"What is in the picture ({i})?", "answer": "A scene.",
                                "image_ids": [f"LA_IMG_{i % len(imgs):06d}"], "rel_ins_ids": []}
            for i in range(n)}
    (d / "LA_instructions.json").write_text(json.dumps({"meta": {}, "data": data}))
    (d / "LA.json").write_text(json.dumps(store))
    return str(d / "LA_instructions.json"), str(d), {}


def b_mimic_it_distinct(d: Path, n: int) -> Built:
    """MIMIC-IT with a different image per instruction (no reuse for the decoded-image cache):
    each image is a demo image with the instruction's number appended after its end, which
    image checks allow (bytes after the end marker)."""
    imgs = [p.read_bytes() for p in _images()]
    store = {f"LA_IMG_{i:06d}": base64.b64encode(imgs[i % len(imgs)] + b"%09d" % i).decode()
             for i in range(n)}
    data = {f"LA_INS_{i:06d}": {"instruction": f"What is in the picture ({i})?", "answer": "A scene.",
                                "image_ids": [f"LA_IMG_{i:06d}"], "rel_ins_ids": []}
            for i in range(n)}
    (d / "LA_instructions.json").write_text(json.dumps({"meta": {}, "data": data}))
    (d / "LA.json").write_text(json.dumps(store))
    return str(d / "LA_instructions.json"), str(d), {}


BUILDERS: Dict[str, Callable[[Path, int], Built]] = {
    "llava": b_llava, "sharegpt4v": b_sharegpt4v, "vision-flan": b_vision_flan,
    "multiinstruct": b_multiinstruct, "lamm": b_lamm, "videochat": b_videochat,
    "webvid": b_webvid, "instructpix2pix": b_instructpix2pix, "mimic-it": b_mimic_it,
    "mimic-it:distinct": b_mimic_it_distinct}


def media_of(fmt: str, built: Built) -> Tuple[List[Any], int]:
    """Every media item the reader yields (a path, or inline bytes) and their total size."""
    inp, root, opts = built
    items: List[Any] = []
    for s in get_reader(fmt.split(":")[0])(inp, media_root=root, **opts):
        items += [m.data if m.data is not None else m.path for m in s.media]
    total = sum(len(x) if isinstance(x, bytes) else os.path.getsize(x) for x in items)
    return items, total


#: CPU seconds of the last :func:`time_tarfile` call.
LAST_TAR_CPU = [0.0]


def time_tarfile(items: List[Any], out: Path) -> float:
    """Wall seconds of writing ``items`` into a new tar at ``out``. An earlier ``out`` is deleted
    before the clock starts, as :func:`time_convert` deletes its output folder: truncating a
    769 MB tar inside the timed region made every tar run after the first 2x slower."""
    if out.exists():
        out.unlink()
    _sync()
    c, t = _cpu(), time.perf_counter()
    with tarfile.open(out, "w", dereference=True) as tf:
        for i, x in enumerate(items):
            if isinstance(x, bytes):
                ti = tarfile.TarInfo(f"{i:09d}.bin")
                ti.size = len(x)
                tf.addfile(ti, io.BytesIO(x))
            else:
                tf.add(x, arcname=f"{i:09d}{Path(x).suffix}")
    dt = time.perf_counter() - t
    LAST_TAR_CPU[0] = _cpu() - c
    return dt


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its joined children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def time_convert(fmt: str, built: Built, out: Path, **kw: Any) -> Tuple[float, Dict[str, Any]]:
    """Wall seconds of one conversion; ``stats["cpu_seconds"]`` adds its CPU time (all processes)."""
    shutil.rmtree(out, ignore_errors=True)
    _sync()
    c, t = _cpu(), time.perf_counter()
    stats = convert(fmt.split(":")[0], built[0], str(out), media_root=built[1],
                    reader_options=built[2],
                    progress=False, **kw)
    dt = time.perf_counter() - t
    stats["cpu_seconds"] = _cpu() - c
    return dt, stats


def _sync() -> None:
    if hasattr(os, "sync"):
        os.sync()


def bench_formats(tmp: Path, names: List[str], n: int, repeat: int) -> None:
    registered = set(available_formats())
    print(f"per format: {n} records each, workers=1, {repeat} pairs of runs; MB/s of media bytes (best run); "
          "ratio = median of tarfile / convert seconds over the pairs")
    for fmt in names:
        if fmt.split(":")[0] not in registered:
            print(f"  {fmt:<20} skipped: no reader registered under this name")
            continue
        if fmt not in BUILDERS:
            print(f"  {fmt:<20} skipped: the bench has no sample input for this format")
            continue
        d = tmp / fmt.replace(":", "-")
        d.mkdir()
        try:
            built = BUILDERS[fmt](d, n)
            items, total = media_of(fmt, built)
        except Skip as e:
            print(f"  {fmt:<20} skipped: {e}")
            continue
        t_conv, t_tar, c_conv, c_tar, stats = [], [], [], [], {}
        for _ in range(repeat):
            t_tar.append(time_tarfile(items, d / "plain.tar"))
            c_tar.append(LAST_TAR_CPU[0])
            dt, stats = time_convert(fmt, built, d / "out", shard_size=max(1, n // 4))
            t_conv.append(dt)
            c_conv.append(stats["cpu_seconds"])
        mb = total / 1e6
        if not mb:
            print(f"  {fmt:<20} skipped: the sample input yields no media ({stats['skipped']})")
            continue
        conv, tar = mb / min(t_conv), mb / min(t_tar)
        paired = statistics.median(t / c for t, c in zip(t_tar, t_conv))
        kinds = ",".join(sorted(stats["counts"].get("media_kind", {}))) or "none"
        print(f"  {fmt:<20} {stats['written']:>5} written ({kinds}; skipped {stats['skipped'] or 0}),"
              f" {mb:6.1f} MB: convert {conv:7.1f} MB/s  tarfile {tar:7.1f} MB/s  ratio {paired:.2f}"
              f"  (best/best {conv / tar:.2f}, CPU-time {min(c_tar) / max(min(c_conv), 1e-9):.2f})")


def _burn(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def cpu_scaling(workers: int, n: int = 4_000_000) -> float:
    """Throughput ratio of ``workers`` processes vs one on a pure-Python CPU loop: what this
    machine can give right now (about ``workers`` when idle; near 1 when other jobs hold the CPUs)."""
    t = time.perf_counter()
    _burn(n)
    one = time.perf_counter() - t
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_burn, [1] * workers))  # start the processes
        t = time.perf_counter()
        list(ex.map(_burn, [n] * workers))
        many = time.perf_counter() - t
    return workers * one / many


def bench_resize(tmp: Path, n: int, repeat: int, workers: int, side: int) -> None:
    d = tmp / "resize"
    d.mkdir()
    imgs = sorted(p for p in DEMO_IMAGES.rglob("*") if p.is_file())
    recs = []
    for i in range(n):  # one image file per record, as in a real corpus
        src = imgs[i % len(imgs)]
        rel = f"{i // 1000:05d}/{i:09d}{src.suffix}"
        _link(src, d / "images" / rel)
        recs.append({"id": f"{i:09d}", "image": rel, "conversations": _conv(i)})
    (d / "ann.json").write_text(json.dumps(recs))
    built: Built = (str(d / "ann.json"), str(d / "images"), {})
    _, total = media_of("llava", built)
    shard = max(1, n // 8)
    t1, tk, ideal, rows, c1, ck = [], [], [], [], [], []
    for k in range(repeat):  # the CPU control next to each pair: other jobs come and go
        ideal.append(cpu_scaling(workers))
        dt, st = time_convert("llava", built, d / "w1", workers=1, shard_size=shard,
                              resize_max_side=side)
        t1.append(dt)
        c1.append(st["cpu_seconds"])
        dt, st = time_convert("llava", built, d / "wk", workers=workers, shard_size=shard,
                              resize_max_side=side)
        tk.append(dt)
        ck.append(st["cpu_seconds"])
        rows.append(f"    run {k}: control {ideal[-1]:.2f}x  workers 1 {t1[-1]:.2f} s  workers "
                    f"{workers} {tk[-1]:.2f} s  ratio {t1[-1] / tk[-1]:.2f}")
    mb = total / 1e6
    r1, rk = mb / min(t1), mb / min(tk)
    print(f"resize --resize-max-side {side}: {n} records, {mb:.1f} MB of demo photos, shard size "
          f"{shard}, best of {repeat}, cpus={os.cpu_count()}")
    print(f"  --workers 1: {r1:.1f} MB/s ({n / min(t1):.0f} rec/s)   --workers {workers}: "
          f"{rk:.1f} MB/s ({n / min(tk):.0f} rec/s)   ratio {rk / r1:.2f} (target >= 1.6)")
    print(f"  control: {workers} processes vs 1 on a pure CPU loop reach {max(ideal):.2f}x on this "
          f"machine now (load average {os.getloadavg()[0]:.1f}); per run:")
    print("\n".join(rows))
    cpu1, cpuk = min(c1), min(ck)
    print(f"  CPU time (all processes): workers 1 {cpu1:.2f} s, workers {workers} {cpuk:.2f} s "
          f"({100 * (cpuk / cpu1 - 1):+.0f}%); estimate (not a measurement) for {workers} idle "
          f"cores: {workers * cpu1 / cpuk:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="records per format (default 1000)")
    ap.add_argument("--repeat", type=int, default=7, help="timed pairs of runs (default 7)")
    ap.add_argument("--formats", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--resize-n", type=int, default=600, help="records of the resize run (0 = skip)")
    ap.add_argument("--resize-max-side", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2, help="workers compared with 1 when resizing")
    ap.add_argument("--tmp", default=None, help="work folder (default $TMPDIR)")
    args = ap.parse_args(argv)
    names = args.formats.split(",") if args.formats else sorted(set(BUILDERS) |
                                                                set(available_formats()))
    with tempfile.TemporaryDirectory(prefix="mmit-bench-", dir=args.tmp) as t:
        tmp = Path(t)
        bench_formats(tmp, names, args.n, args.repeat)
        if args.resize_n > 0:
            bench_resize(tmp, args.resize_n, args.repeat, args.workers, args.resize_max_side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
