"""ShareGPT4V reader (mmit.data.sources.sharegpt4v): data/ layout, lying extensions, mix665k."""

import io
import json
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from mmit.data.media import decode_image
from mmit.data.sample import SampleError
from mmit.data.sources import available_formats, get_reader
from mmit.data.sources.sharegpt4v import IMAGE_ROOTS, name_variants, read_sharegpt4v
from mmit.data.stats import SkipCounter

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "sharegpt4v"

# cap100k record 0 as quoted in DATASETS.md §4 (caption trimmed there and here).
CAP100K_0 = {"id": "000000000009", "image": "coco/train2017/000000000009.jpg", "conversations": [
    {"from": "human", "value": "What do you see happening in this image?\n<image>"},
    {"from": "gpt", "value": "In the center of the image, a vibrant blue lunch tray holds four "
                             "containers, each brimming with a variety of food items.\n\n..."}]}


def jpeg(color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 5), color).save(buf, format="JPEG")
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False))
    return path


def conv(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def test_real_demo_images_extension_lies(tmp_path):
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    recs = [{"id": "bb", "image": "examples/breaking_bad.png",
             "conversations": conv("<image>\nWho is this?", "A chemistry teacher.")},
            {"id": "ph", "image": "examples/photo.png",
             "conversations": conv("Describe the photo.\n<image>", "A photo.")}]
    p = write(tmp_path / "demo.json", recs)
    stats = SkipCounter()
    bb, ph = read_sharegpt4v(p, media_root=SAMPLES, stats=stats, load_bytes=True,
                             max_pixels=10_000_000)
    assert stats.total == 0
    assert bb.media[0].data == (SAMPLES / "examples/breaking_bad.png").read_bytes()
    assert bb.media[0].ext == "webp" and bb.media[0].meta["named_ext"] == "png"
    assert (bb.media[0].meta["width"], bb.media[0].meta["height"]) == (960, 640)
    assert ph.media[0].ext == "png" and "named_ext" not in ph.media[0].meta
    assert ph.turns[0].content == "<image>\nDescribe the photo."
    assert decode_image(bb.media[0].data, "bb").mode == "RGB"
    for s in (bb, ph):
        s.validate()
        assert s.source == "sharegpt4v" and s.media[0].meta["image_root"] is None


def test_cap100k_in_the_documented_data_layout(tmp_path):
    data = tmp_path / "data"
    img = put(data, "coco/train2017/000000000009.jpg", jpeg())
    p = write(data / "sharegpt4v" / "sharegpt4v_instruct_gpt4-vision_cap100k.json", [CAP100K_0])
    (s,) = read_sharegpt4v(p, load_bytes=True)  # default media root: data/
    s.validate()
    assert s.media[0].path == str(img) and s.media[0].data == img.read_bytes()
    assert s.media[0].meta["image_root"] == "coco" and s.id == "000000000009"
    assert s.turns[0].content == "<image>\nWhat do you see happening in this image?"
    assert s.turns[1].content.endswith("food items.\n\n...")


def test_every_image_root_resolves(tmp_path):
    rels = ["coco/train2017/000000000009.jpg", "sam/images/sa_545504.jpg",
            "llava/llava_pretrain/images/00453/004539375.jpg", "wikiart/images/a.jpg",
            "share_textvqa/images/b.jpg", "web-celebrity/images/Choi_Min-sik.jpg",
            "web-landmark/images/c.jpg", "gqa/images/1.jpg", "ocr_vqa/images/2.jpg",
            "textvqa/train_images/3.jpg", "vg/VG_100K_2/4.jpg"]
    for i, r in enumerate(rels):
        put(tmp_path, r, jpeg((i, i, i)))
    recs = [{"id": str(i), "image": r, "conversations": conv("<image>\nDescribe.", "x")}
            for i, r in enumerate(rels)]
    out = list(read_sharegpt4v(write(tmp_path / "share-captioner.json", recs), load_bytes=True))
    assert [s.media[0].meta["image_root"] for s in out] == [r.split("/")[0] for r in rels]
    assert set(IMAGE_ROOTS) == {r.split("/")[0] for r in rels}
    assert all(s.media[0].data == (tmp_path / r).read_bytes() for s, r in zip(out, rels))


def test_mix665k_text_only_multi_turn_and_missing_sam(tmp_path):
    put(tmp_path, "coco/train2017/000000033471.jpg", jpeg())
    recs = [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
                {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
                {"from": "gpt", "value": "The bus in the image is white and red."},
                {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
            {"id": "i6IyJda_0", "model": "", "conversations": conv("How to cook rice?", "Rinse it.")},
            {"id": "sa_411432", "image": "sam/images/sa_411432.jpg",
             "conversations": conv("<image>\nDescribe.", "A street.")},
            {"id": "plainbad", "image": "coco/train2017/000000033471.jpg",
             "conversations": conv("<image> <image>", "two?")}]
    p = write(tmp_path / "sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json", recs)
    stats = SkipCounter()
    out = list(read_sharegpt4v(p, stats=stats))
    assert [s.id for s in out] == ["000000033471", "i6IyJda_0"]
    assert len(out[0].turns) == 4 and out[1].media == [] and out[1].meta == {"model": ""}
    assert stats.as_dict() == {"image-count-mismatch": 1, "missing-media": 1}
    assert len(out) + stats.total == len(recs)
    assert "sa_411432.jpg" in stats.examples["missing-media"][0]
    with pytest.raises(SampleError) as e:
        list(read_sharegpt4v(p, missing="error"))
    assert e.value.reason == "missing-media" and "record 2" in str(e.value) and str(p) in str(e.value)


def test_wikiart_escapes_unicode_forms_and_coco_2014_names(tmp_path):
    put(tmp_path, "wikiart/images/jos#U00e9-malhoa_a.jpg", jpeg())
    put(tmp_path, "wikiart/images/" + unicodedata.normalize("NFD", "renée_b.jpg"), jpeg())
    put(tmp_path, "coco/train2014/COCO_train2014_000000000009.jpg", jpeg())
    recs = [{"id": "w1", "image": "wikiart/images/josé-malhoa_a.jpg", "conversations": conv("<image>", "x")},
            {"id": "w2", "image": "wikiart/images/ren#U00e9e_b.jpg", "conversations": conv("<image>", "x")},
            dict(CAP100K_0)]
    out = list(read_sharegpt4v(write(tmp_path / "x.json", recs), missing="error"))
    assert [s.media[0].meta["resolved_by"] for s in out] == ["alternative", "alternative", "coco-name"]
    assert out[0].media[0].path.endswith("jos#U00e9-malhoa_a.jpg")
    assert "wikiart/images/renée_b.jpg" in name_variants("wikiart/images/ren#U00e9e_b.jpg")


def test_invalid_records(tmp_path):
    recs = [{"id": "a", "image": 3, "conversations": conv("q", "a")}, {"id": "b"},
            {"id": ["x"], "conversations": conv("q", "a")},
            {"id": "c", "conversations": [{"from": "gpt", "value": "first"}]}]
    stats = SkipCounter()
    out = list(read_sharegpt4v(write(tmp_path / "bad.json", recs), stats=stats))
    # a list as id is its own reason since issue 16 (``bad-id``, was ``invalid-record``)
    assert out == [] and stats.as_dict() == {"bad-id": 1, "first-turn-not-user": 1, "invalid-record": 2}


def test_registered():
    assert "sharegpt4v" in available_formats() and get_reader("sharegpt4v") is read_sharegpt4v


def test_convert_round_trip_webp_named_png(tmp_path):
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    from mmit.data.convert import convert
    from mmit.data.shards import iter_shards

    recs = [{"id": "bb", "image": "examples/breaking_bad.png",
             "conversations": conv("Who is this?\n<image>", "A chemistry teacher.")},
            {"id": "txt", "model": "", "conversations": conv("Hi", "Hello")}]
    p = write(tmp_path / "demo.json", recs)
    stats = convert("sharegpt4v", str(p), str(tmp_path / "out"), media_root=str(SAMPLES),
                    progress=False)
    assert stats["written"] == 2 and stats["records_in"] == 2
    back = {b.id: b for b in iter_shards(str(tmp_path / "out"), split_by_node=False,
                                         split_by_worker=False)}
    for s in read_sharegpt4v(p, media_root=SAMPLES, load_bytes=True):
        assert back[s.id].turns == s.turns
        assert [m.data for m in back[s.id].media] == [m.data for m in s.media]
    assert back["bb"].media[0].ext == "webp" and back["txt"].media == []
