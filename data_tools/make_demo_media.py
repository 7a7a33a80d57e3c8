"""Re-encode the bundled Video-LLaMA / VideoChat demo media (demo_data/videos, demo_data/audio).

Run from the project root::

    python data_tools/make_demo_media.py [--samples ../shared/samples] [--output demo_data]

Each source (real files of DAMO-NLP-SG/Video-LLaMA @ 64888c0 and OpenGVLab/Ask-Anything @ 4dd8210,
see ``demo_data/README.md`` and ``samples/MANIFEST.md``) is decoded with PyAV and written again,
small enough to live in the repository:

* videos: the first :data:`MAX_SECONDS` s, scaled to :data:`WIDTH` px wide (aspect kept, even
  sizes), :data:`FPS` frames/s (for each output tick the latest source frame at or before it),
  H.264 (``libx264``; ``mpeg4`` when FFmpeg lacks it), yuv420p, in MP4; the audio track, when the
  source has one, becomes AAC, :data:`AUDIO_RATE` Hz mono (channels averaged). A source without an
  audio track gives a file without one (``silence_girl.mp4`` stays silent on purpose).
* wav: at most :data:`WAV_SECONDS` s, :data:`AUDIO_RATE` Hz, mono (channels averaged), 16-bit PCM.

Encoding runs on one thread with fixed settings, so rerunning gives the same pictures and sounds
(byte-identical output also needs the same FFmpeg/x264 build, whose version string goes into the
file). Prints one line per output file: name, size in bytes, what it holds.
"""

from __future__ import annotations

import argparse
import os
import sys
import wave
from fractions import Fraction
from typing import Iterator, List, Optional, Tuple

import av
import numpy as np

#: Output frame width in pixels (height follows the aspect ratio, rounded to even).
WIDTH = 160
#: Output frame rate in frames per second.
FPS = 8
#: Longest video kept, in seconds (from the start of the source).
MAX_SECONDS = 6.0
#: Audio sample rate in Hz (ImageBind / Video-LLaMA's audio branch use 16 kHz).
AUDIO_RATE = 16000
#: Longest wav kept, in seconds.
WAV_SECONDS = 3.0
#: x264 constant rate factor (higher = smaller, blurrier) and AAC bit rate (bits/s).
CRF = 30
AUDIO_BITRATE = 24000

#: (source path under --samples, output path under --output). Sources: samples/MANIFEST.md.
VIDEOS = [
    ("video_llama/examples/IronMan.mp4", "videos/ironman.mp4"),
    ("video_llama/examples/dog_barking.mp4", "videos/dog_barking.mp4"),
    ("video_llama/examples/silence_girl.mp4", "videos/silence_girl.mp4"),
    ("videochat/example/yoga.mp4", "videos/yoga.mp4"),
    ("videochat/example/hitting_baseball.mp4", "videos/hitting_baseball.mp4"),
]
WAVS = [
    ("video_llama/imagebind_assets/dog_audio.wav", "audio/dog_bark.wav"),
    ("video_llama/imagebind_assets/car_audio.wav", "audio/car.wav"),
]


def out_size(width: int, height: int) -> Tuple[int, int]:
    """``(WIDTH, h)`` with ``h`` the even height closest to the source's aspect ratio."""
    h = max(2, int(round(height * WIDTH / width / 2)) * 2)
    return WIDTH, h


def sampled_frames(container) -> Iterator[Tuple[int, "av.VideoFrame"]]:
    """``(output index, source frame)`` at :data:`FPS`, over the first :data:`MAX_SECONDS` s.

    Output frame ``k`` (time ``k / FPS``) is the last source frame shown at or before that time."""
    stream = container.streams.video[0]
    n_out = int(round(MAX_SECONDS * FPS))
    k, prev, t0 = 0, None, None
    for frame in container.decode(stream):
        t = float(frame.pts * stream.time_base) if frame.pts is not None else None
        if t is None:
            continue
        if t0 is None:
            t0 = t
        t -= t0
        while k < n_out and prev is not None and t > k / FPS + 1e-6:
            yield k, prev
            k += 1
        if k >= n_out:
            return
        prev = frame
    while prev is not None and k < n_out and k / FPS <= _duration(container) + 1e-6:
        yield k, prev  # the tail: the last frame holds until the clip ends
        k += 1


def _duration(container) -> float:
    st = container.streams.video[0]
    if st.duration and st.time_base:
        return float(st.duration * st.time_base)
    return container.duration / 1e6 if container.duration else 0.0


def mono_audio(path: str, max_seconds: float) -> Optional[np.ndarray]:
    """The first audio stream of ``path`` as float32 mono at :data:`AUDIO_RATE` Hz, at most
    ``max_seconds`` long (None when the file has no audio stream)."""
    with av.open(path) as c:
        if not c.streams.audio:
            return None
        res = av.AudioResampler(format="fltp", layout=None, rate=AUDIO_RATE)
        chunks: List[np.ndarray] = []
        for frame in c.decode(c.streams.audio[0]):
            for out in res.resample(frame):
                chunks.append(out.to_ndarray().mean(axis=0))
        for out in res.resample(None):
            chunks.append(out.to_ndarray().mean(axis=0))
    wave_ = np.concatenate(chunks).astype(np.float32)[: int(round(max_seconds * AUDIO_RATE))]
    return np.clip(wave_, -1.0, 1.0)


def encode_video(src: str, dst: str) -> str:
    """Write the small copy of ``src`` to ``dst``; returns a short description."""
    audio = mono_audio(src, MAX_SECONDS)
    with av.open(src) as inp:
        vin = inp.streams.video[0]
        w, h = out_size(vin.width, vin.height)
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        with av.open(dst, "w", format="mp4") as out:
            vout = out.add_stream(codec, rate=FPS)
            vout.width, vout.height, vout.pix_fmt = w, h, "yuv420p"
            vout.codec_context.thread_count = 1
            if codec == "libx264":
                vout.options = {"crf": str(CRF), "preset": "slow", "threads": "1"}
            else:
                vout.bit_rate = 60000
            aout = None
            if audio is not None:
                aout = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
                aout.bit_rate = AUDIO_BITRATE
            n = 0
            for k, frame in sampled_frames(inp):
                f = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA")
                f.pts, f.time_base = k, Fraction(1, FPS)
                out.mux(vout.encode(f))
                n += 1
            out.mux(vout.encode(None))
            if aout is not None:
                step = 1024  # AAC frame size
                for i in range(0, len(audio), step):
                    chunk = audio[i:i + step]
                    af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                    af.sample_rate, af.pts, af.time_base = AUDIO_RATE, i, Fraction(1, AUDIO_RATE)
                    out.mux(aout.encode(af))
                out.mux(aout.encode(None))
    desc = f"{codec} {w}x{h} {n} frames @ {FPS} fps"
    if audio is not None:
        desc += f", AAC {AUDIO_RATE} Hz mono {len(audio) / AUDIO_RATE:.2f} s"
    else:
        desc += ", no audio track"
    return desc


def encode_wav(src: str, dst: str) -> str:
    """Write ``src``'s audio as 16-bit PCM mono :data:`AUDIO_RATE` Hz wav, at most
    :data:`WAV_SECONDS` s."""
    audio = mono_audio(src, WAV_SECONDS)
    if audio is None:
        raise SystemExit(f"{src}: no audio stream")
    pcm = np.round(audio * 32767.0).astype("<i2")
    with wave.open(dst, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_RATE)
        w.writeframes(pcm.tobytes())
    return f"PCM16 {AUDIO_RATE} Hz mono {len(pcm) / AUDIO_RATE:.2f} s"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", default=os.path.join("..", "shared", "samples"),
                    help="folder holding video_llama/ and videochat/ (default: ../shared/samples)")
    ap.add_argument("--output", default="demo_data",
                    help="folder to write videos/ and audio/ into (default: demo_data)")
    args = ap.parse_args(argv)
    jobs = [(s, d, encode_video) for s, d in VIDEOS] + [(s, d, encode_wav) for s, d in WAVS]
    for src, dst, fn in jobs:
        src_p, dst_p = os.path.join(args.samples, src), os.path.join(args.output, dst)
        if not os.path.isfile(src_p):
            print(f"missing source: {src_p}", file=sys.stderr)
            return 1
        os.makedirs(os.path.dirname(dst_p), exist_ok=True)
        desc = fn(src_p, dst_p)
        print(f"{dst}: {os.path.getsize(dst_p)} bytes, {desc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
