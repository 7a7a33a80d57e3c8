"""The shared normalisation rules of mmit.data.normalize, one test (or more) per rule."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from mmit.data.media import decode_image
from mmit.data.media_base64 import decode_base64
from mmit.data.media_resolve import (coco_name_variants, load_media, npy_header,
                                     pointcloud_shape, resolve_media_path, strip_dot_slash)
from mmit.data.normalize import (MEDIA_PLACEHOLDERS, add_media_placeholders, apply_policy,
                                 check_missing_policy, normalize_role, normalize_turns,
                                 place_image_placeholders)
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.stats import SkipCounter


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# -- roles ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("src,want", [("human", "user"), ("gpt", "assistant"), ("User", "user"),
                                      ("ASSISTANT", "assistant"), ("system", "system"),
                                      ("model", "assistant"), ("chatgpt", "assistant"),
                                      (" Human ", "user")])
def test_role_aliases(src, want):
    assert normalize_role(src, "rec") == want


def test_role_styles_and_unknown_role():
    a = normalize_turns([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "r")
    b = normalize_turns([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "r")
    assert a == b == [Turn("user", "q"), Turn("assistant", "a")]
    with pytest.raises(SampleError) as e:
        normalize_turns([{"from": "narrator", "value": "x"}], "file.json: record 3")
    assert e.value.reason == "bad-role" and "record 3" in str(e.value) and "narrator" in str(e.value)


# -- placeholders --------------------------------------------------------------------------------

def test_image_placeholder_moved_to_front_like_llava():
    t = place_image_placeholders([Turn("user", "What is it?\n<image>"), Turn("assistant", "x")], 1)
    assert t[0].content == "<image>\nWhat is it?"


def test_several_images_and_text_only():
    two = place_image_placeholders([Turn("user", "Compare"), Turn("assistant", "x")], 2)
    assert two[0].content == "<image>\n<image>\nCompare"
    text = [Turn("user", "hi"), Turn("assistant", "hello")]
    assert place_image_placeholders(text, 0) == text


def test_pointcloud_placeholder_after_images():
    turns = [Turn("user", "What is this object?"), Turn("assistant", "a sofa")]
    out = add_media_placeholders(turns, [Media("pointcloud", path="a.npy")])
    assert out[0].content == "<pointcloud>\nWhat is this object?"
    both = add_media_placeholders(turns, [Media("image", path="a.png"), Media("pointcloud", path="b.npy")])
    assert both[0].content == "<image>\n<pointcloud>\nWhat is this object?"
    assert MEDIA_PLACEHOLDERS["pointcloud"] == "<pointcloud>"
    kept = [Turn("user", "Look: <pointcloud>"), Turn("assistant", "ok")]
    assert add_media_placeholders(kept, [Media("pointcloud", path="a.npy")])[0].content == "Look: <pointcloud>"


# -- base64 --------------------------------------------------------------------------------------

def test_base64_standard_urlsafe_unpadded_and_data_uri():
    raw = bytes(range(256)) * 3 + b"\xfb\xff\xfe"
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    assert "+" in std or "/" in std
    assert url != std
    for text in (std, url, url.rstrip("="), "data:image/png;base64," + std,
                 "\n".join(std[i:i + 76] for i in range(0, len(std), 76)), std.encode()):
        assert decode_base64(text, "r") == raw


@pytest.mark.parametrize("bad", ["", "abc*def", "a", 12])
def test_base64_errors(bad):
    with pytest.raises(SampleError) as e:
        decode_base64(bad, "images.json: key IMG_7")
    assert e.value.reason == "bad-base64" and "IMG_7" in str(e.value)


# -- paths ---------------------------------------------------------------------------------------

def test_coco_name_variants():
    assert coco_name_variants("d/train2014/COCO_train2014_000000005277.jpg") == [
        "d/train2014/000000005277.jpg", "d/train2017/000000005277.jpg"]
    assert "d/val2017/000000000139.jpg" in coco_name_variants("d/val2014/COCO_val2014_000000000139.jpg")
    assert coco_name_variants("coco/train2017/000000033471.jpg")[0] == \
        "coco/train2014/COCO_train2014_000000033471.jpg"
    assert coco_name_variants("imgs/2415801.jpg") == []
    assert strip_dot_slash("././raw_datasets/a.jpg") == "raw_datasets/a.jpg"


def test_resolve_coco_2017_file_from_2014_name(tmp_path):
    f = tmp_path / "coco" / "train2017" / "000000005277.jpg"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    path, how = resolve_media_path("./coco/train2014/COCO_train2014_000000005277.jpg",
                                   str(tmp_path), "rec")
    assert path == str(f) and how == "coco-name"
    path, how = resolve_media_path("coco/train2017/000000005277.jpg", str(tmp_path), "rec")
    assert path == str(f) and how is None
    path, how = resolve_media_path("task_imgs/000000005277.jpg", str(tmp_path), "rec",
                                   alternatives=["coco/train2017/000000005277.jpg"])
    assert how == "alternative"
    with pytest.raises(SampleError) as e:
        resolve_media_path("coco/train2017/000000000001.jpg", str(tmp_path), "data.json: record 9")
    assert e.value.reason == "missing-media" and "record 9" in str(e.value)
    assert str(tmp_path / "coco/train2017/000000000001.jpg") in str(e.value)


# -- media bytes ---------------------------------------------------------------------------------

def test_extension_that_lies_is_sniffed(tmp_path):
    p = tmp_path / "photo.jpg"
    data = encode(Image.new("RGB", (5, 4), (1, 2, 3)), "WEBP")
    p.write_bytes(data)
    m = load_media(Media("image", path=str(p)), "rec")
    assert m.data == data and m.ext == "webp" and m.meta["named_ext"] == "jpg"
    q = tmp_path / "ok.jpeg"
    q.write_bytes(encode(Image.new("RGB", (5, 4)), "JPEG"))
    assert "named_ext" not in load_media(Media("image", path=str(q)), "rec").meta


@pytest.mark.parametrize("mode,fmt", [("RGBA", "PNG"), ("P", "PNG"), ("L", "PNG"), ("LA", "PNG"),
                                      ("CMYK", "JPEG")])
def test_image_modes_kept_as_bytes_and_decode_to_rgb(tmp_path, mode, fmt):
    im = Image.new(mode, (7, 3))
    p = tmp_path / f"x.{fmt.lower()}"
    data = encode(im, fmt)
    p.write_bytes(data)
    m = load_media(Media("image", path=str(p)), "rec", max_pixels=1000)
    assert m.data == data and (m.meta["width"], m.meta["height"]) == (7, 3)
    out = decode_image(m.data, "rec")
    assert out.mode == "RGB" and out.size == (7, 3)


def test_huge_image_rejected_by_pixel_cap(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(encode(Image.new("L", (300, 200)), "PNG"))
    with pytest.raises(SampleError) as e:
        load_media(Media("image", path=str(p)), "rec 5", max_pixels=300 * 200 - 1)
    assert e.value.reason == "image-too-large" and "rec 5" in str(e.value)
    assert load_media(Media("image", path=str(p)), "rec 5", max_pixels=300 * 200).meta["width"] == 300


def test_not_an_image_and_missing_file(tmp_path):
    p = tmp_path / "page.jpg"
    p.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(SampleError) as e:
        load_media(Media("image", path=str(p)), "rec")
    assert e.value.reason == "undecodable-image" and "page.jpg" in str(e.value)
    with pytest.raises(SampleError) as e:
        load_media(Media("image", path=str(tmp_path / "gone.jpg")), "data.json: record 2")
    assert e.value.reason == "missing-media" and "gone.jpg" in str(e.value)
    assert "record 2" in str(e.value)


def test_pointcloud_header_checks(tmp_path):
    good = npy(np.zeros((16, 6), np.float32))
    assert npy_header(good, "x") == ((16, 6), "<f4")
    p = tmp_path / "pc.npy"
    p.write_bytes(good)
    m = load_media(Media("pointcloud", path=str(p)), "rec")
    assert m.data == good and m.ext == "npy" and m.meta["shape"] == [16, 6]
    buf = io.BytesIO()
    np.savez(buf, points=np.ones((9, 3), np.float64))
    z = tmp_path / "pc.npz"
    z.write_bytes(buf.getvalue())
    m = load_media(Media("pointcloud", path=str(z)), "rec")
    assert m.data == buf.getvalue() and m.ext == "npz" and m.meta["shape"] == [9, 3]
    assert pointcloud_shape(good, "x") == ((16, 6), "<f4")
    for bad, reason in ((npy(np.zeros((16,), np.float32)), "undecodable-pointcloud"),
                        (npy(np.zeros((16, 2))), "undecodable-pointcloud"),
                        (npy(np.array([{"a": 1}], dtype=object)), "undecodable-pointcloud"),
                        (npy(np.array([["a", "b", "c"]])), "undecodable-pointcloud"),
                        (b"ply\nformat ascii 1.0\nend_header\n", "unsupported-pointcloud"),
                        (b"not numpy at all", "unsupported-pointcloud")):
        with pytest.raises(SampleError) as e:
            pointcloud_shape(bad, "pc 3")
        assert e.value.reason == reason and "pc 3" in str(e.value)


# -- policy --------------------------------------------------------------------------------------

def _to_sample(index, record, where):
    if record is None:
        raise SampleError(f"{where}: empty record", "invalid-record")
    turns = [Turn("user", record), Turn("assistant", "ok")]
    return Sample(id=str(index), turns=turns)


def test_apply_policy_counts_every_record():
    records = ["<image> but no image", "fine", None, "also fine"]
    items = [(i, r, f"f.json: record {i}") for i, r in enumerate(records)]
    stats = SkipCounter()
    out = list(apply_policy(items, _to_sample, "skip", stats, lambda i, r: i))
    assert [s.id for s in out] == ["1", "3"]
    assert stats.as_dict() == {"image-count-mismatch": 1, "invalid-record": 1}
    assert len(out) + stats.total == len(records)
    with pytest.raises(SampleError) as e:
        list(apply_policy(items, _to_sample, "error", SkipCounter(), lambda i, r: i))
    assert e.value.reason == "image-count-mismatch" and str(e.value).startswith("f.json: record 0")
    with pytest.raises(ValueError):
        check_missing_policy("blank")
