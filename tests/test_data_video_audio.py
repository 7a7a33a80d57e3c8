"""Shared media decoding (mmit/data/video.py, mmit/data/audio.py): uniform frame sampling with PyAV /
PIL, mono 16 kHz audio, ImageBind-style clips, and the SampleError reasons of bad media.

Every behaviour is checked on media the test encodes itself in tmp_path (tiny mp4 / mkv with and
without an audio track, wav / flac / mp3, GIF); the real Video-LLaMA / VideoChat sample files are
checked as documented in samples/MANIFEST.md when ``../shared/samples`` is present.
"""

from __future__ import annotations

import io
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from conftest import SHARED_SAMPLES  # noqa: E402
from mmit.data import video as video_mod  # noqa: E402
from mmit.data.audio import audio_clips, decode_audio  # noqa: E402
from mmit.data.sample import SampleError  # noqa: E402
from mmit.data.video import DecodedVideo, decode_video, decode_video_frames, uniform_indices  # noqa: E402

W, H = 64, 48


def colour(k: int):
    """The RGB colour of frame k (far apart for k < 26, so a decoded frame names its index)."""
    return (10 * k, 255 - 10 * k, (53 * k) % 256)


def frame_index(img) -> int:
    """Index k whose colour is nearest to the centre pixel of a decoded frame."""
    px = np.asarray(img, dtype=np.float64)[H // 2, W // 2]
    return int(np.argmin([np.abs(px - colour(k)).sum() for k in range(26)]))


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(round(sr * seconds))) / sr)


def make_video(path: Path, n: int = 24, fps: int = 12, audio: bool = False) -> bytes:
    """Encode ``n`` solid-colour frames (frame k = colour(k)) with libx264, optionally with a
    440 Hz AAC track of the same duration; the container follows the suffix (mp4, mkv)."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        if audio:
            as_ = c.add_stream("aac", rate=44100, layout="mono")
        for k in range(n):
            a = np.zeros((H, W, 3), np.uint8)
            a[:] = colour(k)
            for p in vs.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
        if audio:
            x = sine(440, 44100, n / fps).astype(np.float32)
            for i in range(0, len(x), 1024):
                fr = av.AudioFrame.from_ndarray(x[None, i:i + 1024], format="fltp", layout="mono")
                fr.sample_rate, fr.pts = 44100, i
                for p in as_.encode(fr):
                    c.mux(p)
            for p in as_.encode(None):
                c.mux(p)
    return path.read_bytes()


def make_wav(path: Path, freq=440.0, sr=44100, seconds=1.0, channels=1) -> bytes:
    x = (sine(freq, sr, seconds) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.repeat(x[:, None], channels, axis=1).tobytes())
    return path.read_bytes()


def make_audio(path: Path, codec: str, sr=44100, seconds=1.0) -> bytes:
    """440 Hz mono in another codec (flac, libmp3lame); the container follows the suffix."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=sr, layout="mono")
        x = (sine(440, sr, seconds) * 32767).astype(np.int16)
        fmt = s.codec_context.format.name
        for i in range(0, len(x), 1152):
            chunk = x[None, i:i + 1152]
            if fmt.startswith("flt"):
                chunk = (chunk / 32767).astype(np.float32)
            elif fmt.startswith("s32"):
                chunk = chunk.astype(np.int32) << 16
            fr = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
            fr.sample_rate, fr.pts = sr, i
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path.read_bytes()


def dominant_hz(x: torch.Tensor, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x.numpy() * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()])


# ------------------------------------------------------------------------------------ video --
def test_uniform_indices_unchanged():
    assert uniform_indices(24, 8) == [0, 3, 7, 10, 13, 16, 20, 23]
    assert uniform_indices(3, 5) == [0, 0, 1, 2, 2]
    assert uniform_indices(1, 4) == [0, 0, 0, 0]


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])  # mkv stores no frame count: estimated
def test_frames_uniformly_spaced_first_and_last(tmp_path, suffix):
    data = make_video(tmp_path / f"v.{suffix}", n=24, fps=12)
    v = decode_video(data, "v")
    assert isinstance(v, DecodedVideo) and len(v.frames) == 8
    want = uniform_indices(24, 8)
    assert v.indices == want and want[0] == 0 and want[-1] == 23
    assert [frame_index(f) for f in v.frames] == want  # the frames really are those frames
    assert all(f.mode == "RGB" and f.size == (W, H) for f in v.frames)
    assert v.num_total_frames == 24
    assert v.fps == pytest.approx(12.0)
    assert v.duration == pytest.approx(2.0, abs=1 / 12 + 1e-6)
    assert v.timestamps == pytest.approx([i / 12 for i in want], abs=1e-3)


def test_num_frames_and_repeats(tmp_path):
    data = make_video(tmp_path / "v.mp4", n=24)
    for k in (1, 2, 5, 16):
        v = decode_video(data, "v", num_frames=k)
        assert [frame_index(f) for f in v.frames] == uniform_indices(24, k)
    short = decode_video(make_video(tmp_path / "s.mp4", n=3), "s", num_frames=8)
    assert [frame_index(f) for f in short.frames] == [0, 0, 1, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        decode_video(data, "v", num_frames=0)


def test_tensor_output_matches_pil(tmp_path):
    data = make_video(tmp_path / "v.mp4", n=10)
    t = decode_video(data, "v", num_frames=4, as_tensor=True, threads=1)
    assert t.frames.dtype == torch.uint8 and t.frames.shape == (4, H, W, 3)
    p = decode_video(data, "v", num_frames=4)
    assert torch.equal(t.frames, torch.from_numpy(np.stack([np.asarray(f) for f in p.frames])))


def test_decode_video_frames_keeps_old_contract(tmp_path):
    frames = decode_video_frames(make_video(tmp_path / "v.mp4", n=12), "v", 4)
    assert isinstance(frames, list) and len(frames) == 4
    assert [frame_index(f) for f in frames] == uniform_indices(12, 4)


def test_wrong_header_count_decodes_again(tmp_path, monkeypatch):
    """When the header's frame count is off, the result is still exact for the true count."""
    data = make_video(tmp_path / "v.mp4", n=24)
    probe = video_mod._probe
    for fake in (30, 17, 0):
        monkeypatch.setattr(video_mod, "_probe", lambda *a, f=fake: (f,) + probe(*a)[1:])
        v = decode_video(data, "v")
        assert v.num_total_frames == 24 and [frame_index(f) for f in v.frames] == uniform_indices(24, 8)


def test_only_sampled_frames_are_kept(tmp_path, monkeypatch):
    """Memory: the decode pass converts (and holds) only the sampled frames, not all of them."""
    data = make_video(tmp_path / "v.mp4", n=24)
    seen = []
    real = video_mod._pass

    def spy(data, where, wanted, threads):
        kept, n, times = real(data, where, wanted, threads)
        seen.append((len(kept), n))
        return kept, n, times

    monkeypatch.setattr(video_mod, "_pass", spy)
    decode_video(data, "v", num_frames=4)
    assert seen == [(4, 24)]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])  # animated GIF / WebP / APNG via PIL
def test_animations_via_pil(fmt):
    from PIL import Image

    imgs = [Image.new("RGB", (W, H), colour(k)) for k in range(10)]
    buf = io.BytesIO()
    imgs[0].save(buf, format=fmt, save_all=True, append_images=imgs[1:], duration=100, loop=0)
    v = decode_video(buf.getvalue(), "g.gif", num_frames=4)
    assert v.indices == uniform_indices(10, 4) == [frame_index(f) for f in v.frames]
    assert v.duration == pytest.approx(1.0) and v.fps == pytest.approx(10.0)
    assert v.timestamps == pytest.approx([i / 10 for i in v.indices])
    t = decode_video(buf.getvalue(), "g.gif", num_frames=4, as_tensor=True)
    assert t.frames.shape == (4, H, W, 3)


def test_bad_video_reasons(tmp_path):
    good = make_video(tmp_path / "v.mp4", n=24)
    cases = {
        "truncated": good[: len(good) // 2],
        "garbage": bytes(range(256)) * 8,
        "text-named-mp4": b"this is not a video, just text in a file named clip.mp4\n" * 5,
        "zero-byte": b"",
        "audio-only": make_wav(tmp_path / "a.wav"),
    }
    for name, data in cases.items():
        with pytest.raises(SampleError) as e:
            decode_video(data, f"{name}.mp4")
        assert e.value.reason == "undecodable-video", name
        assert str(e.value).startswith(f"{name}.mp4")


def test_too_large_and_missing_decoder(tmp_path, monkeypatch):
    data = make_video(tmp_path / "v.mp4", n=4)
    with pytest.raises(SampleError) as e:
        decode_video(data, "v", max_pixels=W * H - 1)
    assert e.value.reason == "image-too-large"
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(SampleError) as e:
        decode_video(data, "v")
    assert e.value.reason == "no-video-decoder"
    with pytest.raises(SampleError) as e:
        decode_audio(make_wav(tmp_path / "a.wav"), "a")
    assert e.value.reason == "no-audio-decoder"


# ------------------------------------------------------------------------------------ audio --
def test_wav_44k_resampled_to_16k(tmp_path):
    x, sr = decode_audio(make_wav(tmp_path / "a.wav", seconds=1.0), "a.wav")
    assert sr == 16000 and x.dtype == torch.float32 and x.dim() == 1
    assert x.shape[0] == pytest.approx(16000, rel=0.01)
    assert dominant_hz(x, sr) == pytest.approx(440, abs=3)
    assert float(x.abs().max()) == pytest.approx(0.5, abs=0.02) and float(x.abs().max()) <= 1.0


def test_stereo_is_averaged_and_max_seconds(tmp_path):
    x, sr = decode_audio(make_wav(tmp_path / "s.wav", seconds=2.0, channels=2), "s", sample_rate=8000)
    assert sr == 8000 and x.shape[0] == pytest.approx(16000, rel=0.01)
    assert float(x.abs().max()) == pytest.approx(0.5, abs=0.02)  # mean of L=R, not L/sqrt(2)*2
    y, _ = decode_audio(make_wav(tmp_path / "s.wav", seconds=2.0), "s", max_seconds=0.5)
    assert y.shape[0] == 8000


@pytest.mark.parametrize("suffix,codec", [("flac", "flac"), ("mp3", "libmp3lame")])
def test_other_audio_codecs(tmp_path, suffix, codec):
    x, sr = decode_audio(make_audio(tmp_path / f"a.{suffix}", codec, seconds=1.0), suffix)
    assert x.shape[0] == pytest.approx(16000, rel=0.1)  # mp3 adds encoder delay / padding
    assert dominant_hz(x, sr) == pytest.approx(440, abs=3)


def test_video_with_audio_track(tmp_path):
    data = make_video(tmp_path / "av.mp4", n=24, fps=12, audio=True)
    x, sr = decode_audio(data, "av.mp4")
    assert x.shape[0] == pytest.approx(2.0 * 16000, rel=0.05)  # AAC priming / padding frames
    assert dominant_hz(x, sr) == pytest.approx(440, abs=3)
    assert len(decode_video(data, "av.mp4").frames) == 8  # the audio does not disturb the video


def test_video_without_audio_track_policy(tmp_path):
    data = make_video(tmp_path / "v.mp4", n=24, fps=12)
    with pytest.raises(SampleError) as e:
        decode_audio(data, "v.mp4")
    assert e.value.reason == "no-audio-track"
    x, sr = decode_audio(data, "v.mp4", no_audio="silence")
    assert sr == 16000 and x.shape[0] == pytest.approx(2.0 * 16000, rel=0.05)
    assert x.dtype == torch.float32 and not x.any()
    assert decode_audio(data, "v.mp4", no_audio="silence", max_seconds=0.25)[0].shape[0] == 4000
    with pytest.raises(ValueError):
        decode_audio(data, "v.mp4", no_audio="zeros")


def test_bad_audio_reasons(tmp_path):
    wav = make_wav(tmp_path / "a.wav")
    for name, data in {"zero-byte.wav": b"", "garbage.wav": bytes(range(256)) * 8,
                       "text.wav": b"not audio at all\n" * 20, "header-only.wav": wav[:44]}.items():
        with pytest.raises(SampleError) as e:
            decode_audio(data, name)
        assert e.value.reason == "undecodable-audio", name
        assert str(e.value).startswith(name)


def test_audio_clips_shapes_and_positions():
    sr = 16000
    x = torch.arange(10 * sr, dtype=torch.float32)
    c = audio_clips(x, sr)
    assert c.shape == (3, 2 * sr)
    assert [int(r[0]) for r in c] == [0, 4 * sr, 8 * sr]  # first starts at 0, last ends at the end
    assert int(c[-1, -1]) == 10 * sr - 1
    assert audio_clips(x, sr, clip_seconds=1.0, num_clips=5).shape == (5, sr)
    assert audio_clips(x, sr, num_clips=1).shape == (1, 2 * sr)
    short = audio_clips(torch.ones(sr // 2), sr)  # 0.5 s: zero padded, all clips equal
    assert short.shape == (3, 2 * sr) and short[:, : sr // 2].eq(1).all() and not short[:, sr // 2:].any()
    with pytest.raises(ValueError):
        audio_clips(torch.zeros(2, sr), sr)


# ----------------------------------------------------------------------- shared sample media --
# (file, seconds, (width, height), has audio) as stated in samples/MANIFEST.md
SAMPLE_VIDEOS = [
    ("video_llama/examples/IronMan.mp4", 8.0, (854, 480), True),
    ("video_llama/examples/dog_barking.mp4", 7.2, (854, 480), True),
    ("video_llama/examples/silence_girl.mp4", 11.7, (596, 336), False),
    ("videochat/example/yoga.mp4", 10.0, (568, 320), False),
    ("videochat/example/hitting_baseball.mp4", 10.0, (426, 320), False),
]
needs_samples = pytest.mark.skipif(not SHARED_SAMPLES.is_dir(), reason="../shared/samples not present")


@needs_samples
@pytest.mark.parametrize("rel,seconds,size,has_audio", SAMPLE_VIDEOS)
def test_shared_sample_videos(rel, seconds, size, has_audio):
    data = (SHARED_SAMPLES / rel).read_bytes()
    v = decode_video(data, rel)
    assert len(v.frames) == 8 and all(f.size == size for f in v.frames)
    assert v.indices[0] == 0 and v.indices[-1] == v.num_total_frames - 1
    # MANIFEST gives the container's length; dog_barking's audio track outlasts its video by 0.12 s
    assert v.duration == pytest.approx(seconds, abs=0.15)
    assert v.num_total_frames == pytest.approx(v.fps * v.duration, abs=1)
    assert all(b > a for a, b in zip(v.timestamps, v.timestamps[1:]))
    if has_audio:
        x, sr = decode_audio(data, rel)
        assert x.shape[0] == pytest.approx(seconds * sr, rel=0.03) and x.abs().max() > 0.05
        assert audio_clips(x, sr).shape == (3, 2 * sr)
    else:
        with pytest.raises(SampleError) as e:
            decode_audio(data, rel)
        assert e.value.reason == "no-audio-track"
        x, sr = decode_audio(data, rel, no_audio="silence")
        assert x.shape[0] == pytest.approx(seconds * sr, rel=0.02) and not x.any()


@needs_samples
@pytest.mark.parametrize("rel,seconds", [("video_llama/imagebind_assets/dog_audio.wav", 2.61),
                                         ("video_llama/imagebind_assets/car_audio.wav", 5.00)])
def test_shared_imagebind_wavs(rel, seconds):
    x, sr = decode_audio((SHARED_SAMPLES / rel).read_bytes(), rel)
    assert sr == 16000 and x.shape[0] == pytest.approx(seconds * 16000, rel=0.01)
    assert 0.05 < float(x.abs().max()) <= 1.0
    assert audio_clips(x, sr).shape == (3, 32000)
