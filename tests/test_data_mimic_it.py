"""MIMIC-IT reader (mmit.data.sources.mimic_it): instruction JSON + base64 image JSON/parquet +
train config with in-context examples. Fixture files follow DATASETS.md §6 exactly; the images are
the real Otter demo images when ../shared/samples is present, small PIL images otherwise."""

import base64
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmit.data.sample import SampleError
from mmit.data.sources import get_reader
from mmit.data.media_base64 import decode_base64
from mmit.data.sources.mimic_it import read_mimic_it
from mmit.data.stats import SkipCounter

SAMPLES = Path(__file__).parents[1] / ".." / "shared" / "samples"
OTTER = SAMPLES / "otter" / "images"
NAMES = ["cat.jpg", "xray.jpg", "pepsi.png", "tennis.jpg", "subway.png"]


def image_bytes():
    """Five encoded images: the real Otter demo files, or generated ones without the samples."""
    if OTTER.is_dir():
        return [(OTTER / n).read_bytes() for n in NAMES]
    out = []
    for i, fmt in enumerate(["JPEG", "PNG", "PNG", "JPEG", "PNG"]):
        buf = io.BytesIO()
        Image.new("RGB", (6, 5), (40 * i, 0, 0)).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


IMGS = image_bytes()
IMAGE_IDS = ["LA_IMG_000000", "LA_IMG_000001", "DC_IMG_v_N1c3C_Npr-E_0000",
             "DC_IMG_v_N1c3C_Npr-E_0001", "DC_IMG_v_N1c3C_Npr-E_0002"]
BYTES = dict(zip(IMAGE_IDS, IMGS))

DATA = {
    "meta": {"version": "0.0.1", "time": "2023-10-29", "author": "Jingkang Yang"},
    "data": {
        "LA_INS_000000": {"instruction": "What is the cat doing?", "answer": "Sleeping on a sofa.",
                          "image_ids": ["LA_IMG_000000"], "rel_ins_ids": ["LA_INS_000001"]},
        "LA_INS_000001": {"instruction": "What does the X-ray show? ",
                          "answer": " A chest X-ray.", "image_ids": ["LA_IMG_000001"],
                          "rel_ins_ids": []},
        "DC_INS_00001": {"instruction": "Who is the main focus of the video?",
                         "answer": "The main focus of the video is a police officer on a horse.",
                         "image_ids": IMAGE_IDS[2:],
                         "rel_ins_ids": ["DC_INS_00002", "DC_INS_00003"]},
        "DC_INS_00002": {"instruction": "What is the weather like?", "answer": "Sunny.",
                         "image_ids": IMAGE_IDS[2:], "rel_ins_ids": ["DC_INS_00001"]},
        "DC_INS_00003": {"instruction": "Where is this?", "answer": "A city street.",
                         "image_ids": IMAGE_IDS[2:], "rel_ins_ids": []},
        "T_INS_0": {"instruction": "Say hi.", "answer": "Hi!", "rel_ins_ids": []},
    },
}
TRAIN = {"DC_INS_00001": ["DC_INS_00002", "DC_INS_00003"], "LA_INS_000000": ["LA_INS_000001"],
         "T_INS_0": []}


def b64(data, urlsafe=False):
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()


def write_task(folder, data=DATA, images=None, urlsafe=False, store="json", train=None,
               prefix="XX"):
    """XX_instructions.json + XX.json|XX.parquet (+ XX_train.json) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ins = folder / f"{prefix}_instructions.json"
    ins.write_text(json.dumps(data))
    images = BYTES if images is None else images
    enc = {k: (b64(v, urlsafe) if isinstance(v, bytes) else v) for k, v in images.items()}
    if store == "json":
        (folder / f"{prefix}.json").write_text(json.dumps(enc))
    else:  # what pandas' DataFrame({"base64": ...}, index=ids).to_parquet() writes
        meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": []}
        table = pa.table({"base64": pa.array(list(enc.values()), pa.string()),
                          "__index_level_0__": pa.array(list(enc), pa.string())})
        table = table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})
        pq.write_table(table, folder / f"{prefix}.parquet")
    if train is not None:
        (folder / f"{prefix}_train.json").write_text(json.dumps(train))
    return ins


def read(path, **kw):
    """Read all samples (checking each validates) and the skip counter."""
    stats = kw.pop("stats", SkipCounter())
    out = list(read_mimic_it(path, stats=stats, **kw))
    for s in out:  # every yielded sample is valid
        s.validate()
    return out, stats


def by_id(samples):
    return {s.id: s for s in samples}


@pytest.mark.parametrize("store,urlsafe", [("json", False), ("json", True), ("parquet", True),
                                           ("parquet", False)])
def test_train_config_in_context_turns(tmp_path, store, urlsafe):
    ins = write_task(tmp_path, store=store, urlsafe=urlsafe, train=TRAIN)
    out, stats = read(ins)
    assert [s.id for s in out] == list(TRAIN) and stats.total == 0
    s = by_id(out)
    # video task: in-context examples share the frames -> frames once, placeholders in chunk 1
    dc = s["DC_INS_00001"]
    assert [t.role for t in dc.turns] == ["user", "assistant"] * 3
    assert dc.turns[0].content == "<image>\n" * 3 + "What is the weather like?"
    assert dc.turns[2].content == "Where is this?"
    assert dc.turns[4].content == "Who is the main focus of the video?"
    assert dc.turns[5].content.startswith("The main focus")
    assert [m.meta["image_id"] for m in dc.media] == IMAGE_IDS[2:]
    assert [m.data for m in dc.media] == IMGS[2:]          # decoded bytes == source bytes
    assert dc.meta["in_context_ids"] == ["DC_INS_00002", "DC_INS_00003"]
    assert dc.task == "DC" and dc.source == "mimic-it"
    # image in-context task: each example brings its own image into its own chunk
    la = s["LA_INS_000000"]
    assert [t.content for t in la.turns] == ["<image>\nWhat does the X-ray show?",
                                             "A chest X-ray.", "<image>\nWhat is the cat doing?",
                                             "Sleeping on a sofa."]
    assert [m.data for m in la.media] == [IMGS[1], IMGS[0]]
    assert [m.ext for m in la.media] == ["png", "jpg"]  # real xray.jpg is a PNG inside
    # text-only record
    t = s["T_INS_0"]
    assert t.media == [] and [x.content for x in t.turns] == ["Say hi.", "Hi!"]
    for x in out:
        x.validate()


def test_without_train_config_uses_rel_ins_ids(tmp_path):
    ins = write_task(tmp_path)
    out, stats = read(ins)
    assert [s.id for s in out] == list(DATA["data"]) and stats.total == 0
    dc2 = by_id(out)["DC_INS_00002"]
    assert dc2.meta["in_context_ids"] == ["DC_INS_00001"] and len(dc2.turns) == 4
    # in_context="meta": only the query's turns and images
    out, _ = read(ins, in_context="meta")
    la = by_id(out)["LA_INS_000000"]
    assert [t.content for t in la.turns] == ["<image>\nWhat is the cat doing?",
                                             "Sleeping on a sofa."]
    assert la.meta["in_context_ids"] == ["LA_INS_000001"] and len(la.media) == 1


def test_missing_images_and_unknown_ids_counted(tmp_path):
    images = dict(BYTES)
    del images["DC_IMG_v_N1c3C_Npr-E_0001"]                  # Otter #172: id not in the store
    images["LA_IMG_000001"] = "not base64 at all!"            # wrong base64
    train = dict(TRAIN, GONE_INS_1=[], T_INS_0=["NOPE_INS_9"])
    ins = write_task(tmp_path, images=images, train=train)
    out, stats = read(ins)
    assert out == []
    assert stats.as_dict() == {"bad-base64": 1, "missing-media": 1, "unknown-instruction-id": 2}
    assert len(out) + stats.total == len(train)
    assert "DC_IMG_v_N1c3C_Npr-E_0001" in stats.examples["missing-media"][0]
    with pytest.raises(SampleError) as e:
        read(ins, missing="error")
    assert e.value.reason == "missing-media" and "DC_INS_00001" in str(e.value)
    assert str(ins) in str(e.value)


def test_base64_that_is_not_an_image(tmp_path):
    images = dict(BYTES, LA_IMG_000000=b64(b"hello world, not an image"))
    out, stats = read(write_task(tmp_path, images=images))
    assert stats.as_dict() == {"undecodable-image": 1}          # only LA_INS_000000 uses it
    assert len(out) == len(DATA["data"]) - 1
    assert "LA_IMG_000000" in stats.examples["undecodable-image"][0]


def test_invalid_entries(tmp_path):
    data = {"meta": {}, "data": {"A_INS_1": {"answer": "no instruction", "image_ids": []},
                                 "A_INS_2": {"instruction": "q", "answer": "a", "image_ids": "x"},
                                 "A_INS_3": "nope",
                                 "A_INS_4": {"instruction": "q", "answer": "a",
                                             "rel_ins_ids": "A_INS_1"}}}
    out, stats = read(write_task(tmp_path, data=data, images={}))
    assert out == [] and stats.as_dict() == {"invalid-record": 4}


def test_decode_base64_variants():
    raw = bytes(range(256)) * 3
    assert decode_base64(base64.b64encode(raw).decode(), "w") == raw
    assert decode_base64(base64.urlsafe_b64encode(raw).decode(), "w") == raw
    assert decode_base64(base64.b64encode(raw).decode().rstrip("="), "w") == raw
    wrapped = "\n".join(base64.b64encode(raw).decode()[i:i + 76] for i in range(0, 1024, 76))
    assert decode_base64(wrapped, "w") == raw
    uri = "data:image/png;base64," + base64.b64encode(b"abc").decode()
    assert decode_base64(uri, "w") == b"abc"
    for bad in ["", "abc!", "a", 5]:
        with pytest.raises(SampleError) as e:
            decode_base64(bad, "img X")
        assert e.value.reason == "bad-base64" and "img X" in str(e.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_mimic_it(tmp_path / "nope_instructions.json")
    ins = tmp_path / "ZZ_instructions.json"
    ins.write_text(json.dumps(DATA))
    with pytest.raises(FileNotFoundError, match="ZZ.parquet"):
        read_mimic_it(ins)                                     # no image store anywhere
    write_task(tmp_path, prefix="ZZ")
    (tmp_path / "ZZ_instructions.json").write_text('{"meta": {}, "data": [1, 2]}')
    with pytest.raises(ValueError, match="'data' object"):
        read_mimic_it(ins)
    (tmp_path / "ZZ_instructions.json").write_text('{"meta": {}, "data": {')
    with pytest.raises(ValueError, match="line 1"):
        read_mimic_it(ins)
    (tmp_path / "ZZ_instructions.json").write_text(json.dumps(DATA))
    with pytest.raises(FileNotFoundError, match="train config"):
        read_mimic_it(ins, train_config=tmp_path / "missing_train.json")
    (tmp_path / "ZZ_train.json").write_text("[1]")
    with pytest.raises(ValueError, match="train config must be an object"):
        read_mimic_it(ins)
    with pytest.raises(ValueError, match="in_context"):
        read_mimic_it(ins, in_context="both")
    (tmp_path / "ZZ_train.json").write_text(json.dumps(TRAIN))
    pq.write_table(pa.table({"b64": pa.array(["x"]), "id": pa.array(["y"])}),
                   tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="'base64' column"):
        read_mimic_it(ins, images=tmp_path / "bad.parquet")
    pq.write_table(pa.table({"base64": pa.array(["x"])}), tmp_path / "noid.parquet")
    with pytest.raises(ValueError, match="no image-id column"):
        read_mimic_it(ins, images=tmp_path / "noid.parquet")


def test_folder_store_and_media_root(tmp_path):
    """Extracted copies: one file per image id under media_root (extensions need not match)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for iid, data in BYTES.items():
        (frames / f"{iid}.jpg").write_bytes(data)
    ins = tmp_path / "ann" / "XX_instructions.json"
    ins.parent.mkdir()
    ins.write_text(json.dumps(DATA))
    out, stats = read(ins, media_root=frames, load_bytes=True)
    assert stats.total == 0 and len(out) == len(DATA["data"])
    la = by_id(out)["LA_INS_000000"]
    assert la.media[1].path == str(frames / "LA_IMG_000000.jpg") and la.media[1].data == IMGS[0]
    data = {"meta": {}, "data": {"P_INS_1": {"instruction": "q", "answer": "a",
                                             "image_ids": ["coco/train2017/000000033471.jpg"]}}}
    (frames / "coco" / "train2017").mkdir(parents=True)
    (frames / "coco" / "train2017" / "000000033471.jpg").write_bytes(IMGS[0])
    (tmp_path / "ann" / "P_instructions.json").write_text(json.dumps(data))
    (p,), _ = read(tmp_path / "ann" / "P_instructions.json", media_root=frames, load_bytes=True)
    assert p.media[0].data == IMGS[0]
    (frames / "LA_IMG_000001.jpg").unlink()
    out, stats = read(ins, media_root=frames)
    assert stats.as_dict() == {"missing-media": 2}


def test_registered():
    assert get_reader("mimic-it") is read_mimic_it


def test_real_otter_images_bytes_roundtrip(tmp_path):
    if not OTTER.is_dir():
        pytest.skip("../shared/samples not present")
    files = sorted(OTTER.iterdir())
    images = {f"OT_IMG_{i:02d}": f.read_bytes() for i, f in enumerate(files)}
    data = {"meta": {}, "data": {f"OT_INS_{i:02d}": {"instruction": f"Describe {f.name}.",
                                                     "answer": f.stem,
                                                     "image_ids": [f"OT_IMG_{i:02d}"],
                                                     "rel_ins_ids": []}
                                 for i, f in enumerate(files)}}
    for store in ("json", "parquet"):
        ins = write_task(tmp_path / store, data=data, images=images, urlsafe=True, store=store)
        out, stats = read(ins)
        assert len(out) == len(files) == 14 and stats.total == 0
        for s, f in zip(out, files):
            assert s.media[0].data == f.read_bytes()
            assert s.turns[0].content == f"<image>\nDescribe {f.name}."
        xray = next(s for s in out if s.turns[1].content == "xray")
        assert xray.media[0].ext == "png"                       # named .jpg, PNG inside


def test_convert_roundtrip_same_text_and_bytes(tmp_path):
    from mmit.data.convert import convert
    from mmit.data.shards import iter_shards

    ins = write_task(tmp_path / "src", store="parquet", urlsafe=True, train=TRAIN)
    stats = convert("mimic-it", str(ins), str(tmp_path / "out"), shard_size=2, progress=False)
    assert (stats["records_in"], stats["written"], stats["skipped"]) == (3, 3, {})
    back = {s.id: s for s in iter_shards(tmp_path / "out", split_by_node=False,
                                         split_by_worker=False)}
    for s in read_mimic_it(ins):
        b = back[s.id]
        assert [(t.role, t.content) for t in b.turns] == [(t.role, t.content) for t in s.turns]
        assert [m.data for m in b.media] == [m.data for m in s.media]
        assert b.meta["in_context_ids"] == s.meta["in_context_ids"]
