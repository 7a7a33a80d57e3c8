"""LAMM reader (mmit.data.sources.lamm) on hand-made fixtures laid out as DATASETS.md §2 describes.

No real LAMM file is public outside HF, so the records below are the README's verbatim examples
(2D and 3D instruction records) and benchmark records with the fields ChEF's LAMM_dataset.py reads.
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmit.data.sample import SampleError
from mmit.data.sources import available_formats, get_reader
from mmit.data.sources.lamm import default_media_root, read_lamm
from mmit.data.stats import SkipCounter

REC_2D = {
    "id": "000000019028", "image": "coco_images/000000019028.jpg",
    "conversations": [
        {"from": "human", "value": "How is the kitchen in the image furnished?"},
        {"from": "gpt", "value": "The kitchen in the image is furnished with white cabinets and "
                                 "white appliances. There is a dishwasher, a stove, and a sink. ..."}],
    "task_type": "conversation", "src_image": "coco2017"}
REC_3D = {
    "pcl": "shapenet_pcls/04256520_cb71cb7b36dbcb6f826fc8d57346a2e4_4096.npy",
    "conversations": [
        {"from": "human", "value": "What scenario does this point cloud belong to according to "
                                   "the model\u2019s prediction?"},
        {"from": "gpt", "value": "Through meticulous analysis, it becomes evident that the point "
                                 "cloud aligns with the characteristics of sofa,couch,lounge "
                                 "s       cenario."}],
    "task_type": "classification3d", "src_dataset": "ShapeNet",
    "src_id": "04256520_cb71cb7b36dbcb6f826fc8d57346a2e4"}


def png(mode="RGB", size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def meta_file(root: Path, name: str, records) -> Path:
    p = root / "meta_file" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    return p


@pytest.fixture
def lamm2d(tmp_path):
    root = tmp_path / "2D_Instruct"
    img = put(root, "coco_images/000000019028.jpg", png("RGBA"))  # PNG bytes named .jpg
    return root, img


@pytest.fixture
def lamm3d(tmp_path):
    root = tmp_path / "3D_Instruct"
    rng = np.random.default_rng(0)
    pc = put(root, "shapenet_pcls/04256520_cb71cb7b36dbcb6f826fc8d57346a2e4_4096.npy",
             npy(rng.standard_normal((4096, 6)).astype(np.float32)))
    return root, pc


def test_2d_instruction_record(lamm2d):
    root, img = lamm2d
    p = meta_file(root, "LAMM_instruct_98k.json", [REC_2D])
    assert default_media_root(str(p)) == str(root)
    (s,) = read_lamm(p, load_bytes=True, max_pixels=10_000)
    s.validate()
    assert s.id == "000000019028" and s.task == "conversation" and s.source == "lamm"
    assert s.turns[0].content == "<image>\nHow is the kitchen in the image furnished?"
    assert [t.role for t in s.turns] == ["user", "assistant"]
    assert s.media[0].kind == "image" and s.media[0].path == str(img)
    assert s.media[0].data == img.read_bytes() and s.media[0].ext == "png"
    assert s.media[0].meta["named_ext"] == "jpg" and s.media[0].meta["width"] == 8
    assert s.meta == {"src_image": "coco2017"}


def test_3d_instruction_record_is_a_pointcloud(lamm3d):
    root, pc = lamm3d
    p = meta_file(root, "LAMM_3dinstruct_10k.json", [REC_3D])
    (s,) = read_lamm(p, load_bytes=True)
    s.validate()
    assert s.id == "0" and s.task == "classification3d"
    m = s.media[0]
    assert m.kind == "pointcloud" and m.ext == "npy" and m.data == pc.read_bytes()
    assert m.meta["shape"] == [4096, 6] and m.meta["dtype"] == "<f4"
    assert np.array_equal(np.load(io.BytesIO(m.data)), np.load(pc))
    assert s.turns[0].content.startswith("<pointcloud>\nWhat scenario does this point cloud")
    assert s.num_placeholders() == 0  # no <image>: the point cloud is not an image
    assert "s       cenario" in s.turns[1].content
    assert s.meta["src_id"] == "04256520_cb71cb7b36dbcb6f826fc8d57346a2e4"


def test_mixed_2d_3d_file_and_multi_turn_role_content(tmp_path):
    root = tmp_path / "mixed"
    put(root, "coco_images/000000019028.jpg", png())
    put(root, "shapenet_pcls/04256520_cb71cb7b36dbcb6f826fc8d57346a2e4_4096.npy",
        npy(np.zeros((10, 3), np.float64)))
    multi = {"id": "dlg", "image": "coco_images/000000019028.jpg", "task_type": "commomsenseqa",
             "conversations": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                               {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]}
    p = meta_file(root, "mixed.json", [REC_2D, REC_3D, multi])
    out = list(read_lamm(p, media_root=root))
    assert [m.kind for s in out for m in s.media] == ["image", "pointcloud", "image"]
    assert out[2].task == "commomsenseqa" and len(out[2].turns) == 4  # typo kept verbatim
    assert out[2].turns[2].content == "Q2"


BENCH = [
    ("Caption_flickr30k.json", {"id": 0, "image": "flickr30k_images/1.jpg",
                                "query": "Generate caption of this image:",
                                "sentences": ["A dog runs.", "A brown dog is running."]}),
    ("Classification_CIFAR10.json", {"image": "cifar10_images/7.png", "query": "What is the object?",
                                     "label": "cat"}),
    ("Facial_Classification_CelebA(Hair).json", {"image": "celeba_images/3.jpg",
                                                 "query": "What is the hair color?", "attr": "black"}),
    ("Counting_FSC147.json", {"image": "fsc147_images/9.jpg", "query": "How many apples?", "num": 12}),
    ("Detection_VOC2012.json", {"image": "voc2012_images/2008_000008.jpg", "query": "Detect objects.",
                                "object": [{"label": "horse", "bbox": [0.1, 0.2, 0.5, 0.9]}]}),
    ("OCR_SVT.json", {"image": "svt_images/00_01.jpg", "query": "Read the text.",
                      "word_list": ["PUBLIC", "HOUSE"]}),
    ("VQA_AI2D.json", {"id": "ai2d_5", "image": "ai2d_images/5.png", "query": "Which stage comes next?",
                       "gt_choice": 2, "gt_choices": ["egg", "larva", "pupa", "adult"]}),
]


@pytest.mark.parametrize("name,rec", BENCH, ids=[b[0] for b in BENCH])
def test_2d_benchmark_meta_files(tmp_path, name, rec):
    root = tmp_path / "2D_Benchmark"
    img = put(root, rec["image"], png("L", (5, 5)))
    p = meta_file(root, name, [rec])
    (s,) = read_lamm(p, load_bytes=True)
    s.validate()
    assert s.task == name[:-5] and s.meta["benchmark"] is True
    assert [t.role for t in s.turns] == ["user"] and s.turns[0].content == "<image>\n" + rec["query"]
    gt = {k: v for k, v in rec.items() if k not in ("id", "image", "query")}
    assert s.meta["ground_truth"] == gt and s.media[0].data == img.read_bytes()
    if "gt_choices" in rec:
        assert s.meta["options"] == rec["gt_choices"] and s.meta["answer_index"] == 2
        assert s.id == "ai2d_5"


def test_3d_benchmark_dot_slash_paths(tmp_path):
    root = tmp_path / "3D_Benchmark"
    put(root, "scannet_pcls/scene0011_00.npy", npy(np.ones((64, 6), np.float32)))
    recs = [{"pcl": "./scannet_pcls/scene0011_00.npy", "query": "What is on the table?",
             "gt_choice": 0, "gt_choices": ["a lamp", "a cup"]},
            {"pcl": "./scannet_pcls/scene0999_00.npy", "query": "Missing scene?", "gt_choice": 1,
             "gt_choices": ["a", "b"]}]
    p = meta_file(root, "VQA_ScanQA_multiplechoice.json", recs)
    stats = SkipCounter()
    out = list(read_lamm(p, stats=stats, load_bytes=True))
    assert len(out) == 1 and stats.as_dict() == {"missing-media": 1}
    assert out[0].media[0].meta["original_path"] == "./scannet_pcls/scene0011_00.npy"
    assert out[0].media[0].path == str(root / "scannet_pcls/scene0011_00.npy")
    assert out[0].turns[0].content == "<pointcloud>\nWhat is on the table?"
    assert out[0].task == "VQA_ScanQA_multiplechoice" and out[0].meta["options"] == ["a lamp", "a cup"]


def test_bad_records_counted_by_reason(tmp_path, lamm2d, lamm3d):
    root2d, _ = lamm2d
    root3d, _ = lamm3d
    put(root2d, "bad/flat.npy", npy(np.zeros((5, 2), np.float32)))
    put(root2d, "bad/page.jpg", b"<html>not found</html>")
    recs = [REC_2D,
            {"id": "both", "image": "coco_images/000000019028.jpg", "pcl": "x.npy",
             "conversations": REC_2D["conversations"]},
            {"id": "neither", "conversations": REC_2D["conversations"]},
            {"id": "noconv", "image": "coco_images/000000019028.jpg"},
            {"id": "lead", "image": "coco_images/000000019028.jpg",
             "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}]},
            {"id": "flat", "pcl": "bad/flat.npy", "conversations": REC_3D["conversations"]},
            {"id": "html", "image": "bad/page.jpg", "conversations": REC_2D["conversations"]},
            {"id": "gone", "image": "coco_images/nope.jpg", "conversations": REC_2D["conversations"]},
            {"id": "alt", "image": "coco_images/000000019028.jpg",
             "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}]
    p = meta_file(root2d, "bad.json", recs)
    stats = SkipCounter()
    out = list(read_lamm(p, stats=stats, load_bytes=True))
    assert [s.id for s in out] == ["000000019028"]
    assert stats.as_dict() == {"undecodable-pointcloud": 1, "first-turn-not-user": 1,
                               "invalid-record": 3,
                               "missing-media": 1, "roles-not-alternating": 1,
                               "undecodable-image": 1}
    assert len(out) + stats.total == len(recs)
    with pytest.raises(SampleError) as e:
        list(read_lamm(p, missing="error", load_bytes=True))
    assert "record 1" in str(e.value) and "'both'" in str(e.value) and str(p) in str(e.value)


def test_registered_and_missing_file(tmp_path):
    assert "lamm" in available_formats() and get_reader("lamm") is read_lamm
    with pytest.raises(FileNotFoundError):
        read_lamm(tmp_path / "meta_file" / "none.json")


def test_convert_round_trip_pointcloud_and_image(tmp_path, lamm3d):
    from mmit.data.convert import convert
    from mmit.data.shards import iter_shards

    root, pc = lamm3d
    put(root, "coco_images/000000019028.jpg", png())
    p = meta_file(root, "mixed.json", [REC_3D, REC_2D])
    stats = convert("lamm", str(p), str(tmp_path / "out"), progress=False)
    assert stats["records_in"] == 2 and stats["written"] == 2 and stats["skipped"] == {}
    back = {b.id: b for b in iter_shards(str(tmp_path / "out"), split_by_node=False,
                                         split_by_worker=False)}
    for s in read_lamm(p, load_bytes=True):
        assert back[s.id].turns == s.turns and back[s.id].task == s.task
        assert back[s.id].media[0].data == s.media[0].data
    assert back["0"].media[0].kind == "pointcloud" and back["0"].media[0].data == pc.read_bytes()
