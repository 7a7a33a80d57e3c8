"""InstructPix2Pix reader (mmit.data.sources.instructpix2pix): seeds layout and parquet columns."""

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmit.data.sample import SampleError
from mmit.data.sources import get_reader
from mmit.data.sources.instructpix2pix import read_instructpix2pix
from mmit.data.stats import SkipCounter

SAMPLES = Path(__file__).parents[1] / ".." / "shared" / "samples"
EXAMPLE = SAMPLES / "instructpix2pix" / "example.jpg"


def jpeg(color, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def read(path, **kw):
    """Read all samples (checking each validates) and the skip counter."""
    stats = kw.pop("stats", SkipCounter())
    out = list(read_instructpix2pix(path, stats=stats, **kw))
    for s in out:  # every yielded sample is valid
        s.validate()
    return out, stats


def check_convention(s, edit):
    assert [m.kind for m in s.media] == ["image", "image"]
    assert [m.meta for m in s.media] == [{"role": "input"}, {"role": "edited"}]
    assert [(t.role, t.content) for t in s.turns] == [("user", "<image>\n" + edit),
                                                      ("assistant", "<image>")]
    assert s.task == "image-editing" and s.source == "instructpix2pix"
    s.validate()


@pytest.fixture
def seeds_ds(tmp_path):
    """A clip-filtered-dataset-style folder: 3 prompt folders, 5 seed pairs in seeds.json."""
    ds = tmp_path / "clip-filtered-dataset"
    ds.mkdir()
    folders = {
        "0000000": ({"caption": "a photo of a man", "edit": "turn him into a cyborg",
                     "output": "a photo of a cyborg", "url": "http://x/1.jpg"}, ["111", "222"]),
        "0000001": ({"input": "a red barn", "edit": "make it snow", "output": "a red barn in snow"},
                    ["7"]),
        "0000002": ({"caption": "a cat", "edit": "give it a hat", "output": "a cat in a hat"},
                    ["5", "6"]),
    }
    for d, (prompt, seeds) in folders.items():
        (ds / d).mkdir()
        (ds / d / "prompt.json").write_text(json.dumps(prompt))
        for i, seed in enumerate(seeds):
            (ds / d / f"{seed}_0.jpg").write_bytes(jpeg((10 * i, 0, 0)))
            (ds / d / f"{seed}_1.jpg").write_bytes(jpeg((0, 10 * i, 200)))
    (ds / "0000000" / "metadata.jsonl").write_text(
        json.dumps({"seed": 111, "p2p_threshold": 0.5, "cfg_scale": 7.5, "clip_sim_dir": 0.3})
        + "\n")
    (ds / "seeds.json").write_text(json.dumps([[d, [int(s) for s in seeds]]
                                               for d, (_, seeds) in folders.items()]))
    return ds


def test_seeds_layout(seeds_ds):
    out, stats = read(seeds_ds, load_bytes=True)
    assert [s.id for s in out] == ["0000000/111", "0000000/222", "0000001/7", "0000002/5",
                                   "0000002/6"]
    assert stats.total == 0
    s = out[0]
    check_convention(s, "turn him into a cyborg")
    assert s.media[0].data == (seeds_ds / "0000000" / "111_0.jpg").read_bytes()
    assert s.media[1].data == (seeds_ds / "0000000" / "111_1.jpg").read_bytes()
    assert s.media[0].ext == s.media[1].ext == "jpg"
    assert s.meta["input_caption"] == "a photo of a man" and s.meta["seed"] == "111"
    assert s.meta["output_caption"] == "a photo of a cyborg" and s.meta["url"] == "http://x/1.jpg"
    assert s.meta["generation"]["cfg_scale"] == 7.5 and "generation" not in out[1].meta
    # human-written prompts use "input" instead of "caption"
    assert out[2].meta["input_caption"] == "a red barn"
    # seeds.json passed directly, no bytes loaded: paths only
    out2, _ = read(seeds_ds / "seeds.json")
    assert [s.id for s in out2] == [s.id for s in out]
    assert out2[0].media[0].data is None
    assert out2[0].media[1].path == str(seeds_ds / "0000000" / "111_1.jpg")


def test_seeds_layout_without_seeds_json(seeds_ds):
    (seeds_ds / "seeds.json").unlink()
    out, _ = read(seeds_ds)
    assert [s.id for s in out] == ["0000000/111", "0000000/222", "0000001/7", "0000002/5",
                                   "0000002/6"]


def test_seeds_layout_missing_files_counted(seeds_ds):
    (seeds_ds / "0000000" / "222_1.jpg").unlink()           # edited image gone
    (seeds_ds / "0000002" / "prompt.json").unlink()          # both seeds of this folder
    (seeds_ds / "0000001" / "prompt.json").write_text(json.dumps({"caption": "x", "edit": " "}))
    n_in = 5
    out, stats = read(seeds_ds)
    assert [s.id for s in out] == ["0000000/111"]
    assert stats.as_dict() == {"invalid-record": 1, "missing-media": 1, "missing-prompt": 2}
    assert len(out) + stats.total == n_in
    with pytest.raises(SampleError) as e:
        read(seeds_ds, missing="error")
    assert e.value.reason == "missing-media" and "222_1.jpg" in str(e.value)
    assert "0000000" in str(e.value)


def test_seeds_layout_wrong_image_type(seeds_ds):
    (seeds_ds / "0000001" / "7_0.jpg").write_text("not an image")
    out, stats = read(seeds_ds, load_bytes=True)
    assert len(out) == 4 and stats.as_dict() == {"undecodable-image": 1}


def test_malformed_seeds_json(tmp_path):
    (tmp_path / "seeds.json").write_text('[["0000000", [1, 2]], ')
    with pytest.raises(ValueError, match="seeds.json"):
        read_instructpix2pix(tmp_path)
    (tmp_path / "seeds.json").write_text('{"0000000": [1]}')
    with pytest.raises(ValueError, match="folder, \\[seed"):
        read_instructpix2pix(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="not an InstructPix2Pix"):
        read_instructpix2pix(empty)
    with pytest.raises(FileNotFoundError):
        read_instructpix2pix(tmp_path / "nope")


# -- parquet --------------------------------------------------------------------------------------

STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_parquet(path, rows, struct=True, names=("input_image", "edit_prompt", "edited_image"),
                  extra=None):
    img_type = STRUCT if struct else pa.binary()

    def cell(b):
        if b is None:
            return None
        return {"bytes": b, "path": None} if struct else b

    cols = {names[0]: pa.array([cell(r[0]) for r in rows], img_type),
            names[1]: pa.array([r[1] for r in rows], pa.string()),
            names[2]: pa.array([cell(r[2]) for r in rows], img_type)}
    for k, v in (extra or {}).items():
        cols[k] = pa.array(v, pa.string())
    pq.write_table(pa.table(cols), path, row_group_size=2)


def test_parquet_struct_columns(tmp_path):
    a, b, c, d = jpeg((255, 0, 0)), jpeg((0, 255, 0)), jpeg((0, 0, 255)), jpeg((9, 9, 9))
    p = tmp_path / "train-00000-of-00001.parquet"
    write_parquet(p, [(a, "make it green", b), (c, "add fireworks", d), (a, "x", c)])
    out, stats = read(p)
    assert [s.id for s in out] == ["train-00000-of-00001/0", "train-00000-of-00001/1",
                                   "train-00000-of-00001/2"]
    assert stats.total == 0
    check_convention(out[1], "add fireworks")
    assert out[1].media[0].data == c and out[1].media[1].data == d   # bytes untouched
    assert out[1].media[0].ext == "jpg" and out[1].media[0].path is None
    assert out[1].meta == {"file": "train-00000-of-00001.parquet", "row": 1}


def test_parquet_binary_columns_clip_filtered_names_and_folder(tmp_path):
    a, b = jpeg((1, 2, 3)), jpeg((4, 5, 6))
    names = ("original_image", "edit_prompt", "edited_image")
    write_parquet(tmp_path / "train-00000.parquet", [(a, "make it night", b)], struct=False,
                  names=names, extra={"original_prompt": ["a street"],
                                      "edited_prompt": ["a street at night"]})
    write_parquet(tmp_path / "train-00001.parquet", [(b, "undo", a)], struct=False, names=names,
                  extra={"original_prompt": ["x"], "edited_prompt": ["y"]})
    out, _ = read(tmp_path)
    assert [s.id for s in out] == ["train-00000/0", "train-00001/0"]
    assert out[0].meta["input_caption"] == "a street"
    assert out[0].meta["output_caption"] == "a street at night"
    assert out[1].media[0].data == b and out[1].media[1].data == a
    check_convention(out[1], "undo")


def test_parquet_bad_rows_counted(tmp_path):
    good = jpeg((0, 0, 0))
    p = tmp_path / "d.parquet"
    write_parquet(p, [(good, "ok", good), (None, "null input", good), (good, "", good),
                      (b"GIF? no", "not an image", good), (good, "fine", good)])
    out, stats = read(p)
    assert [s.id for s in out] == ["d/0", "d/4"]
    assert stats.as_dict() == {"invalid-record": 2, "undecodable-image": 1}
    assert len(out) + stats.total == 5
    with pytest.raises(SampleError) as e:
        read(p, missing="error")
    assert "row 1" in str(e.value) and str(p) in str(e.value)


def test_parquet_struct_path_only_resolved_against_media_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "in.jpg").write_bytes(jpeg((1, 1, 1)))
    rows = {"input_image": [{"bytes": None, "path": "in.jpg"}, {"bytes": None, "path": "gone.jpg"}],
            "edit_prompt": ["a", "b"],
            "edited_image": [{"bytes": jpeg((2, 2, 2)), "path": None}] * 2}
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({k: pa.array(v, STRUCT if k != "edit_prompt" else pa.string())
                             for k, v in rows.items()}), p)
    out, stats = read(p, media_root=tmp_path / "imgs", load_bytes=True)
    assert len(out) == 1 and stats.as_dict() == {"missing-media": 1}
    assert out[0].media[0].data == (tmp_path / "imgs" / "in.jpg").read_bytes()
    assert out[0].media[0].path == str(tmp_path / "imgs" / "in.jpg")


def test_parquet_missing_column_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"input_image": pa.array([b"x"]), "prompt": pa.array(["p"])}), p)
    with pytest.raises(ValueError) as e:
        read_instructpix2pix(p)
    msg = str(e.value)
    assert str(p) in msg and "edit" in msg and "input_image, prompt" in msg
    # column override fixes the name but the edited image is still missing
    with pytest.raises(ValueError, match="no edited column"):
        read_instructpix2pix(p, columns={"edit": "prompt"})


def test_registered():
    assert get_reader("instructpix2pix") is read_instructpix2pix


# -- real files -----------------------------------------------------------------------------------

def test_real_readme_example_as_seeds_and_parquet(tmp_path):
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    src = EXAMPLE.read_bytes()
    edited = (SAMPLES / "otter" / "images" / "cat.jpg").read_bytes()  # any real JPEG as "output"
    d = tmp_path / "ds" / "0000000"
    d.mkdir(parents=True)
    (d / "prompt.json").write_text(json.dumps({"input": "a man", "edit": "turn him into a cyborg",
                                               "output": "a cyborg"}))
    (d / "42_0.jpg").write_bytes(src)
    (d / "42_1.jpg").write_bytes(edited)
    (tmp_path / "ds" / "seeds.json").write_text(json.dumps([["0000000", [42]]]))
    (s,), stats = read(tmp_path / "ds", load_bytes=True)
    check_convention(s, "turn him into a cyborg")
    assert s.media[0].data == src and len(src) == 56787 and s.media[1].data == edited
    p = tmp_path / "real.parquet"
    write_parquet(p, [(src, "turn him into a cyborg", edited)])
    (t,), _ = read(p)
    assert t.media[0].data == src and t.media[1].data == edited
    check_convention(t, "turn him into a cyborg")


@pytest.mark.parametrize("layout", ["seeds", "parquet"])
def test_convert_roundtrip_same_text_and_bytes(tmp_path, seeds_ds, layout):
    from mmit.data.convert import convert
    from mmit.data.shards import iter_shards

    src = seeds_ds
    if layout == "parquet":
        src = tmp_path / "p.parquet"
        write_parquet(src, [(jpeg((1, 1, 1)), "a", jpeg((2, 2, 2))),
                            (jpeg((3, 3, 3)), "b", jpeg((4, 4, 4)))])
    stats = convert("instructpix2pix", str(src), str(tmp_path / "out"), shard_size=2,
                    progress=False)
    orig = list(read_instructpix2pix(src, load_bytes=True))
    assert stats["written"] == len(orig) and stats["skipped"] == {}
    back = {s.id: s for s in iter_shards(tmp_path / "out", split_by_node=False,
                                         split_by_worker=False)}
    for s in orig:
        b = back[s.id]
        assert [(t.role, t.content) for t in b.turns] == [(t.role, t.content) for t in s.turns]
        assert [m.data for m in b.media] == [m.data for m in s.media]
        assert [m.meta["role"] for m in b.media] == ["input", "edited"]
