"""Bundled Video-LLaMA demo media (demo_data/videos, demo_data/audio, video_llama_demo.json) and the
VideoChat reader's ``audio`` key."""

import hashlib
import json
import shutil
import wave
from collections import Counter
from pathlib import Path

import pytest

from mmit.constants import MEDIA_PLACEHOLDERS
from mmit.data.audio import decode_audio
from mmit.data.sample import SampleError
from mmit.data.sources.videochat import read_videochat
from mmit.data.stats import SkipCounter
from mmit.data.video import decode_video

pytest.importorskip("av")

DEMO = Path(__file__).parents[1] / "demo_data"
DEMO_JSON = DEMO / "video_llama_demo.json"
VIDEOS = ["ironman", "dog_barking", "silence_girl", "yoga", "hitting_baseball"]
WITH_AUDIO = {"ironman", "dog_barking"}
WAVS = ["dog_bark", "car"]


def _bytes(rel):
    return (DEMO / rel).read_bytes()


@pytest.mark.parametrize("name", VIDEOS)
def test_bundled_video_decodes_to_8_frames(name):
    rel = f"videos/{name}.mp4"
    data = _bytes(rel)
    assert len(data) < 100_000
    v = decode_video(data, rel, 8)
    assert len(v.frames) == 8 and v.frames[0].width == 160 and v.frames[0].height % 2 == 0
    assert v.fps == pytest.approx(8.0) and v.duration <= 6.0 + 1e-6
    assert v.num_total_frames == 48


@pytest.mark.parametrize("name", sorted(WITH_AUDIO))
def test_videos_with_audio_track(name):
    rel = f"videos/{name}.mp4"
    wav, sr = decode_audio(_bytes(rel), rel)
    assert sr == 16000 and wav.dim() == 1
    assert 5.5 * sr <= wav.shape[0] <= 6.2 * sr
    assert float(wav.abs().max()) > 0.05  # not silence


@pytest.mark.parametrize("name", [n for n in VIDEOS if n not in WITH_AUDIO])
def test_videos_without_audio_track(name):
    rel = f"videos/{name}.mp4"
    data = _bytes(rel)
    with pytest.raises(SampleError) as e:
        decode_audio(data, rel, no_audio="skip")
    assert e.value.reason == "no-audio-track" and rel in str(e.value)
    wav, sr = decode_audio(data, rel, no_audio="silence")
    assert sr == 16000 and wav.shape[0] == 6 * 16000 and float(wav.abs().max()) == 0.0


@pytest.mark.parametrize("name", WAVS)
def test_bundled_wav_is_16k_mono_pcm16(name):
    path = DEMO / "audio" / f"{name}.wav"
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert 0 < w.getnframes() <= 3 * 16000
        n = w.getnframes()
    wav, sr = decode_audio(path.read_bytes(), str(path))
    assert sr == 16000 and wav.shape[0] == n and float(wav.abs().max()) > 0.05


def test_sha256sums_cover_the_new_media():
    sums = dict(line.split()[::-1] for line in (DEMO / "SHA256SUMS").read_text().splitlines())
    for rel in [f"videos/{n}.mp4" for n in VIDEOS] + [f"audio/{n}.wav" for n in WAVS]:
        assert sums[rel] == hashlib.sha256(_bytes(rel)).hexdigest(), rel


def test_demo_json_reads_without_skips():
    stats = SkipCounter()
    records = json.loads(DEMO_JSON.read_text())
    out = list(read_videochat(DEMO_JSON, stats=stats, load_bytes=True))
    assert stats.total == 0 and len(out) == len(records) == 38
    kinds = Counter(m.kind for s in out for m in s.media)
    assert kinds == {"video": 24, "audio": 13, "image": 6}
    shapes = Counter(tuple(m.kind for m in s.media) for s in out)
    assert shapes == {("video",): 20, ("audio",): 8, ("video", "audio"): 4, ("image",): 5,
                      ("image", "audio"): 1}
    for s in out:
        s.validate()
        assert s.source == "videochat"
        for kind, ph in MEDIA_PLACEHOLDERS.items():
            assert s.num_placeholders(ph) == kinds_in(s, kind)
        for m in s.media:
            assert m.data and m.ext in {"video": ("mp4",), "audio": ("mp4", "wav"),
                                        "image": ("jpg",)}[m.kind]
        for t in s.turns:
            if t.role == "assistant":
                assert len(t.content.split()) < 15
    total_ph = Counter({k: sum(s.num_placeholders(ph) for s in out)
                        for k, ph in MEDIA_PLACEHOLDERS.items()})
    assert +total_ph == kinds
    by_id = {s.id: s for s in out}
    silent = by_id["silence_girl_av"]
    assert [m.kind for m in silent.media] == ["video", "audio"]
    with pytest.raises(SampleError) as e:
        decode_audio(silent.media[1].data, silent.id)
    assert e.value.reason == "no-audio-track"


def kinds_in(sample, kind):
    return sum(1 for m in sample.media if m.kind == kind)


def test_demo_json_every_video_and_audio_used():
    records = json.loads(DEMO_JSON.read_text())
    videos = {r["video"] for r in records if "video" in r}
    audios = {r["audio"] for r in records if "audio" in r}
    assert videos == {f"videos/{n}.mp4" for n in VIDEOS}
    assert audios == {f"videos/{n}.mp4" for n in WITH_AUDIO | {"silence_girl"}} | \
        {f"audio/{n}.wav" for n in WAVS}


# -- the reader's ``audio`` key ----------------------------------------------------------------

@pytest.fixture
def root(tmp_path):
    for rel in ("videos/dog_barking.mp4", "audio/car.wav", "images/dog_running.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEMO / rel, tmp_path / rel)
    (tmp_path / "audio" / "page.wav").write_text("<html>not found</html>")
    return tmp_path


def _read(root, records, **kw):
    p = root / "ann.json"
    p.write_text(json.dumps(records))
    stats = SkipCounter()
    out = list(read_videochat(p, stats=stats, **kw))
    for s in out:
        s.validate()
    return out, stats


def test_audio_only_and_video_plus_audio(root):
    recs = [{"audio": "audio/car.wav", "QA": [{"q": "What sound can you hear?", "a": "A horn."}]},
            {"video": "videos/dog_barking.mp4", "audio": "videos/dog_barking.mp4", "start": 1.0,
             "end": 4.0, "QA": [{"q": "What do you hear?", "a": "A dog."}]},
            {"image": "images/dog_running.jpg", "audio": "audio/car.wav",
             "QA": [{"q": "What?", "a": "A dog and a horn."}]}]
    out, stats = _read(root, recs, load_bytes=True)
    assert stats.total == 0
    a, va, ia = out
    assert [m.kind for m in a.media] == ["audio"] and a.media[0].ext == "wav"
    assert a.turns[0].content == "<audio>\nWhat sound can you hear?"
    assert a.media[0].path == str(root / "audio/car.wav")
    assert a.media[0].meta["original_path"] == "audio/car.wav"
    assert [m.kind for m in va.media] == ["video", "audio"]
    assert [m.ext for m in va.media] == ["mp4", "mp4"]
    assert va.media[0].data == _bytes("videos/dog_barking.mp4")
    assert va.media[1].data is va.media[0].data  # one file, read once
    assert va.num_placeholders("<video>") == 1 and va.num_placeholders("<audio>") == 1
    assert va.turns[0].content.endswith("What do you hear?")
    for m in va.media:  # the audio is the video's own track: same span
        assert (m.meta["start"], m.meta["end"]) == (1.0, 4.0)
    assert "audio" not in va.meta and "start" not in va.meta
    assert [m.kind for m in ia.media] == ["image", "audio"]
    assert ia.turns[0].content == "<image>\n<audio>\nWhat?"
    # without load_bytes: paths checked, nothing read
    out, stats = _read(root, recs)
    assert stats.total == 0 and all(m.data is None for s in out for m in s.media)


def test_missing_audio_file_is_a_counted_skip(root):
    recs = [{"audio": "audio/car.wav", "QA": [{"q": "q", "a": "a"}]},
            {"id": "gone", "audio": "audio/missing.wav", "QA": [{"q": "q", "a": "a"}]},
            {"video": "videos/dog_barking.mp4", "audio": "audio/missing.flac",
             "QA": [{"q": "q", "a": "a"}]}]
    out, stats = _read(root, recs)
    assert [s.id for s in out] == ["0"]
    assert stats.as_dict() == {"missing-media": 2}
    assert len(out) + stats.total == len(recs)
    with pytest.raises(SampleError) as e:
        _read(root, recs[1:2], missing="error")
    assert e.value.reason == "missing-media" and "gone" in str(e.value)
    assert str(root / "audio/missing.wav") in str(e.value)


@pytest.mark.parametrize("bad", ["", "   ", None, 3, ["audio/car.wav"], {"path": "x.wav"}])
def test_audio_key_must_be_a_non_empty_string(root, bad):
    recs = [{"audio": bad, "QA": [{"q": "q", "a": "a"}]},
            {"video": "videos/dog_barking.mp4", "audio": bad, "QA": [{"q": "q", "a": "a"}]}]
    out, stats = _read(root, recs)
    assert out == [] and stats.as_dict() == {"invalid-record": 2}
    with pytest.raises(SampleError) as e:
        _read(root, recs[:1], missing="error")
    assert e.value.reason == "invalid-record" and "'audio'" in str(e.value)


def test_audio_content_checked_with_load_bytes(root):
    recs = [{"audio": "audio/page.wav", "QA": [{"q": "q", "a": "a"}]},
            {"audio": "images/dog_running.jpg", "QA": [{"q": "q", "a": "a"}]},
            {"audio": "audio/car.wav", "QA": [{"q": "q", "a": "a"}]}]
    out, stats = _read(root, recs)  # probed with PyAV even without load_bytes (issue 16)
    assert [s.id for s in out] == ["2"] and stats.as_dict() == {"undecodable-audio": 2}
    out, stats = _read(root, recs, load_bytes=True)
    assert [s.id for s in out] == ["2"] and stats.as_dict() == {"undecodable-audio": 2}


def test_record_without_any_media_is_still_invalid(root):
    out, stats = _read(root, [{"QA": [{"q": "q", "a": "a"}]},
                              {"image": "images/dog_running.jpg", "video": "videos/dog_barking.mp4",
                               "audio": "audio/car.wav", "QA": [{"q": "q", "a": "a"}]}])
    assert out == [] and stats.as_dict() == {"invalid-record": 2}
