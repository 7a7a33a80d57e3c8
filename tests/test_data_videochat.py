"""VideoChat reader (mmit.data.sources.videochat): {image|video, QA} records."""

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmit.data.sample import SampleError
from mmit.data.sources import get_reader
from mmit.data.sources.videochat import read_videochat
from mmit.data.stats import SkipCounter

SAMPLES = Path(__file__).parents[1] / ".." / "shared" / "samples"
VC = SAMPLES / "videochat"
# a real clip (the reader probes videos with PyAV; an ftyp header alone is undecodable-video)
FAKE_MP4 = (Path(__file__).resolve().parents[1] / "demo_data" / "videos" / "yoga.mp4").read_bytes()


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 4), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def write(tmp_path, records, name="ann.json"):
    p = tmp_path / name
    p.write_text(json.dumps(records, indent=1))
    return p


def read(path, **kw):
    """Read all samples (checking each validates) and the skip counter."""
    stats = kw.pop("stats", SkipCounter())
    out = list(read_videochat(path, stats=stats, **kw))
    for s in out:  # every yielded sample is valid
        s.validate()
    return out, stats


@pytest.fixture
def media(tmp_path):
    root = tmp_path / "media"
    (root / "000001_000050").mkdir(parents=True)
    (root / "000001_000050" / "1066674784.mp4").write_bytes(FAKE_MP4)
    (root / "2.jpg").write_bytes(png())
    return root


def test_video_and_image_records(tmp_path, media):
    recs = [{"video": "000001_000050/1066674784.mp4", "start": 1.5, "end": 9.0,
             "QA": [{"q": "What happens in the video?", "a": "A horse runs."},
                    {"q": "What colour is it?", "a": "Brown."}]},
            {"image": "2.jpg", "QA": [{"q": "Write an exhaustive depiction of the given image.",
                                       "a": "A man fishing."}]}]
    out, stats = read(write(tmp_path, recs), media_root=media, load_bytes=True)
    assert stats.total == 0
    v, i = out
    assert v.id == "0" and i.id == "1" and v.source == "videochat"
    assert [(t.role, t.content) for t in v.turns] == [
        ("user", "<video>\nWhat happens in the video?"), ("assistant", "A horse runs."),
        ("user", "What colour is it?"), ("assistant", "Brown.")]
    assert v.media[0].kind == "video" and v.media[0].data == FAKE_MP4 and v.media[0].ext == "mp4"
    assert v.media[0].meta == {"original_path": "000001_000050/1066674784.mp4", "start": 1.5,
                               "end": 9.0}
    assert i.turns[0].content == "<image>\nWrite an exhaustive depiction of the given image."
    assert i.media[0].kind == "image" and i.media[0].ext == "png"
    for s in out:
        s.validate()


def test_videochat2_instruction_becomes_system_turn(tmp_path, media):
    recs = [{"video": "000001_000050/1066674784.mp4",
             "QA": [{"i": "Answer briefly.", "q": "Who?", "a": "A man."},
                    {"i": "Answer briefly.", "q": "Where?", "a": "Outside."}]},
            {"image": "2.jpg", "QA": [{"i": "Describe.", "q": "", "a": "A man."},
                                      {"i": "Be short.", "q": "More?", "a": "No.",
                                       "candidates": ["No.", "Yes."]}]}]
    a, b = read(write(tmp_path, recs), media_root=media)[0]
    assert [t.role for t in a.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert a.turns[0].content == "Answer briefly." and "instructions" not in a.meta
    assert b.turns[1].content.strip() == "<image>"            # empty q: placeholder only
    assert b.meta["instructions"] == ["Describe.", "Be short."]
    assert b.meta["qa_extra"] == [{}, {"candidates": ["No.", "Yes."]}] and "qa_extra" not in a.meta


def test_bad_records_counted_and_named(tmp_path, media):
    recs = [{"image": "2.jpg", "QA": [{"q": "ok", "a": "ok"}]},
            {"QA": [{"q": "no media", "a": "x"}]},
            {"image": "2.jpg", "video": "v.mp4", "QA": [{"q": "both", "a": "x"}]},
            {"image": "2.jpg", "QA": []},
            {"image": "2.jpg", "QA": [{"q": "no answer"}]},
            {"id": "vid-9", "video": "missing/123.mp4", "QA": [{"q": "q", "a": "a"}]},
            {"image": "2.jpg", "QA": "not a list"},
            "not an object"]
    p = write(tmp_path, recs)
    out, stats = read(p, media_root=media)
    assert [s.id for s in out] == ["0"]
    assert stats.as_dict() == {"invalid-record": 5, "missing-media": 1, "no-turns": 1}
    assert len(out) + stats.total == len(recs)
    with pytest.raises(SampleError) as e:
        read(p, media_root=media, missing="error")
    assert e.value.reason == "invalid-record" and "record 1" in str(e.value)
    assert str(p) in str(e.value)
    with pytest.raises(SampleError) as e:
        read(write(tmp_path, recs[5:6], "v.json"), media_root=media, missing="error")
    assert "vid-9" in str(e.value) and str(media / "missing/123.mp4") in str(e.value)


def test_video_that_is_not_a_video(tmp_path, media):
    rec = {"video": "2.jpg", "QA": [{"q": "q", "a": "a"}]}
    p = write(tmp_path, [rec])
    for load_bytes in (False, True):  # checked (a still image is not a video) even unread
        out, stats = read(p, media_root=media, load_bytes=load_bytes)
        assert out == [] and stats.as_dict() == {"undecodable-video": 1}


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_videochat(tmp_path / "none.json")
    p = tmp_path / "bad.json"
    p.write_text('[{"image": "a.jpg", "QA": [}]')
    with pytest.raises(ValueError, match="line 1"):
        read(p)
    with pytest.raises(ValueError, match="missing"):
        read_videochat(write(tmp_path, []), missing="blank")


def test_registered():
    assert get_reader("videochat") is read_videochat


# -- real files -----------------------------------------------------------------------------------

def test_real_json_heads_every_record_accounted(tmp_path):
    if not VC.is_dir():
        pytest.skip("../shared/samples not present")
    for name in ("minigpt_caption_3k.head20.json", "llava_complex_reasoning_2k.head20.json"):
        n = len(json.loads((VC / name).read_text()))
        stats = SkipCounter()
        out = list(read_videochat(VC / name, stats=stats))   # images are not shipped
        assert n == 20 and out == [] and stats.as_dict() == {"missing-media": 20}


def test_real_minigpt_records_with_images(tmp_path):
    if not VC.is_dir():
        pytest.skip("../shared/samples not present")
    recs = json.loads((VC / "minigpt_caption_3k.head20.json").read_text())
    real = SAMPLES / "otter" / "images" / "cat.jpg"
    for r in recs[:5]:
        shutil.copy(real, tmp_path / r["image"])
    stats = SkipCounter()
    out = list(read_videochat(VC / "minigpt_caption_3k.head20.json", media_root=tmp_path,
                              stats=stats, load_bytes=True))
    assert len(out) == 5 and stats.as_dict() == {"missing-media": 15}
    assert out[0].turns[0].content == "<image>\n" + recs[0]["QA"][0]["q"]
    assert out[0].turns[1].content == recs[0]["QA"][0]["a"]
    assert all(s.media[0].data == real.read_bytes() for s in out)


def test_real_mp4_bytes_untouched(tmp_path):
    if not VC.is_dir():
        pytest.skip("../shared/samples not present")
    recs = [{"video": "example/yoga.mp4", "QA": [{"q": "What is she doing?", "a": "Yoga."}]},
            {"video": "example/hitting_baseball.mp4",
             "QA": [{"q": "Which sport?", "a": "Baseball."}, {"q": "Indoors?", "a": "No."}]}]
    p = write(tmp_path, recs)
    out, stats = read(p, media_root=VC, load_bytes=True)
    assert stats.total == 0 and len(out) == 2
    for s, r in zip(out, recs):
        src = (VC / r["video"]).read_bytes()
        assert s.media[0].data == src and s.media[0].ext == "mp4" and s.media[0].kind == "video"
        assert s.turns[0].content.startswith("<video>\n")
    assert len(out[0].media[0].data) == 776184 and len(out[1].media[0].data) == 687087


def test_convert_roundtrip_same_text_and_bytes(tmp_path, media):
    from mmit.data.convert import convert
    from mmit.data.shards import iter_shards

    recs = [{"video": "000001_000050/1066674784.mp4", "QA": [{"q": "What?", "a": "A horse."}]},
            {"image": "2.jpg", "QA": [{"q": "Colour?", "a": "Dark."}]},
            {"image": "gone.jpg", "QA": [{"q": "x", "a": "y"}]}]
    p = write(tmp_path, recs)
    stats = convert("videochat", str(p), str(tmp_path / "out"), media_root=str(media),
                    progress=False)
    assert (stats["records_in"], stats["written"], stats["skipped"]) == (3, 2,
                                                                          {"missing-media": 1})
    back = {s.id: s for s in iter_shards(tmp_path / "out", split_by_node=False,
                                         split_by_worker=False)}
    for s in read_videochat(p, media_root=media, load_bytes=True):
        b = back[s.id]
        assert [(t.role, t.content) for t in b.turns] == [(t.role, t.content) for t in s.turns]
        assert [(m.kind, m.data) for m in b.media] == [(m.kind, m.data) for m in s.media]


def test_real_coco2014_names_resolve_to_coco2017_copy(tmp_path):
    """llava_complex_reasoning_2k writes COCO 2014 names; a user with COCO 2017 still finds them."""
    if not VC.is_dir():
        pytest.skip("../shared/samples not present")
    recs = json.loads((VC / "llava_complex_reasoning_2k.head20.json").read_text())
    real = SAMPLES / "llava" / "coco" / "train2017" / "000000319154.jpg"
    first = recs[0]["image"]                        # train2014/COCO_train2014_000000021248.jpg
    num = first.rsplit("_", 1)[1]
    (tmp_path / "train2017").mkdir()
    shutil.copy(real, tmp_path / "train2017" / num)
    stats = SkipCounter()
    out = list(read_videochat(VC / "llava_complex_reasoning_2k.head20.json", media_root=tmp_path,
                              stats=stats, load_bytes=True))
    assert len(out) == 1 and stats.as_dict() == {"missing-media": 19}
    m = out[0].media[0]
    assert m.path == str(tmp_path / "train2017" / num) and m.meta["resolved_by"] == "coco-name"
    assert m.meta["original_path"] == first and m.data == real.read_bytes()
    assert out[0].turns[0].content == "<image>\n" + recs[0]["QA"][0]["q"]


def test_placeholders_written_in_questions(tmp_path, media):
    recs = [{"video": "000001_000050/1066674784.mp4",
             "QA": [{"q": "What?", "a": "ok"}, {"q": "And this <video>?", "a": "no"}]},
            {"image": "2.jpg", "QA": [{"q": "Is it <image> here?", "a": "no"}]},
            {"image": "2.jpg", "QA": [{"q": "<image> and <image>?", "a": "no"}]}]
    out, stats = read(write(tmp_path, recs), media_root=media)
    assert [t.content for t in out[0].turns][::2] == ["What?", "And this <video>?"]
    assert out[1].turns[0].content == "<image>\nIs it  here?"    # LLaVA: moved to the front
    assert len(out) == 2 and stats.as_dict() == {"image-count-mismatch": 1}
