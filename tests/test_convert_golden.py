"""`mmit convert` writes the same bytes as the recorded golden run, for every image, video, point
cloud and base64 source format built here (issue 17: conversion was made faster without changing
its output).

`tests/golden/convert.json` holds, per case, the counts of the run and, per output file, the
sha256 of the whole file and of every tar member (name, size, sha256): not the tars themselves.
The inputs are built from files in the repository only (demo_data images, videos and audio; a
generated point cloud; one truncated JPEG and one missing file for the counted skips), and the
conversion runs with RELATIVE input and media paths from the test's folder, so the paths stored in
the `.json` members, and therefore the bytes, do not depend on where the test runs.

Regenerate (only for an intended format change, together with a bump of
`mmit.data.shard_build.SHARD_FORMAT_VERSION`):
``python tests/test_convert_golden.py --write``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmit.data.convert import convert  # noqa: E402

DEMO = ROOT / "demo_data"
GOLDEN = Path(__file__).parent / "golden" / "convert.json"
IMAGES = ["coco/train2017/000000319154.jpg", "david_statue.jpg", "dog_running.jpg",
          "extreme_ironing.jpg", "hazmat_suits.png", "statue_of_liberty.jpg", "waterview.jpg"]
VIDEOS = ["dog_barking.mp4", "hitting_baseball.mp4", "yoga.mp4"]

# A case: (input, media_root or None, reader options, extra convert options), relative to cwd.
Case = Tuple[str, Any, Dict[str, Any], Dict[str, Any]]


def _put(src: Path, dst: Path) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return str(dst)


def _truncated(dst: Path) -> None:
    """A JPEG cut in half: passes the magic-byte check, fails the header/end check."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = (DEMO / "images" / IMAGES[2]).read_bytes()
    dst.write_bytes(data[: len(data) // 2])


def _conv(i: int, placeholder: bool = True) -> List[Dict[str, str]]:
    q = f"Describe the image in detail (record {i})."
    return [{"from": "human", "value": ("<image>\n" if placeholder else "") + q},
            {"from": "gpt", "value": f"A detailed description number {i}, café ☕."}]


def c_llava(d: Path) -> Case:
    shutil.copytree(DEMO / "images", d / "images")
    shutil.copyfile(DEMO / "llava_demo.json", d / "llava.json")
    return "llava.json", "images", {}, {"shard_size": 16}


def c_sharegpt4v(d: Path) -> Case:
    recs = []
    for i in range(10):
        rel = f"coco/train2017/{i:012d}.jpg"  # the WebP (hazmat_suits.png) gets a .jpg name: sniffed
        if i == 7:
            _truncated(d / "data" / rel)
        elif i != 8:  # 8: missing file
            _put(DEMO / "images" / IMAGES[i % len(IMAGES)], d / "data" / rel)
        recs.append({"id": f"{i:012d}", "image": rel, "conversations": _conv(i)})
    recs.append({"id": "text-only", "conversations": _conv(99, placeholder=False)})
    (d / "data" / "sharegpt4v").mkdir(parents=True, exist_ok=True)
    (d / "data" / "sharegpt4v" / "cap.json").write_text(json.dumps(recs))
    return "data/sharegpt4v/cap.json", "data", {}, {"shard_size": 4}


def c_vision_flan(d: Path) -> Case:
    recs = []
    for i in range(6):
        name = f"VQA-E+image_question_answer_{i}_0.{i}.jpg"
        _put(DEMO / "images" / IMAGES[i], d / "images_191task_1k" / name)
        recs.append({"id": f"vqa-e_{i}", "image": f"./images_191task_1k/{name}",
                     "task_name": "VQA-E+image_question_answer", "conversations": _conv(i)})
    (d / "annotation_191-task_1k.json").write_text(json.dumps(recs))
    return "annotation_191-task_1k.json", ".", {}, {"shard_size": 4}


MULTIINSTRUCT = [
    {"unique_id": "VQA_object_presence_10026521", "task_name": "VQA_object_presence",
     "image_path": "./raw_datasets/MSCOCO2014/train2014/COCO_train2014_000000005277.jpg",
     "question": "Are there any couches in the photo?", "target_txt": "no",
     "options": ["no", "yes"], "prompt": "This task asks you to identify if an object appears in "
     "the image. Are there any couches in the photo?\n\n[Options]: no||||yes", "target": "no"},
    {"unique_id": "mscoco_caption2014_392260", "image_source": "coco2014",
     "task_name": "image_caption",
     "image_path": "./raw_datasets/MSCOCO2014/train2014/COCO_train2014_000000047909.jpg",
     "target_txt": "A parade float of a dog on a skateboard with on lookers.",
     "prompt": "Look at image and tell me what is the content.",
     "target": "A parade float of a dog on a skateboard with on lookers."},
]


def c_multiinstruct(d: Path) -> Case:
    lines = []
    for i in range(6):
        r = dict(MULTIINSTRUCT[i % 2], unique_id=f"{MULTIINSTRUCT[i % 2]['unique_id']}-{i}")
        rel = f"raw_datasets/MSCOCO2014/train2014/COCO_train2014_{i:012d}.jpg"
        r["image_path"] = "./" + rel
        _put(DEMO / "images" / IMAGES[(i + 2) % len(IMAGES)], d / rel)
        lines.append(json.dumps(r))
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    return "train.jsonl", ".", {}, {"shard_size": 4}


def c_lamm(d: Path) -> Case:
    recs = []
    for i in range(8):
        if i % 4 == 3:
            rel = f"shapenet_pcls/{i:08d}_4096.npy"
            (d / "shapenet_pcls").mkdir(exist_ok=True)
            np.save(d / rel, (np.arange(64 * 6, dtype=np.float32) * (i + 1) / 7).reshape(64, 6))
            recs.append({"pcl": rel, "conversations": [
                {"from": "human", "value": "What is this point cloud?"},
                {"from": "gpt", "value": f"A sofa, number {i}."}], "task_type": "classification3d",
                "src_dataset": "ShapeNet", "src_id": f"{i:08d}"})
        else:
            rel = f"coco_images/{i:012d}.jpg"
            _put(DEMO / "images" / IMAGES[i % len(IMAGES)], d / rel)
            recs.append({"id": f"{i:012d}", "image": rel, "conversations": _conv(i, False),
                         "task_type": "conversation", "src_image": "coco2017"})
    (d / "lamm.json").write_text(json.dumps(recs))
    return "lamm.json", ".", {}, {"shard_size": 3}


def c_instructpix2pix(d: Path) -> Case:
    seeds = []
    for i in range(3):
        folder = d / "ds" / f"{i:07d}"
        folder.mkdir(parents=True)
        (folder / "prompt.json").write_text(json.dumps(
            {"input": "a photo", "edit": f"make it a painting ({i})", "output": "a painting"}))
        for k, seed in enumerate((11, 22)):
            _put(DEMO / "images" / IMAGES[(i + k) % len(IMAGES)], folder / f"{seed}_0.jpg")
            _put(DEMO / "images" / IMAGES[(i + k + 3) % len(IMAGES)], folder / f"{seed}_1.jpg")
        seeds.append([f"{i:07d}", [11, 22]])
    (d / "ds" / "seeds.json").write_text(json.dumps(seeds))
    return "ds", "ds", {}, {"shard_size": 4}


def c_mimic_it(d: Path) -> Case:
    imgs = [(DEMO / "images" / p).read_bytes() for p in IMAGES]
    store = {f"LA_IMG_{k:06d}": base64.b64encode(b).decode() for k, b in enumerate(imgs)}
    store["LA_IMG_000001"] = base64.urlsafe_b64encode(imgs[1]).decode().rstrip("=")
    store["LA_IMG_000002"] = "data:image/jpeg;base64," + store["LA_IMG_000002"]
    store["LA_IMG_000009"] = "!!not base64!!"
    data = {f"LA_INS_{i:06d}": {"instruction": f"What is in the picture ({i})?",
                                "answer": "A scene.", "image_ids": [f"LA_IMG_{i % 10:06d}"],
                                "rel_ins_ids": [f"LA_INS_{(i + 1) % 9:06d}"]} for i in range(10)}
    (d / "LA_instructions.json").write_text(json.dumps({"meta": {}, "data": data}))
    (d / "LA.json").write_text(json.dumps(store))
    return "LA_instructions.json", None, {}, {"shard_size": 4}


def c_videochat(d: Path) -> Case:
    recs = []
    for i in range(4):
        rel = f"videos/000001_000050/{i:010d}.mp4"
        _put(DEMO / "videos" / VIDEOS[i % len(VIDEOS)], d / rel)
        recs.append({"video": rel, "QA": [{"q": f"What happens in the video ({i})?",
                                           "a": "Someone moves."}]})
    (d / "videochat_instruct.json").write_text(json.dumps(recs))
    return "videochat_instruct.json", ".", {}, {"shard_size": 3}


def c_webvid(d: Path) -> Case:
    with open(d / "results_2M_val.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        for i in range(4):
            vid = str(1000000000 + i)
            _put(DEMO / "videos" / VIDEOS[i % len(VIDEOS)],
                 d / "videos" / "000001_000050" / f"{vid}.mp4")
            w.writerow([vid, f"https://example.invalid/{vid}.mp4", "PT00H00M12S",
                        "000001_000050", f"Clip {i}, with a comma, and \"quotes\"."])
    return "results_2M_val.csv", "videos", {}, {"shard_size": 3}


CASES: Dict[str, Tuple[str, Callable[[Path], Case]]] = {
    "llava": ("llava", c_llava), "sharegpt4v": ("sharegpt4v", c_sharegpt4v),
    "vision-flan": ("vision-flan", c_vision_flan), "multiinstruct": ("multiinstruct", c_multiinstruct),
    "lamm": ("lamm", c_lamm), "instructpix2pix": ("instructpix2pix", c_instructpix2pix),
    "mimic-it": ("mimic-it", c_mimic_it), "videochat": ("videochat", c_videochat),
    "webvid": ("webvid", c_webvid)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe(out: Path) -> Dict[str, Any]:
    """sha256 of every shard file (whole, and per tar member) and of every per-shard stats file."""
    files: Dict[str, Any] = {}
    for p in sorted(out.iterdir()):
        if p.suffix == ".tar":
            with tarfile.open(p) as tf:
                members = [[m.name, m.size, _sha(tf.extractfile(m).read())] for m in tf]
            files[p.name] = {"sha256": _sha(p.read_bytes()), "members": members}
        elif p.name.endswith("_stats.json") and not p.name.startswith("_"):
            files[p.name] = {"sha256": _sha(p.read_bytes())}
    return files


def run_case(name: str, work: Path, **kw: Any) -> Dict[str, Any]:
    """Build case ``name``'s input in ``work`` (the current folder) and convert it into
    ``work/out``. Returns the counts and :func:`describe` of the output."""
    fmt, build = CASES[name]
    inp, root, reader_options, options = build(work)
    stats = convert(fmt, inp, "out", media_root=root, reader_options=reader_options,
                    progress=False, **options, **kw)
    assert stats["records_in"] == stats["written"] + sum(stats["skipped"].values())
    return {"records_in": stats["records_in"], "written": stats["written"],
            "skipped": stats["skipped"], "files": describe(work / "out")}


def _golden() -> Dict[str, Any]:
    return json.loads(GOLDEN.read_text())["cases"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_conversion_is_byte_identical_to_golden(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = run_case(name, tmp_path)
    want = _golden()[name]
    assert {k: got[k] for k in ("records_in", "written", "skipped")} == \
        {k: want[k] for k in ("records_in", "written", "skipped")}
    assert sorted(got["files"]) == sorted(want["files"])
    for fname, w in want["files"].items():
        g = got["files"][fname]
        if "members" in w:
            assert [m[:2] for m in g["members"]] == [m[:2] for m in w["members"]], fname
            for gm, wm in zip(g["members"], w["members"]):
                assert gm[2] == wm[2], f"{fname}: member {wm[0]} differs"
        assert g["sha256"] == w["sha256"], f"{fname}: file bytes differ"
    for p in (tmp_path / "out").glob("*.tar"):
        assert str(tmp_path).encode() not in p.read_bytes(), "no absolute path in the shards"


def test_golden_covers_skips_and_every_media_kind():
    """The cases exercise what the fast paths must keep: counted skips of several reasons, text-only
    records, images, videos, point clouds and base64 media, several shards per case."""
    g = _golden()
    reasons = {r for c in g.values() for r in c["skipped"]}
    assert {"missing-media", "undecodable-image", "bad-base64"} <= reasons, reasons
    exts = {m[0].rsplit(".", 1)[1] for c in g.values() for f in c["files"].values()
            for m in f.get("members", [])}
    assert {"jpg", "webp", "mp4", "npy", "json"} <= exts, exts
    assert all(sum(f.endswith(".tar") for f in c["files"]) >= 2 for c in g.values())


def test_two_workers_write_the_same_bytes_as_one(tmp_path, monkeypatch):
    """The process-pool distributor gives the golden bytes too (workers only change where a shard
    is built)."""
    monkeypatch.chdir(tmp_path)
    got = run_case("sharegpt4v", tmp_path, workers=2)
    assert got["files"] == _golden()["sharegpt4v"]["files"]


def _write() -> None:  # pragma: no cover - run by hand, see the module docstring
    import tempfile

    cases = {}
    cwd = os.getcwd()
    for name in sorted(CASES):
        with tempfile.TemporaryDirectory() as t:
            os.chdir(t)
            try:
                cases[name] = run_case(name, Path(t))
            finally:
                os.chdir(cwd)
        print(name, cases[name]["records_in"], cases[name]["written"], cases[name]["skipped"])
    GOLDEN.write_text(json.dumps({"about": "sha256 of mmit convert output; see "
                                  "tests/test_convert_golden.py", "cases": cases},
                                 indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        _write()
    else:
        sys.exit("usage: python tests/test_convert_golden.py --write")
