"""`mmit convert` features: resume after an interruption, --sample-rate / --max-records subsets,
resize / re-encode, every media kind (video, audio, point cloud, inline bytes), and the CLI flags.
Every conversion also checks records_in == written + sum(skipped)."""

import io
import json
import struct
import subprocess
import sys
import textwrap
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmit.data.convert as convert_mod
from mmit.data.convert import convert, main
from mmit.data.record_subset import is_sampled
from mmit.data.sample import Media, Sample, Turn
from mmit.data.shards import ShardWriter, iter_shards
from mmit.data.sources import FORMATS

ROOT = Path(__file__).resolve().parents[1]


def img(fmt, size=(40, 20), color=(200, 30, 30), mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def noise_jpeg(size, seed):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def check_invariant(stats):
    assert stats["records_in"] == stats["written"] + sum(stats["skipped"].values())
    return stats


@pytest.fixture
def big(tmp_path):
    """60 LLaVA records over 6 images (noise JPEGs 64x48 and a PNG), every 7th image missing."""
    root = tmp_path / "media"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.jpg").write_bytes(noise_jpeg((64, 48), i))
    (root / "p.png").write_bytes(img("PNG", (30, 50), (0, 0, 255, 128), "RGBA"))
    recs = []
    for i in range(60):
        name = "gone.jpg" if i % 7 == 3 else ("p.png" if i % 5 == 4 else f"{i % 5}.jpg")
        recs.append({"id": f"r{i:03d}", "image": name, "conversations": [
            {"from": "human", "value": f"<image>\nQuestion {i}?"},
            {"from": "gpt", "value": f"Answer {i}."}]})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(recs))
    return {"ann": ann, "root": root, "tmp": tmp_path, "n": 60, "missing": 9}


def run(big, out, **kw):
    kw.setdefault("shard_size", 8)
    kw.setdefault("progress", False)
    return check_invariant(convert("llava", str(big["ann"]), str(big["tmp"] / out),
                                   media_root=str(big["root"]), **kw))


def shard_bytes(folder):
    folder = Path(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.name.endswith(".tar") or (p.name.endswith("_stats.json") and p.name[0] != "_")}


# -- resume ------------------------------------------------------------------------------------

def test_resume_after_crash_rebuilds_only_incomplete_shards(big, monkeypatch):
    ref = run(big, "ref")
    assert ref["shards"] == 7 and ref["reused_shards"] == 0
    out = big["tmp"] / "out"
    real_write = ShardWriter.write

    def crashing_write(self, sample, index, *rest):
        if self.tar_path.endswith("00004.tar") and self.written == 3:
            raise KeyboardInterrupt("simulated Ctrl-C in the middle of shard 4")
        return real_write(self, sample, index, *rest)

    monkeypatch.setattr(ShardWriter, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        run(big, "out")
    monkeypatch.setattr(ShardWriter, "write", real_write)
    assert not (out / "_stats.json").exists() and not (out / "00004.tar").exists()
    # the other ways a shard can be incomplete: a tar whose stats never got written, a
    # truncated tar, and a half-written .tmp left by a killed process
    (out / "00001_stats.json").unlink()
    with open(out / "00002.tar", "r+b") as f:
        f.truncate(1024)
    (out / "00004.tar.tmp").write_bytes(b"partial")

    built = []
    real_build = convert_mod.build_shard

    def spy(task):
        built.append(task.index)
        return real_build(task)

    monkeypatch.setattr(convert_mod, "build_shard", spy)
    again = run(big, "out")
    assert built == [1, 2, 4, 5, 6]
    assert again["reused_shards"] == 2
    assert shard_bytes(out) == shard_bytes(big["tmp"] / "ref")
    assert not list(out.glob("*.tmp"))
    for k in ("records_in", "written", "skipped", "counts", "bytes"):
        assert again[k] == ref[k], k
    built.clear()
    assert run(big, "out")["reused_shards"] == 7 and built == []


def test_resume_after_hard_kill(big):
    """SIGKILL in the middle of shard 3 (no cleanup runs), then a normal re-run."""
    out = big["tmp"] / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        from mmit.data.shards import ShardWriter
        from mmit.data.convert import convert
        real = ShardWriter.write
        def write(self, sample, index, *rest):
            if self.tar_path.endswith("00003.tar") and self.written == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, sample, index, *rest)
        ShardWriter.write = write
        convert("llava", {str(big['ann'])!r}, {str(out)!r}, media_root={str(big['root'])!r},
                shard_size=8, progress=False)
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    assert (out / "00003.tar.tmp").exists() and not (out / "00003.tar").exists()
    assert not (out / "_stats.json").exists()
    again = run(big, "killed")
    assert again["reused_shards"] == 3
    assert shard_bytes(out) == shard_bytes(run(big, "ref")["output"])


def test_rerun_on_a_shorter_input_keeps_equal_shards_and_removes_stale_ones(big):
    assert run(big, "out")["shards"] == 7
    big["ann"].write_text(json.dumps(json.loads(big["ann"].read_text())[:20]))
    s = run(big, "out")  # same options, input changed: 17 usable records → 3 shards
    assert s["records_in"] == 20 and s["shards"] == 3 and s["reused_shards"] == 2
    assert sorted(p.name for p in (big["tmp"] / "out").glob("*.tar")) == \
        ["00000.tar", "00001.tar", "00002.tar"]
    assert shard_bytes(big["tmp"] / "out") == shard_bytes(run(big, "fresh")["output"])


# -- subsets ----------------------------------------------------------------------------------

def written_ids(folder):
    return {s.id for s in iter_shards(str(folder))}


def test_sample_rate_is_deterministic_nested_and_counted(big):
    n, missing = big["n"], big["missing"]
    full = run(big, "full")
    assert full["written"] == n - missing and full["skipped"] == {"missing-media": missing}
    half = run(big, "half", sample_rate=0.5, seed=1)
    assert half["records_in"] == n
    assert 0 < half["written"] < full["written"]
    picked = {p for p in range(n) if is_sampled(p, 0.5, 1)}
    assert 15 <= len(picked) <= 45
    assert half["skipped"]["not-sampled"] == n - len(picked)
    gone = {p for p in range(n) if p % 7 == 3}
    assert half["skipped"].get("missing-media", 0) == len(picked & gone)
    assert written_ids(big["tmp"] / "half") == {f"r{p:03d}" for p in picked - gone}
    # same seed → same subset; another seed → another subset; smaller rate → a subset of it
    assert written_ids(big["tmp"] / "half") == written_ids(run(big, "half2", sample_rate=0.5,
                                                                   seed=1)["output"])
    assert written_ids(big["tmp"] / "half") != written_ids(run(big, "s2", sample_rate=0.5,
                                                               seed=2)["output"])
    tenth = written_ids(run(big, "tenth", sample_rate=0.2, seed=1)["output"])
    assert tenth < written_ids(big["tmp"] / "half")
    none = run(big, "none", sample_rate=0.0)
    assert none["written"] == 0 and none["skipped"] == {"not-sampled": n}
    # a subset keeps the keys the full conversion gives the same records
    assert wds_keys(big["tmp"] / "half") < wds_keys(big["tmp"] / "full")


def wds_keys(folder):
    import webdataset as wds

    return {x["__key__"] for x in wds.WebDataset(sorted(map(str, Path(folder).glob("*.tar"))),
                                                 shardshuffle=False)}


@pytest.mark.parametrize("max_records,rate", [(0, 1.0), (10, 1.0), (17, 0.5), (100, 0.3)])
def test_max_records_with_sample_rate(big, max_records, rate):
    s = run(big, f"m{max_records}", max_records=max_records, sample_rate=rate, seed=3)
    assert s["records_in"] == min(max_records, big["n"])
    expect = {f"r{p:03d}" for p in range(min(max_records, big["n"]))
              if is_sampled(p, rate, 3) and p % 7 != 3}
    assert s["written"] == len(expect)
    if s["written"]:
        assert written_ids(big["tmp"] / f"m{max_records}") == expect


# -- resize / re-encode -----------------------------------------------------------------------

def by_id(folder):
    return {s.id: s for s in iter_shards(str(folder))}


def test_resize_keeps_format_and_small_images_untouched(big):
    run(big, "orig")
    run(big, "small", resize_max_side=32)
    orig, small = by_id(big["tmp"] / "orig"), by_id(big["tmp"] / "small")
    assert orig.keys() == small.keys()
    for sid, s in small.items():
        m, o = s.media[0], orig[sid].media[0]
        im = Image.open(io.BytesIO(m.data))
        assert max(im.size) == 32 and (m.meta["width"], m.meta["height"]) == im.size
        assert (m.meta["original_width"], m.meta["original_height"]) == (o.meta["width"],
                                                                         o.meta["height"])
        assert m.ext == o.ext and im.format == ("JPEG" if o.ext == "jpg" else "PNG")
        if o.ext == "jpg":
            assert im.size == (32, 24)
        else:
            assert im.size == (19, 32) and im.mode == "RGB"  # 30x50 RGBA → RGB on white
            assert im.getpixel((5, 5)) == (127, 127, 255)
    big_side = run(big, "big", resize_max_side=64)  # nothing exceeds 64: original bytes
    assert {k: s.media[0].data for k, s in by_id(big["tmp"] / "big").items()} == \
        {k: s.media[0].data for k, s in orig.items()}
    assert big_side["written"] == len(orig)


def test_reencode_format_and_quality(big):
    hi = by_id(run(big, "hi", reencode="jpeg", quality=95)["output"])
    lo = by_id(run(big, "lo", reencode="jpeg", quality=20)["output"])
    webp = by_id(run(big, "webp", reencode="webp", resize_max_side=20)["output"])
    assert all(s.media[0].ext == "jpg" and s.media[0].data[:3] == b"\xff\xd8\xff"
               for s in hi.values())
    png_ids = [k for k, s in hi.items() if s.media[0].meta["original_ext"] == "png"]
    assert png_ids, "the PNG records must be re-encoded to JPEG too"
    assert sum(len(s.media[0].data) for s in lo.values()) < \
        0.7 * sum(len(s.media[0].data) for s in hi.values())
    for s in webp.values():
        im = Image.open(io.BytesIO(s.media[0].data))
        assert s.media[0].ext == "webp" and im.format == "WEBP" and max(im.size) == 20


# -- every media kind, via a test-only reader --------------------------------------------------

def wav_bytes():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    return buf.getvalue()


def npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.fixture
def kinds(tmp_path, monkeypatch):
    mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(200)
    pts = np.arange(30, dtype=np.float32).reshape(10, 3)
    npz_buf = io.BytesIO()
    np.savez(npz_buf, points=pts, labels=np.zeros(10))
    files = {"clip.mp4": mp4, "a.wav": wav_bytes(), "pc.npy": npy(pts), "pc.npz": npz_buf.getvalue(),
             "obj.npy": npy(np.array([{"a": 1}], dtype=object)), "flat.npy": npy(np.zeros(5)),
             "pc.ply": b"ply\nformat ascii 1.0\nend_header\n", "odd.xyz1": b"\x01\x02\x03\x04data"}
    for k, v in files.items():
        (tmp_path / k).write_bytes(v)

    def one(i, kind, path=None, data=None, text="Describe it."):
        return Sample(id=f"k{i}", source="test-kinds", task=f"task-{kind}",
                      turns=[Turn("user", text), Turn("assistant", "ok")],
                      media=[Media(kind, path=None if path is None else str(tmp_path / path),
                                   data=data)])

    samples = [one(0, "video", "clip.mp4"), one(1, "audio", "a.wav"), one(2, "pointcloud", "pc.npy"),
               one(3, "pointcloud", "pc.npz"), one(4, "pointcloud", "obj.npy"),
               one(5, "pointcloud", "flat.npy"), one(6, "pointcloud", "pc.ply"),
               one(7, "image", data=img("PNG"), text="<image>\nInline bytes."),
               one(8, "video", "odd.xyz1"), one(9, "audio"),
               Sample(id="k10", source="test-kinds", turns=[Turn("user", "text only"),
                                                            Turn("assistant", "yes")])]

    def reader(path, media_root=None, missing="skip", stats=None, load_bytes=False):
        for s in samples:
            yield Sample.from_json(s.to_json(), [m.data for m in s.media])

    monkeypatch.setitem(FORMATS._items, "test-kinds", reader)
    return {"tmp": tmp_path, "files": files, "pts": pts}


def test_every_media_kind(kinds):
    tmp = kinds["tmp"]
    s = check_invariant(convert("test-kinds", str(tmp), str(tmp / "out"), shard_size=4,
                                progress=False))
    assert s["skipped"] == {"missing-media": 1, "undecodable-pointcloud": 2,
                            "unsupported-pointcloud": 1}
    assert s["written"] == 7
    assert s["counts"]["media_kind"] == {"audio": 1, "image": 1, "pointcloud": 2, "video": 2}
    assert s["counts"]["task"]["task-video"] == 2 and s["counts"]["task"]["(none)"] == 1
    assert s["text_only"] == 1
    got = by_id(tmp / "out")
    assert got["k0"].media[0].ext == "mp4" and got["k0"].media[0].data == kinds["files"]["clip.mp4"]
    assert got["k1"].media[0].ext == "wav" and got["k1"].media[0].data == kinds["files"]["a.wav"]
    assert got["k2"].media[0].data == kinds["files"]["pc.npy"]
    for k in ("k2", "k3"):
        m = got[k].media[0]
        assert m.ext == "npy" and m.meta["shape"] == [10, 3] and m.meta["dtype"] == "<f4"
        np.testing.assert_array_equal(np.load(io.BytesIO(m.data), allow_pickle=False), kinds["pts"])
    assert got["k7"].media[0].ext == "png" and got["k7"].media[0].meta["width"] == 40
    assert got["k8"].media[0].ext == "xyz1"  # unknown container: suffix kept, bytes as they are
    assert got["k10"].media == []


# -- CLI ---------------------------------------------------------------------------------------

def test_cli_flags_and_help(big, capsys):
    assert main(["--help"]) == 0
    assert "llava" in capsys.readouterr().out
    out = big["tmp"] / "cli"
    argv = ["convert", "--format", "llava", "--input", str(big["ann"]), "--media-root",
            str(big["root"]), "--output", str(out), "--shard-size", "10", "--max-records", "40",
            "--sample-rate", "0.5", "--seed", "4", "--resize-max-side", "16", "--reencode", "png",
            "--workers", "2", "--no-progress"]
    assert main(argv) == 0
    line = capsys.readouterr().out
    stats = check_invariant(json.loads((out / "_stats.json").read_text()))
    assert stats["records_in"] == 40 and "not-sampled" in stats["skipped"] and "40 records" in line
    assert all(max(Image.open(io.BytesIO(s.media[0].data)).size) == 16 and s.media[0].ext == "png"
               for s in iter_shards(str(out)))
    assert main(argv) == 0 and "kept from an earlier run" in capsys.readouterr().out
    assert main(argv[:-1] + ["--quality", "0", "--no-progress"]) == 2
    assert "quality" in capsys.readouterr().err
    assert main(argv + ["--reader-option", "nope"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_check_decode_catches_truncated_jpeg_that_header_check_passes(big):
    # issue 16: the header check now refuses a truncated JPEG too (no end-of-image marker); what
    # only a full decode finds is damage inside complete chunks, e.g. a PNG whose IDAT stream
    # stops early (every chunk and CRC intact)
    good = (big["root"] / "0.jpg").read_bytes()
    (big["root"] / "0.jpg").write_bytes(good[: len(good) * 2 // 3])
    n0 = sum(1 for p in range(big["n"]) if p % 7 != 3 and p % 5 == 0)  # records using 0.jpg
    header = run(big, "header", check="header")
    decode = run(big, "decode", check="decode")
    assert header["skipped"] == {"missing-media": big["missing"], "undecodable-image": n0}
    assert decode["skipped"] == header["skipped"]
    resized = run(big, "resized", resize_max_side=16)  # a transcode decodes: caught as well
    assert resized["skipped"]["undecodable-image"] == n0

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    short_idat = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 30, 8, 2, 0, 0, 0))
                  + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    (big["root"] / "0.jpg").write_bytes(short_idat)
    header = run(big, "header2", check="header")
    decode = run(big, "decode2", check="decode")
    assert header["skipped"] == {"missing-media": big["missing"]}
    assert decode["skipped"] == {"missing-media": big["missing"], "undecodable-image": n0}
    assert decode["written"] == header["written"] - n0
