"""Media stay inside their root, and every media file is checked before it is used (issue 16,
points 2, 3 and 7).

* Confinement: ``../x.jpg``, an absolute path and a symlink inside the media root that leads out
  are ``media-outside-root`` skips for every reader, in ``mmit convert`` end to end (nothing from
  outside the root reaches a shard), in training-time reading and in eval; ``--allow-absolute-media``
  (reader option ``allow_absolute``) lets them in.
* Content: a text file named ``.mp4`` (also behind a symlink) is ``undecodable-video``, a text
  file named ``.wav`` ``undecodable-audio``, a bad ``.npy`` ``undecodable-pointcloud``, without
  ``load_bytes`` too.
* Size: a sparse 1 GiB ``.jpg`` is a ``media-too-large`` skip found from its size: it is never
  read whole (tracemalloc peak far below its size).

Each test says in a comment why it fails on the code before this change.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmit.data.convert import main as convert_main
from mmit.data.media import read_media_bytes
from mmit.data.sample import SampleError
from mmit.data.sources import get_reader
from mmit.data.stats import SkipCounter

ROOT = Path(__file__).resolve().parents[1]
MP4 = (ROOT / "demo_data" / "videos" / "yoga.mp4").read_bytes()     # real clips: probed with PyAV
SECRET_MP4 = (ROOT / "demo_data" / "videos" / "silence_girl.mp4").read_bytes()
WAV = (ROOT / "demo_data" / "audio" / "car.wav").read_bytes()
GIB = 1 << 30


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), seed, np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


SECRET = jpeg(201)  # a valid image outside the root: the old readers copied it into shards


@pytest.fixture
def tree(tmp_path):
    """``root/`` (media root) with a good image and a symlink leading out, ``outside/`` beside it."""
    root, out = tmp_path / "root", tmp_path / "outside"
    (root / "imgs").mkdir(parents=True)
    out.mkdir()
    (root / "imgs" / "good.jpg").write_bytes(jpeg(10))
    (out / "secret.jpg").write_bytes(SECRET)
    (root / "imgs" / "link.jpg").symlink_to(out / "secret.jpg")
    return {"tmp": tmp_path, "root": root, "out": out,
            "escapes": ["../outside/secret.jpg", str(out / "secret.jpg"), "imgs/link.jpg"]}


def convs(q: str = "What is this?") -> list:
    return [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": "A thing."}]


def llava_json(tree, name="ann.json") -> Path:
    recs = [{"id": "good", "image": "imgs/good.jpg", "conversations": convs()}]
    recs += [{"id": f"bad{i}", "image": p, "conversations": convs()} for i, p in enumerate(tree["escapes"])]
    p = tree["tmp"] / name
    p.write_text(json.dumps(recs))
    return p


def vision_flan_json(tree) -> Path:
    recs = [{"id": "good", "image": "imgs/good.jpg", "conversations": convs(), "task_name": "t"}]
    recs += [{"id": f"bad{i}", "image": p, "conversations": convs(), "task_name": "t"}
             for i, p in enumerate(tree["escapes"])]
    p = tree["tmp"] / "vf.json"
    p.write_text(json.dumps(recs))
    return p


def convert(fmt, ann, root, out, *extra) -> dict:
    code = convert_main(["--format", fmt, "--input", str(ann), "--media-root", str(root),
                         "--output", str(out), "--shard-size", "2", "--no-progress", *extra])
    stats = json.loads((out / "_stats.json").read_text())
    assert code == (0 if stats["written"] else 2)  # nothing written: exit 2 (issue 15)
    assert stats["records_in"] == stats["written"] + sum(stats["skipped"].values())
    return stats


def shard_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.glob("*.tar")))


# -- confinement, end to end --------------------------------------------------------------------

@pytest.mark.parametrize("fmt,make", [("llava", llava_json), ("vision-flan", vision_flan_json)])
def test_convert_refuses_media_outside_the_root(tree, fmt, make):
    # old code: the three escaping records were written (4 written, 0 skipped) and the secret
    # image's bytes were in the shards
    ann = make(tree)
    stats = convert(fmt, ann, tree["root"], tree["tmp"] / "out")
    assert stats["written"] == 1 and stats["skipped"] == {"media-outside-root": 3}
    assert SECRET not in shard_bytes(tree["tmp"] / "out")
    examples = " ".join(stats["skip_examples"]["media-outside-root"])
    assert "outside the media root" in examples and "--allow-absolute-media" in examples


def test_allow_absolute_media_lets_them_in(tree):
    # old code: no such flag (argparse error, exit code 2)
    stats = convert("llava", llava_json(tree), tree["root"], tree["tmp"] / "out",
                    "--allow-absolute-media")
    assert stats["written"] == 4 and stats["skipped"] == {}
    assert SECRET in shard_bytes(tree["tmp"] / "out")


def webvid_tree(tmp_path: Path) -> Path:
    """A WebVid CSV over ``videos/``: one good clip, three escapes, two text files as .mp4."""
    videos, out = tmp_path / "videos", tmp_path / "outside"
    (videos / "p").mkdir(parents=True)
    out.mkdir()
    (videos / "p" / "1.mp4").write_bytes(MP4)
    (out / "9.mp4").write_bytes(SECRET_MP4)                              # a real video outside
    (out / "8.mp4").write_bytes(SECRET_MP4)
    (out / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (videos / "p" / "2.mp4").symlink_to(out / "9.mp4")                 # symlink out: a video
    (videos / "p" / "104.mp4").symlink_to(out / "passwd")               # symlink out: text
    (videos / "notes.txt").write_text("not a video\n" * 20)
    (videos / "p" / "105.mp4").write_text("this is text in a file named .mp4\n")
    (videos / "p" / "106.mp4").symlink_to(videos / "notes.txt")         # inside, but text
    rows = [("1", "p"), ("2", "p"), ("104", "p"), ("9", "../outside"), ("8", str(out)),
            ("105", "p"), ("106", "p")]
    csv = tmp_path / "results.csv"
    csv.write_text("videoid,name,page_dir\n" + "".join(f"{v},clip {v},{d}\n" for v, d in rows))
    return csv


def test_webvid_confines_and_probes_videos(tmp_path):
    # old code: "7 written, 0 skipped": /etc/passwd-like text behind a symlink, the outside video
    # (three ways) and text files named .mp4 were all stored as .mp4 members
    csv = webvid_tree(tmp_path)
    stats = convert("webvid", csv, tmp_path / "videos", tmp_path / "out")
    assert stats["written"] == 1
    assert stats["skipped"] == {"media-outside-root": 4, "undecodable-video": 2}
    data = shard_bytes(tmp_path / "out")
    assert SECRET_MP4 not in data and b"root:x:0:0" not in data and b"named .mp4" not in data


def test_webvid_reader_checks_without_load_bytes(tmp_path):
    # old code: the reader only checked that the files exist; all 7 rows were yielded
    csv = webvid_tree(tmp_path)
    stats = SkipCounter()
    out = list(get_reader("webvid")(csv, media_root=tmp_path / "videos", stats=stats))
    assert [s.id for s in out] == ["1"]
    assert stats.as_dict() == {"media-outside-root": 4, "undecodable-video": 2}
    stats = SkipCounter()
    out = list(get_reader("webvid")(csv, media_root=tmp_path / "videos", stats=stats,
                                    allow_absolute=True, load_bytes=True))
    assert sorted(s.id for s in out) == ["1", "2", "8", "9"]  # 104 (symlinked text) is still text
    assert stats.as_dict() == {"undecodable-video": 3}


def test_other_readers_confine_too(tree):
    # old code: videochat, sharegpt4v, multiinstruct and mmc4 followed ../, absolute paths and
    # symlinks (mmc4 refused ../ and absolute names, as invalid-record, but followed symlinks)
    root, tmp = tree["root"], tree["tmp"]
    cases = {
        "videochat": [{"id": f"b{i}", "image": p, "QA": [{"q": "q?", "a": "a."}]}
                      for i, p in enumerate(tree["escapes"])],
        "sharegpt4v": [{"id": f"b{i}", "image": p, "conversations": convs()}
                       for i, p in enumerate(tree["escapes"])],
        "multiinstruct": [{"unique_id": str(i), "task_name": "t", "prompt": "q?", "target": "a",
                           "image_path": p} for i, p in enumerate(tree["escapes"])],
        "mmc4": [{"text_list": ["A sentence."],
                  "image_info": [{"image_name": p, "matched_text_index": 0, "matched_sim": 0.9}]}
                 for p in tree["escapes"]],
    }
    for fmt, recs in cases.items():
        ann = tmp / f"{fmt}.jsonl"
        ann.write_text("".join(json.dumps(r) + "\n" for r in recs))
        stats = SkipCounter()
        assert list(get_reader(fmt)(ann, media_root=root, stats=stats)) == [], fmt
        assert stats.as_dict() == {"media-outside-root": 3}, fmt
        assert len(list(get_reader(fmt)(ann, media_root=root, allow_absolute=True))) == 3, fmt


def test_heldout_and_mimic_it_folder_store(tree):
    # old code: heldout readers joined and read any path; MIMIC-IT's folder store followed symlinks
    root, tmp = tree["root"], tree["tmp"]
    ann = tmp / "vizwiz.json"
    ann.write_text(json.dumps([{"image": p, "question": "what?", "answers": [{"answer": "x"}] * 3}
                               for p in tree["escapes"]]))
    stats = SkipCounter()
    assert list(get_reader("heldout-vizwiz")(ann, media_root=root, stats=stats)) == []
    assert stats.as_dict() == {"media-outside-root": 3}
    ins = tmp / "XX_instructions.json"
    ins.write_text(json.dumps({"data": {"XX_INS_1": {"instruction": "q?", "answer": "a.",
                                                      "image_ids": ["link"]}}}))
    stats = SkipCounter()
    assert list(get_reader("mimic-it")(ins, images=root / "imgs", stats=stats)) == []
    assert stats.as_dict() == {"media-outside-root": 1}


# -- content and size checks ----------------------------------------------------------------------

def test_audio_and_pointcloud_are_checked_without_load_bytes(tmp_path):
    # old code: without load_bytes only existence was checked (both records yielded)
    (tmp_path / "car.wav").write_bytes(WAV)
    (tmp_path / "text.wav").write_text("RIFF? no, just text\n")
    ann = tmp_path / "vc.json"
    ann.write_text(json.dumps([{"id": n, "audio": f"{n}.wav", "QA": [{"q": "q?", "a": "a."}]}
                               for n in ("car", "text")]))
    stats = SkipCounter()
    assert [s.id for s in get_reader("videochat")(ann, stats=stats)] == ["car"]
    assert stats.as_dict() == {"undecodable-audio": 1}
    np.save(tmp_path / "flat.npy", np.zeros((4, 2), np.float32))        # (N, 2): not a cloud
    lamm = tmp_path / "lamm.json"
    lamm.write_text(json.dumps([{"pcl": "flat.npy", "conversations": convs("Describe.")}]))
    stats = SkipCounter()
    assert list(get_reader("lamm")(lamm, media_root=tmp_path, stats=stats)) == []
    assert stats.as_dict() == {"undecodable-pointcloud": 1}


def sparse_jpg(path: Path) -> Path:
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0")  # a JPEG start, then 1 GiB of holes (no disk used)
        f.truncate(GIB)
    return path


def test_huge_file_is_never_read_whole(tmp_path):
    # old code: read_media_bytes returned all 1 GiB (peak ~1 GiB) and raised nothing
    p = sparse_jpg(tmp_path / "huge.jpg")
    tracemalloc.start()
    try:
        with pytest.raises(SampleError) as e:
            read_media_bytes(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.reason == "media-too-large" and str(GIB) in str(e.value)
    assert peak < 1 << 20


def test_huge_file_is_a_counted_skip_in_convert(tmp_path):
    # old code: the reader accepted it, the shard builder read all 1 GiB before the header check
    # failed (undecodable-image; peak > 1 GiB)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "good.jpg").write_bytes(jpeg(3))
    sparse_jpg(tmp_path / "imgs" / "huge.jpg")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"id": n, "image": f"imgs/{n}.jpg", "conversations": convs()}
                               for n in ("good", "huge")]))
    tracemalloc.start()
    try:
        stats = convert("llava", ann, tmp_path, tmp_path / "out", "--workers", "1")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats["written"] == 1 and stats["skipped"] == {"media-too-large": 1}
    assert peak < 64 << 20
    # the cap is per kind and configurable: a tiny image cap refuses the good image too
    stats = convert("llava", ann, tmp_path, tmp_path / "out2", "--reader-option",
                    'max_media_bytes={"image": 100}')
    assert stats["written"] == 0 and stats["skipped"] == {"media-too-large": 2}
    for bad in ({"image": 1 << 40}, {"hologram": 10}, {"image": 0}):  # raise, unknown kind, zero
        with pytest.raises(ValueError, match="max_media_bytes"):
            get_reader("llava")(ann, max_media_bytes=bad)


def test_read_media_bytes_refuses_a_fifo(tmp_path):
    # old code: open() on a FIFO named .jpg blocked until a writer came (here a helper thread
    # unblocks it after a moment), then returned b"" instead of an error
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)

    def unblock() -> None:  # opens the writing end once a reader waits (for at most 3 s)
        for _ in range(300):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:
                time.sleep(0.01)

    threading.Thread(target=unblock, daemon=True).start()
    with pytest.raises(OSError, match="not a regular file"):
        read_media_bytes(fifo)


# -- training and eval read source files with the same rule ----------------------------------------

def test_training_stream_confines_media(tree):
    # old code: the training stream kept all 4 records (the secret image would be trained on)
    from mmit.config.schema import DataConfig
    from mmit.training.data import SampleStream

    cfg = DataConfig(format="llava", path=str(llava_json(tree)), media_root=str(tree["root"]))
    stream = SampleStream(cfg, seed=0)
    assert len(stream) == 1 and [s.id for s in stream.epoch(0)] == ["good"]
    assert stream.stats.as_dict() == {"media-outside-root": 3}


def test_eval_data_confines_unless_allowed(tree):
    # old code: eval read all 4 records and had no allow_absolute_media setting
    from mmit.evaluation.config import EvalDataConfig
    from mmit.evaluation.data import iter_data_samples

    d = EvalDataConfig(format="llava", path=str(llava_json(tree)), media_root=str(tree["root"]))
    stats = SkipCounter()
    assert [s.id for s in iter_data_samples(d, stats, "task")] == ["good"]
    assert stats.as_dict() == {"media-outside-root": 3}
    d.allow_absolute_media = True
    assert len(list(iter_data_samples(d, SkipCounter(), "task"))) == 4


def test_a_path_resolved_with_a_one_off_allowance_is_still_confined_by_attach(tmp_path):
    """``attach_media`` skips re-checking the path ``resolve_media_path`` just found usable, but
    only when that finding is the root's own rule: a call that lifted confinement for itself
    (``allow_absolute=True``) must not let the file past ``attach_media`` (which follows the
    root's policy); a later file is checked again."""
    from mmit.data.media_resolve import MediaRoot, attach_media, resolve_media_path
    from mmit.data.sample import Media

    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (4, 4)).save(outside)
    inside = root / "in.jpg"
    Image.new("RGB", (4, 4)).save(inside)
    mroot = MediaRoot(root)
    found, _ = resolve_media_path(str(outside), mroot, "rec 1", allow_absolute=True)
    with pytest.raises(SampleError) as e:
        attach_media(Media(kind="image", path=found), "rec 1", mroot, load_bytes=False)
    assert e.value.reason == "media-outside-root"
    found, _ = resolve_media_path("in.jpg", mroot, "rec 2")
    assert attach_media(Media(kind="image", path=found), "rec 2", mroot, load_bytes=False).path == found
    inside.unlink()  # the remembered check served that one attach only: this one looks again
    with pytest.raises(SampleError) as e:
        attach_media(Media(kind="image", path=found), "rec 2b", mroot, load_bytes=False)
    assert e.value.reason == "missing-media"
    with pytest.raises(SampleError) as e:
        attach_media(Media(kind="image", path=str(root / "other.jpg")), "rec 3", mroot, load_bytes=False)
    assert e.value.reason == "missing-media"
