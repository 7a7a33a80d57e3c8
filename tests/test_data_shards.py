"""Shards (mmit.data.shards), `mmit convert` (mmit.data.convert) and SkipCounter (mmit.data.stats)."""

import io
import itertools
import json
import os
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

import mmit.data.convert as convert_mod
from mmit.data.convert import convert, main
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.shards import (dump_json, expand_urls, iter_shards, sample_json, sample_key,
                              write_shard)
from mmit.data.stats import SkipCounter

SAMPLES = Path(__file__).parents[1] / ".." / "shared" / "samples"


def img_bytes(fmt, color, size=(6, 4), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def corpus(tmp_path):
    """12 LLaVA records: 8 good (jpg, png, PNG named .jpg, RGBA, gif, dotted/spaced names, a
    two-image record, text-only), 1 missing image, 1 undecodable image, 1 invalid, 1 bad roles."""
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    files = {
        "a.jpg": img_bytes("JPEG", (255, 0, 0)),
        "b.png": img_bytes("PNG", (0, 255, 0)),
        "xray.jpg": img_bytes("PNG", (0, 0, 255)),                      # extension lies
        "sub/rgba.png": img_bytes("PNG", (1, 2, 3, 0), mode="RGBA"),
        "anim.gif": img_bytes("GIF", (9, 9, 9)),
        "sub/ImageNet-A+cls_472_0.002072_Rottweiler _ barn_0.79.jpg": img_bytes("JPEG", (7, 7, 7)),
        "broken.jpg": b"<html>not an image</html>",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)

    def rec(i, image=None, q="What is shown?", a="Something."):
        r = {"id": f"{i:06d}", "conversations": [{"from": "human", "value": q},
                                                 {"from": "gpt", "value": a}]}
        if image is not None:
            r["image"] = image
        return r

    records = [
        rec(0, "a.jpg", "Where is the cat?\n<image>"),
        rec(1, "b.png"),
        rec(2, "xray.jpg", "<image>\nAny fracture?", "No."),
        rec(3, "missing/nope.jpg"),
        rec(4, "sub/rgba.png"),
        rec(5, "broken.jpg"),
        {"id": "bad", "image": "a.jpg"},                                   # no conversations
        rec(7, "anim.gif"),
        rec(8, "sub/ImageNet-A+cls_472_0.002072_Rottweiler _ barn_0.79.jpg", "Ünïcode ✓ <image>"),
        rec(9, ["a.jpg", "b.png"], "<image> vs <image>: same colour?", "No."),
        rec(10, None, "Text only?", "Yes."),
        {"id": "roles", "conversations": [{"from": "human", "value": "a"},
                                          {"from": "human", "value": "b"}]},
    ]
    ann = tmp_path / "llava.json"
    ann.write_text(json.dumps(records))
    return {"ann": ann, "root": root, "files": files, "records": records, "tmp": tmp_path}


def run(corpus, out="out", **kw):
    kw.setdefault("shard_size", 3)
    kw.setdefault("progress", False)
    return convert("llava", str(corpus["ann"]), str(corpus["tmp"] / out),
                   media_root=str(corpus["root"]), **kw)


WANT_SKIPPED = {"missing-media": 1, "undecodable-image": 1, "invalid-record": 1,
                "roles-not-alternating": 1}


# -- convert: stats and layout ---------------------------------------------------------------------

def test_convert_stats_invariant_and_layout(corpus, monkeypatch):
    out = corpus["tmp"] / "out"
    real_build = convert_mod.build_shard
    built = []

    def spy(task):
        assert not (out / "_stats.json").exists(), "_stats.json must be written last"
        built.append(task.index)
        return real_build(task)

    monkeypatch.setattr(convert_mod, "build_shard", spy)
    stats = run(corpus)
    assert stats["records_in"] == 12 == len(corpus["records"])
    assert stats["skipped"] == WANT_SKIPPED
    assert stats["written"] == 8
    assert stats["records_in"] == stats["written"] + sum(stats["skipped"].values())
    # the reader drops missing/invalid/roles (3); 9 records go to shards of 3
    assert stats["shards"] == len(built) == 3 and built == [0, 1, 2]
    on_disk = json.loads((out / "_stats.json").read_text())
    assert on_disk["records_in"] == 12 and on_disk["skipped"] == WANT_SKIPPED
    assert on_disk["format"] == "llava" and on_disk["input"] == str(corpus["ann"].resolve())
    names = sorted(os.listdir(out))
    assert names == ["00000.tar", "00000_stats.json", "00001.tar", "00001_stats.json",
                     "00002.tar", "00002_stats.json", "_convert.json", "_stats.json"]
    per = [json.loads((out / f"{i:05d}_stats.json").read_text()) for i in range(3)]
    assert sum(p["written"] for p in per) == 8
    assert sum(p["records_in"] for p in per) == 9
    assert sum(sum(p["skipped"].values()) for p in per) == 1  # the undecodable image
    last = (out / "_stats.json").stat().st_mtime_ns
    assert all((out / n).stat().st_mtime_ns <= last for n in names)


def test_convert_read_back_with_plain_webdataset(corpus):
    run(corpus)
    out = corpus["tmp"] / "out"
    ds = wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False)
    by_id = {}
    keys = []
    for item in ds:
        keys.append(item["__key__"])
        d = json.loads(item["json"])
        by_id[d["id"]] = (d, item)
    assert len(keys) == len(set(keys)) == 8
    assert all("." not in k and len(k) == 40 for k in keys)
    src = {r["id"]: r for r in corpus["records"] if isinstance(r, dict)}
    for sid, (d, item) in by_id.items():
        r = src[sid]
        assert d["turns"][1]["content"] == r["conversations"][1]["value"]
        images = r.get("image")
        images = [images] if isinstance(images, str) else (images or [])
        assert [m["meta"]["original_path"] for m in d["media"]] == images
        for j, (m, rel) in enumerate(zip(d["media"], images)):
            assert item[f"{j}.{m['ext']}"] == corpus["files"][rel]  # original bytes, no re-encode
            assert m["path"] == str(corpus["root"] / rel)
    assert by_id["000000"][0]["turns"][0]["content"] == "<image>\nWhere is the cat?"
    assert "0.png" in by_id["000002"][1]                         # xray.jpg stored by content
    assert {"0.jpg", "1.png"} <= set(by_id["000009"][1])
    assert by_id["000010"][0]["media"] == [] and by_id["000004"][0]["media"][0]["ext"] == "png"
    assert by_id["000007"][0]["media"][0]["ext"] == "gif"
    assert by_id["000008"][0]["turns"][0]["content"] == "<image>\nÜnïcode ✓"


def test_workers_give_byte_identical_shards(corpus):
    a = run(corpus, "w1", workers=1, shard_size=2)
    b = run(corpus, "w2", workers=2, shard_size=2)
    assert a["shards"] == b["shards"] == 5
    for i in range(a["shards"]):
        for name in (f"{i:05d}.tar", f"{i:05d}_stats.json"):
            assert (corpus["tmp"] / "w1" / name).read_bytes() == \
                (corpus["tmp"] / "w2" / name).read_bytes(), name
    assert a["skipped"] == b["skipped"] == WANT_SKIPPED


def test_max_records_exact(corpus):
    for n in (0, 1, 4, 6, 7, 12, 50):
        s = run(corpus, f"max{n}", max_records=n)
        assert s["records_in"] == min(n, 12)
        assert s["records_in"] == s["written"] + sum(s["skipped"].values())


def test_missing_error_policy_and_existing_output(corpus):
    with pytest.raises(SampleError) as e:
        run(corpus, "err", missing="error")
    assert "nope.jpg" in str(e.value)
    err = corpus["tmp"] / "err"
    assert not list(err.glob("*.tmp")) and not (err / "_stats.json").exists()
    assert all(p.with_name(p.stem + "_stats.json").is_file() for p in err.glob("*.tar"))
    run(corpus, "twice")
    again = run(corpus, "twice")  # same options: resumed, every shard kept
    assert again["reused_shards"] == again["shards"] == 3 and again["written"] == 8
    with pytest.raises(FileExistsError) as e:
        run(corpus, "twice", shard_size=2)  # other options: refused
    assert "shard_size: 3 -> 2" in str(e.value)
    assert run(corpus, "twice", shard_size=2, overwrite=True)["written"] == 8
    assert sorted(p.name for p in (corpus["tmp"] / "twice").glob("*.tar")) == \
        [f"{i:05d}.tar" for i in range(5)]


def test_real_vision_flan_keys_survive_odd_filenames(tmp_path):
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    (tmp_path / "task_imgs").symlink_to((SAMPLES / "vision_flan" / "imgs").resolve())
    s = convert("llava", str(SAMPLES / "vision_flan" / "tasks_web.json"), str(tmp_path / "out"),
                media_root=str(tmp_path), shard_size=16, progress=False,
                reader_options={"allow_absolute": True})  # task_imgs/ is a symlink out of the root
    assert s["written"] == 30 and s["skipped"] == {"missing-media": 175}
    got = list(iter_shards(str(tmp_path / "out")))
    assert len(got) == 30
    for sample in got:
        assert sample.media[0].data == Path(sample.media[0].path).read_bytes()
        assert sample.media[0].ext in ("jpg", "png")


# -- reading ---------------------------------------------------------------------------------------

def test_iter_shards_order_and_determinism(corpus):
    run(corpus, shard_size=2)
    out = str(corpus["tmp"] / "out")
    plain = [s.id for s in iter_shards(out)]
    assert sorted(plain) == sorted(["000000", "000001", "000002", "000004", "000007", "000008",
                                    "000009", "000010"])
    first = next(s for s in iter_shards(out) if s.id == "000009")
    assert [m.data for m in first.media] == [corpus["files"]["a.jpg"], corpus["files"]["b.png"]]
    assert isinstance(first, Sample) and first.turns[0].role == "user"

    def order(seed, epoch):
        return [s.id for s in iter_shards(out, shuffle_buffer=100, seed=seed, epoch=epoch)]

    assert order(3, 0) == order(3, 0)
    assert sorted(order(3, 0)) == sorted(plain)
    assert order(3, 0) != order(3, 1)
    assert order(3, 0) != plain

    res1 = [s.id for s in itertools.islice(iter_shards(out, resampled=True, seed=5), 20)]
    res2 = [s.id for s in itertools.islice(iter_shards(out, resampled=True, seed=5), 20)]
    assert res1 == res2 and len(res1) == 20 and set(res1) <= set(plain)


def test_expand_urls(corpus):
    run(corpus, shard_size=2)
    out = corpus["tmp"] / "out"
    tars = [str(out / f"{i:05d}.tar") for i in range(5)]
    assert expand_urls(out) == tars
    assert expand_urls(str(out / "0000*.tar")) == tars
    assert expand_urls(str(out / "{00000..00004}.tar")) == tars
    assert expand_urls([tars[0], str(out / "0000[12].tar")]) == tars[:3]
    with pytest.raises(FileNotFoundError):
        expand_urls(str(out / "nothing*.tar"))


def test_write_shard_matches_plain_tarwriter(tmp_path):
    samples = [Sample(id=str(i), source="llava", turns=[Turn("user", "<image>\nhé"),
                                                         Turn("assistant", "ok")],
                      media=[Media("image", path=f"x.{i}.jpg", data=img_bytes("JPEG", (i, 0, 0)))])
               for i in range(4)]
    stats = write_shard(samples, tmp_path / "00000.tar", indices=[10, 11, 12, 13])
    assert stats["written"] == 4 and stats["bytes"] == (tmp_path / "00000.tar").stat().st_size
    assert json.loads((tmp_path / "00000_stats.json").read_text())["written"] == 4
    with open(tmp_path / "ref.tar", "wb") as f:
        tw = wds.TarWriter(f, encoder=False, mtime=0, user="mmit", group="mmit")
        for s, i in zip(samples, [10, 11, 12, 13]):
            tw.write({"__key__": sample_key(s, i), "0.jpg": s.media[0].data,
                      "json": dump_json(s.to_json())})
        tw.close()
    assert (tmp_path / "00000.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()
    assert all(dump_json(sample_json(s)) == dump_json(s.to_json()) for s in samples)
    with pytest.raises(ValueError):
        write_shard([Sample(id="x", turns=[], media=[Media("image", path="p")])], tmp_path / "e.tar")


# -- CLI ---------------------------------------------------------------------------------------

def test_cli_missing_input_one_line_exit_2(tmp_path, capsys):
    code = main(["--format", "llava", "--input", str(tmp_path / "nope.json"),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nope.json" in err and "error" in err


@pytest.mark.parametrize("argv", [["--format", "lava", "--input", "{ann}", "--output", "{out}"],
                                  ["--format", "llava", "--input", "{ann}"],
                                  ["--format", "llava", "--input", "{ann}", "--output", "{out}",
                                   "--missing", "blank"]])
def test_cli_other_errors_one_line(corpus, capsys, argv):
    argv = [a.format(ann=corpus["ann"], out=corpus["tmp"] / "o") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmit convert: error:")


def test_cli_success_summary(corpus, capsys):
    code = main(["convert", "--format", "llava", "--input", str(corpus["ann"]),
                 "--media-root", str(corpus["root"]), "--output", str(corpus["tmp"] / "cli"),
                 "--shard-size", "4", "--workers", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("\n") == 1
    assert "12 records" in out and "8 written" in out and "missing-media=1" in out
    from data_tools.convert import main as tool_main
    assert tool_main is main


# -- SkipCounter ------------------------------------------------------------------------------

def test_skip_counter():
    c = SkipCounter(max_examples=2)
    assert not c and c.total == 0 and c.as_dict() == {}
    for i in range(3):
        c.add("missing-media", f"id{i}", f"file {i} not found")
    c.add("invalid-record", 7)
    assert c and c.total == 4
    assert c.as_dict() == {"invalid-record": 1, "missing-media": 3}
    assert c.examples["missing-media"] == ["id0: file 0 not found", "id1: file 1 not found"]
    d = SkipCounter().merge(c).merge({"missing-media": 2, "undecodable-image": 1})
    assert d.as_dict() == {"invalid-record": 1, "missing-media": 5, "undecodable-image": 1}
    assert d.total == 7 and d.summary().startswith("invalid-record=1, missing-media=5")
    with pytest.raises(ValueError):
        c.add("missing_media")


# -- the sample JSON encoded once for the resume digest and the shard member -----------------------

def _awkward_samples():
    """Ids holding quotes, backslashes and the text ``,"meta":``; meta holding a ``meta`` key;
    non-ASCII text; zero, one and two media items."""
    ids = ['plain', 'q"uote', 'back\\slash"', ',"meta":{"x":1}', '\\",\\"meta\\":', 'ünï ✓', '']
    out = []
    for k, sid in enumerate(ids):
        media = [Media("image", path=f"/x/{k}/{j}.jpg", ext=None if j else "jpg",
                       meta={"original_path": f'a"{j}', "meta": {"meta": j}}) for j in range(k % 3)]
        turns = [Turn("system", "be brief"), Turn("user", "<image>\n" * len(media) + ',"meta":"q"'),
                 Turn("assistant", "é")]
        out.append(Sample(id=sid, turns=turns, media=media, task=None if k % 2 else "vqa",
                          source="src" if k % 3 else None,
                          meta={"a": 0, "meta": {"id": sid}, "options": ["a", "b"], "n": 1.5, "z": None}))
    return out


def test_split_sample_json_gives_the_whole_encoding_before_and_after_media_change():
    from mmit.data.sample_encoding import SplitSampleJson

    for s in _awkward_samples():
        split = SplitSampleJson.of(s)
        assert split.with_media(s) == dump_json(sample_json(s))
        for m in s.media:  # what prepare_media does between the digest and the write
            m.ext, m.meta["width"], m.meta["height"] = "png", 3, 4
        assert split.with_media(s) == dump_json(sample_json(s))
    s = _awkward_samples()[0]
    s.id = {"a": 1, "meta": 2}  # not a string: the first ',"meta":' would lie inside it
    assert SplitSampleJson.of(s) is None


def test_plan_shard_digest_equals_encoding_each_item_whole(tmp_path):
    import hashlib

    from mmit.data.convert_plan import plan_shard, task_digest
    from mmit.data.shard_build import SHARD_FORMAT_VERSION, ShardOptions

    samples = _awkward_samples()
    samples[1].media[0].data = b"inline bytes"
    items = list(zip([0, 5, 7, 9, 10, 11, 40], samples))
    opts = ShardOptions(output=str(tmp_path))
    h = hashlib.sha256(dump_json([SHARD_FORMAT_VERSION, 3, opts.fingerprint()]))
    for position, s in items:
        inline = [hashlib.sha256(m.data).hexdigest() if m.data is not None else None for m in s.media]
        h.update(dump_json([position, sample_json(s), inline]))
    digest, splits = plan_shard(3, items, opts)
    assert digest == h.hexdigest() == task_digest(3, items, opts)
    assert [sp.with_media(s) for sp, (_, s) in zip(splits, items)] == \
        [dump_json(sample_json(s)) for _, s in items]


def test_tar_header_byte_sum_equals_sum_up_to_256_bytes():
    """The header checksum's byte sums come from Adler-32 (C); exact while the sum stays below its
    modulus, which 256 bytes of 0xFF (65280) do."""
    import random

    from mmit.data.tar_members import _byte_sum

    rng = random.Random(3)
    for n in (0, 1, 11, 12, 99, 100, 255, 256):
        assert _byte_sum(b"\xff" * n) == 255 * n
        for _ in range(100):
            data = bytes(rng.getrandbits(8) for _ in range(n))
            assert _byte_sum(data) == sum(data)
