"""WebVid caption-CSV reader (mmit.data.sources.webvid): columns by header name."""

import shutil
from pathlib import Path

import pytest

from mmit.data.sample import SampleError
from mmit.data.sources import get_reader
from mmit.data.sources.webvid import parse_iso_duration, read_webvid
from mmit.data.stats import SkipCounter

SAMPLES = Path(__file__).parents[1] / ".." / "shared" / "samples"
# a real clip (the reader probes videos with PyAV; an ftyp header alone is undecodable-video)
FAKE_MP4 = (Path(__file__).resolve().parents[1] / "demo_data" / "videos" / "yoga.mp4").read_bytes()
URL = "https://ak.picdn.net/shutterstock/videos/1053841541/preview/stock-footage-travel.mp4"
# the two header orders quoted in DATASETS.md §7 (the second row is the quoted real row)
CSV_A = ("videoid,contentUrl,duration,page_dir,name\n"
         f"1066674784,{URL},PT00H00M12S,000001_000050,\"Horse rider, in the city\"\n"
         "21179416,https://x/2.mp4,PT00H00M30S,000001_000050,\"He said \"\"hi\"\" twice\"\n")
CSV_B = ("videoid,name,page_idx,page_dir,duration,contentUrl\n"
         "1053841541,Travel blogger shoot a story on top of mountains.,27732,027701_027750,"
         f"PT00H00M17S,{URL}\n")


def read(path, **kw):
    """Read all samples (checking each validates) and the skip counter."""
    stats = kw.pop("stats", SkipCounter())
    out = list(read_webvid(path, stats=stats, **kw))
    for s in out:  # every yielded sample is valid
        s.validate()
    return out, stats


@pytest.fixture
def videos(tmp_path):
    root = tmp_path / "videos"
    for rel in ("000001_000050/1066674784.mp4", "000001_000050/21179416.mp4",
                "027701_027750/1053841541.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(FAKE_MP4 + rel.encode())
    return root


def test_both_header_orders(tmp_path, videos):
    (tmp_path / "a.csv").write_text(CSV_A)
    (tmp_path / "b.csv").write_text(CSV_B)
    a, _ = read(tmp_path / "a.csv", media_root=videos, load_bytes=True)
    b, _ = read(tmp_path / "b.csv", media_root=videos)
    assert [s.id for s in a] == ["1066674784", "21179416"] and [s.id for s in b] == ["1053841541"]
    s = a[0]
    assert [(t.role, t.content) for t in s.turns] == [("user", "<video>"),
                                                      ("assistant", "Horse rider, in the city")]
    assert a[1].turns[1].content == 'He said "hi" twice'          # CSV quoting
    assert s.media[0].kind == "video" and s.media[0].ext == "mp4"
    assert s.media[0].data == (videos / "000001_000050/1066674784.mp4").read_bytes()
    assert s.media[0].meta == {"original_path": "000001_000050/1066674784.mp4"}
    assert s.meta == {"url": URL, "duration": "PT00H00M12S", "duration_s": 12.0,
                      "page_dir": "000001_000050"}
    assert s.task == "captioning" and s.source == "webvid"
    t = b[0]
    assert t.turns[1].content == "Travel blogger shoot a story on top of mountains."
    assert t.meta["page_idx"] == "27732" and t.meta["duration_s"] == 17.0
    assert t.media[0].path == str(videos / "027701_027750/1053841541.mp4")
    assert t.media[0].data is None
    for x in a + b:
        x.validate()


def test_folder_of_csvs_tsv_prompt_and_flat_layout(tmp_path):
    ann = tmp_path / "anno"
    ann.mkdir()
    (ann / "0.csv").write_text(CSV_B)
    (ann / "1.tsv").write_text("name\tvideoid\nA dog runs.\t77\n")
    (ann / "notes.txt").write_text("ignored")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "77.mp4").write_bytes(FAKE_MP4)
    (flat / "1053841541.mp4").write_bytes(FAKE_MP4)       # no page_dir folder: flat fallback
    out, stats = read(ann, media_root=flat, prompt="Describe the video.")
    assert [s.id for s in out] == ["1053841541", "77"] and stats.total == 0
    assert out[1].turns[0].content == "<video>\nDescribe the video."
    assert out[0].media[0].path == str(flat / "1053841541.mp4")


def test_bad_rows_and_missing_videos_counted(tmp_path, videos):
    csv = (CSV_A
           + "999,https://x/9.mp4,PT00H00M01S,000001_000050,Video never downloaded\n"
           + ",https://x/0.mp4,PT1S,000001_000050,no id\n"
           + "5,https://x/5.mp4,PT1S,000001_000050,\n"
           + "6,https://x/6.mp4,PT1S\n"
           + "7,https://x/7.mp4,PT1S,000001_000050,too,many,fields\n"
           + "\n")
    p = tmp_path / "results_2M_val.csv"
    p.write_text(csv)
    out, stats = read(p, media_root=videos)
    assert [s.id for s in out] == ["1066674784", "21179416"]
    assert stats.as_dict() == {"invalid-record": 4, "missing-media": 1}
    assert len(out) + stats.total == 7                         # 7 data rows, blank line ignored
    with pytest.raises(SampleError) as e:
        read(p, media_root=videos, missing="error")
    assert e.value.reason == "missing-media" and "999" in str(e.value)
    assert "line 4" in str(e.value) and str(p) in str(e.value)


def test_not_a_video(tmp_path, videos):
    (videos / "000001_000050/1066674784.mp4").write_text("<html>404</html>")
    (tmp_path / "a.csv").write_text(CSV_A)
    out, stats = read(tmp_path / "a.csv", media_root=videos, load_bytes=True)
    assert len(out) == 1 and stats.as_dict() == {"undecodable-video": 1}


def test_missing_columns_are_clear_errors(tmp_path):
    (tmp_path / "x.csv").write_text("id,caption\n1,a\n")
    with pytest.raises(ValueError) as e:
        read_webvid(tmp_path / "x.csv")                          # raised at call time
    assert "videoid" in str(e.value) and "id, caption" in str(e.value)
    (tmp_path / "y.csv").write_text("videoid,page_dir\n1,a\n")
    with pytest.raises(ValueError, match="name/caption/text"):
        read_webvid(tmp_path / "y.csv")
    (tmp_path / "z.csv").write_text("")
    with pytest.raises(ValueError, match="no header"):
        read_webvid(tmp_path / "z.csv")
    with pytest.raises(FileNotFoundError):
        read_webvid(tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .csv"):
        read_webvid(tmp_path / "empty")


def test_iso_duration():
    assert parse_iso_duration("PT00H00M17S") == 17.0
    assert parse_iso_duration("PT1H2M3.5S") == 3723.5
    assert parse_iso_duration("P1DT1S") == 86401.0
    assert parse_iso_duration("17") is None and parse_iso_duration("PT") is None


def test_registered():
    assert get_reader("webvid") is read_webvid


def test_real_mp4s_in_webvid_layout(tmp_path):
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    srcs = {"1000": SAMPLES / "videochat/example/yoga.mp4",
            "1001": SAMPLES / "video_llama/examples/silence_girl.mp4",
            "1002": SAMPLES / "video_llama/examples/dog_barking.mp4"}
    for vid, src in srcs.items():
        (tmp_path / "videos/000001_000050").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / f"videos/000001_000050/{vid}.mp4")
    rows = "".join(f"{vid},A clip number {vid}.,PT00H00M10S,000001_000050,https://x\n"
                   for vid in srcs)
    (tmp_path / "r.csv").write_text("videoid,name,duration,page_dir,contentUrl\n" + rows
                                    + "1003,Gone.,PT1S,000001_000050,https://x\n")
    out, stats = read(tmp_path / "r.csv", media_root=tmp_path / "videos", load_bytes=True)
    assert [s.id for s in out] == list(srcs) and stats.as_dict() == {"missing-media": 1}
    for s in out:
        assert s.media[0].data == srcs[s.id].read_bytes() and s.media[0].ext == "mp4"


def test_convert_roundtrip_same_text_and_bytes(tmp_path, videos):
    from mmit.data.convert import convert
    from mmit.data.shards import iter_shards

    (tmp_path / "a.csv").write_text(CSV_A + "404,https://x,PT1S,000001_000050,gone\n")
    stats = convert("webvid", str(tmp_path / "a.csv"), str(tmp_path / "out"),
                    media_root=str(videos), progress=False)
    assert (stats["records_in"], stats["written"], stats["skipped"]) == (3, 2,
                                                                          {"missing-media": 1})
    back = {s.id: s for s in iter_shards(tmp_path / "out", split_by_node=False,
                                         split_by_worker=False)}
    for s in read_webvid(tmp_path / "a.csv", media_root=videos, load_bytes=True):
        b = back[s.id]
        assert [(t.role, t.content) for t in b.turns] == [(t.role, t.content) for t in s.turns]
        assert b.media[0].kind == "video" and b.media[0].data == s.media[0].data
