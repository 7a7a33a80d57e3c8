"""`mmit inspect OUT`: counts per task / source / media kind and a contact-sheet PNG."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_IMAGES, DEMO_JSON
from mmit.cli import main as cli
from mmit.data.convert import convert
from mmit.data.inspect import IMG_H, TEXT_H, TILE_W, main, summarize
from mmit.data.sample import Media, Sample, Turn
from mmit.data.sources import FORMATS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "demo"
    convert("llava", str(DEMO_JSON), str(out), media_root=str(DEMO_IMAGES), shard_size=10,
            progress=False)
    return out


def test_demo_counts_and_sheet(demo, capsys):
    stats = json.loads((demo / "_stats.json").read_text())
    assert cli(["inspect", str(demo), "--samples", "6", "--cols", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{stats['written']} samples in 5 shard(s)" in out
    assert "complete: 51 records in, 50 written, 1 skipped (missing-media=1)" in out
    assert f"llava {stats['written']}" in out
    n_img = stats["counts"]["media_kind"]["image"]
    assert f"image {n_img}, text-only {stats['text_only']}" in out
    png = demo / "_contact_sheet.png"
    assert f"contact sheet: {png} (6 samples)" in out
    im = Image.open(png)
    assert im.format == "PNG" and im.size == (8 + 3 * (TILE_W + 8), 30 + 2 * (IMG_H + TEXT_H + 8))
    assert png.stat().st_size > 50_000  # real photos, not an empty canvas
    # the first tile shows the first record's image (a dog photo), not a placeholder colour
    tile = np.asarray(im.crop((8, 30, 8 + TILE_W, 30 + IMG_H)).convert("RGB"), dtype=float)
    assert tile.std() > 20


def test_json_and_scan_of_foreign_shards_agree(demo, tmp_path, capsys):
    assert main([str(demo), "--json", "--png", str(tmp_path / "s.png")]) == 0
    from_stats = json.loads(capsys.readouterr().out)
    assert from_stats["counted_from"] == "stats" and from_stats["samples"] == 50
    assert from_stats["counts"]["source"] == {"llava": 50}
    copy = tmp_path / "foreign"
    copy.mkdir()
    for p in demo.glob("*.tar"):  # tars only: as if written by another tool
        (copy / p.name).write_bytes(p.read_bytes())
    info = summarize(str(copy))
    assert info["counted_from"] == "scan" and not info["complete"]
    for k in ("samples", "counts", "text_only", "shards"):
        assert info[k] == from_stats[k], k


def test_every_media_kind_gets_a_tile(tmp_path, monkeypatch, capsys):
    pts = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, pts)
    img = io.BytesIO()
    Image.new("RGB", (64, 32), (255, 0, 0)).save(img, format="PNG")
    media = [("video", b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64)),
             ("audio", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40)),
             ("pointcloud", buf.getvalue()), ("image", img.getvalue()), (None, None)]

    def reader(path, media_root=None, missing="skip", stats=None, load_bytes=False):
        for i, (kind, data) in enumerate(media):
            text = "<image>\nWhat is red?" if kind == "image" else f"Question about the {kind}?"
            yield Sample(id=f"m{i}", source="kinds", task=f"t{i % 2}",
                         turns=[Turn("user", text), Turn("assistant", "An answer.")],
                         media=[Media(kind, data=data)] if kind else [])

    monkeypatch.setitem(FORMATS._items, "kinds", reader)
    out = tmp_path / "kinds"
    convert("kinds", str(tmp_path), str(out), shard_size=2, progress=False)
    assert main([str(out), "--samples", "5", "--cols", "5"]) == 0
    text = capsys.readouterr().out
    assert "by task:       t0 3, t1 2" in text
    line = next(t for t in text.splitlines() if t.startswith("by media kind:"))
    assert sorted(line[15:].split(", ")) == ["audio 1", "image 1", "pointcloud 1", "text-only 1",
                                             "video 1"]
    sheet = Image.open(out / "_contact_sheet.png").convert("RGB")
    tiles = [np.asarray(sheet.crop((8 + i * (TILE_W + 8), 30, 8 + i * (TILE_W + 8) + TILE_W,
                                    30 + IMG_H)), dtype=float) for i in range(5)]
    slate = np.array([52, 61, 76], dtype=float)
    for t in tiles[:2] + tiles[4:]:  # video, audio, text-only: labelled slate tiles
        assert (np.abs(t - slate).sum(-1) < 1).mean() > 0.8
    cloud = tiles[2]
    assert (np.abs(cloud - slate).sum(-1) > 60).mean() > 0.01  # points drawn
    red = tiles[3]
    assert (np.abs(red - [255, 0, 0]).sum(-1) < 10).mean() > 0.3


def test_missing_or_empty_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
    assert main([str(tmp_path)]) == 2
    assert "no *.tar" in capsys.readouterr().err
