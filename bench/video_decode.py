"""Benchmark shared video decoding (``mmit.data.video.decode_video``) through a torch DataLoader.

A ``Dataset`` over encoded videos decodes ``N = 8`` uniformly spaced frames per item (Video-LLaMA's
sampling, arXiv 2306.02858) into a ``uint8 [8, H, W, 3]`` tensor, with one FFmpeg decoder thread per
item (``threads=1``, what a DataLoader worker should use). The same items go through a DataLoader
with 1 worker and with 2 workers, in this process, interleaved, best of ``--repeat``; worker start-up
is included in the time. Printed per run: sampled frames/s (8 per video), decoded frames/s (every
frame of the clip passes through the decoder, since decoding is sequential) and the ratio
2 workers / 1 worker. A ratio near 2 needs 2 idle cores: the control line says how many this
machine has (``os.cpu_count()``, the CPUs this process may use) and its load average, and a pure
CPU loop is timed the same way (2 processes vs 1) to show what the machine gives right now.

Videos: the mp4 files of ``../shared/samples/video_llama/examples`` and
``../shared/samples/videochat/example`` (854x480 to 426x320, 7 to 12 s, h264), or, when those are
absent, ``--gen`` generated 320x240 h264 clips of 10 s at 25 fps (moving noise, so decoding costs
something).

Usage: ``python bench/video_decode.py [--items 20] [--repeat 2] [--frames 8] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from mmit.data.video import decode_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples"


class VideoFrames(Dataset):
    """Item i: ``(uint8 [N, H, W, 3] frames, number of frames decoded)`` of video ``i % len``."""

    def __init__(self, videos: List[Tuple[str, bytes]], items: int, frames: int, threads: int):
        self.videos, self.items, self.frames, self.threads = videos, items, frames, threads

    def __len__(self) -> int:
        return self.items

    def __getitem__(self, i: int):
        name, data = self.videos[i % len(self.videos)]
        v = decode_video(data, name, self.frames, as_tensor=True, threads=self.threads)
        return v.frames, v.num_total_frames


def sample_videos() -> List[Tuple[str, bytes]]:
    paths = sorted((SAMPLES / "video_llama" / "examples").glob("*.mp4"))
    paths += sorted((SAMPLES / "videochat" / "example").glob("*.mp4"))
    return [(str(p.relative_to(SAMPLES)), p.read_bytes()) for p in paths]


def generated_videos(n: int, seconds: float = 10.0, fps: int = 25, size=(320, 240)) -> List[Tuple[str, bytes]]:
    import av

    rng = np.random.default_rng(0)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in range(n):
            path = Path(tmp) / f"gen{v}.mp4"
            base = rng.integers(0, 256, (size[1], size[0] * 2, 3), dtype=np.uint8)
            with av.open(str(path), "w") as c:
                s = c.add_stream("libx264", rate=fps)
                s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
                for k in range(int(seconds * fps)):
                    shift = (3 * k) % size[0]
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, shift:shift + size[0]]),
                                                       format="rgb24")
                    for p in s.encode(frame):
                        c.mux(p)
                for p in s.encode(None):
                    c.mux(p)
            out.append((f"generated/gen{v}.mp4", path.read_bytes()))
    return out


def run_loader(ds: Dataset, workers: int) -> Tuple[float, int, int]:
    """(wall seconds, sampled frames, decoded frames) for one pass of a DataLoader."""
    t = time.perf_counter()
    sampled = decoded = 0
    loader = DataLoader(ds, batch_size=None, num_workers=workers, shuffle=False)
    for frames, n in loader:
        sampled += frames.shape[0]
        decoded += int(n)
    return time.perf_counter() - t, sampled, decoded


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i % 7
    return x


def cpu_control(n: int = 3_000_000) -> float:
    """Speed-up of 2 processes over 1 on a pure Python loop (2 jobs each way)."""
    times = []
    for procs in (1, 2):
        with ProcessPoolExecutor(procs) as ex:
            ex.submit(_spin, 1000).result()  # start the pool first
            t = time.perf_counter()
            list(ex.map(_spin, [n, n]))
            times.append(time.perf_counter() - t)
    return times[0] / times[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=20, help="videos decoded per run")
    ap.add_argument("--repeat", type=int, default=2, help="runs per worker count; the best is kept")
    ap.add_argument("--frames", type=int, default=8, help="frames sampled per video (N)")
    ap.add_argument("--threads", type=int, default=1, help="FFmpeg decoder threads per item")
    ap.add_argument("--gen", type=int, default=4, help="videos to generate when samples are absent")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()

    videos = sample_videos() if SAMPLES.is_dir() else []
    origin = "shared samples"
    if not videos:
        videos, origin = generated_videos(args.gen), "generated (samples absent)"
    print(f"videos: {len(videos)} from {origin}, {sum(len(d) for _, d in videos) / 1e6:.1f} MB; "
          f"{args.items} items per run, N={args.frames}, threads={args.threads}, best of {args.repeat}")
    ds = VideoFrames(videos, args.items, args.frames, args.threads)
    run_loader(VideoFrames(videos, 2, args.frames, args.threads), 0)  # warm caches / imports

    best = {}
    for _ in range(args.repeat):
        for workers in (1, 2):
            secs, sampled, decoded = run_loader(ds, workers)
            if workers not in best or secs < best[workers][0]:
                best[workers] = (secs, sampled, decoded)
    for workers in (1, 2):
        secs, sampled, decoded = best[workers]
        print(f"workers={workers}: {secs:6.2f} s  {sampled / secs:7.1f} sampled frames/s  "
              f"{decoded / secs:7.1f} decoded frames/s  ({args.items / secs:.2f} videos/s)")
    ratio = best[1][0] / best[2][0]
    print(f"ratio 2 workers / 1 worker: {ratio:.2f}")

    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    load1, load5, _ = load_before
    print(f"control: os.cpu_count()={cpus}, usable by this process={usable}; load average before "
          f"the runs {load1:.2f} (1 min) {load5:.2f} (5 min) -> about {max(usable - load1, 0):.1f} "
          f"cores free; after {os.getloadavg()[0]:.2f}; pure CPU loop 2 procs / 1 proc now: "
          f"{cpu_control():.2f}")


if __name__ == "__main__":
    main()
