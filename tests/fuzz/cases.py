"""The seeded case generator: a valid small dataset per format, then mutations.

A :class:`Case` is a pure description (no file is touched until :func:`write_case`), built by
:func:`make_case` from ``(format, seed)``; the same pair always gives the same case (``random.Random``
seeded with a string, images and arrays from ``numpy`` generators seeded from it).

Case folder layout (paths in a case are relative to it; ``@CASE@`` in any string stands for the
folder's absolute path and is filled in when the case is written)::

    data/         the media root (``data/images`` for ScienceQA, ``data/frames`` for a MIMIC-IT
                  folder store) and, for most formats, the annotation files
    outside/      planted "secrets": a valid image / video / audio / point cloud and a text file
                  with :data:`SECRET_MARK`; media paths, symlinks and moved folders lead here
    out/          the conversion (written by the runner)

Each builder registers where its layout can be mutated: ``records`` (the JSON/CSV/parquet records),
``slots`` (media bytes: files, base64 strings, parquet cells), ``paths`` (record fields that name a
media file) and ``docs`` (annotation files, for byte-level damage).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import random
import struct
import wave
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DEMO_VIDEOS = ROOT / "demo_data" / "videos"
DEMO_AUDIO = ROOT / "demo_data" / "audio"

#: Stands for the case folder's absolute path in every string of a case.
CASE = "@CASE@"
#: In the planted text secret; must never appear in a shard member.
SECRET_MARK = b"FUZZ-SECRET-5f0c2e-do-not-ship"
#: Markers replaced in serialized text: a list nested 100,000 deep, an integer of 5,000 digits.
DEEP, BIGINT = "__FUZZ_DEEP__", "__FUZZ_BIGINT__"
DEEP_TEXT = "[" * 100_000 + "]" * 100_000
BIGINT_TEXT = "9" * 5000
#: Secret file extension per media kind.
SECRET_EXT = {"image": ".jpg", "video": ".mp4", "audio": ".wav", "pointcloud": ".npy"}


# -- blobs: what one path of a case holds -----------------------------------------------------------

@dataclass
class Raw:
    """A file with these bytes."""
    data: bytes


@dataclass
class Doc:
    """An annotation file: ``kind`` json | jsonl | csv | tsv | parquet, ``value`` the object (json),
    list of records (jsonl, csv, tsv, parquet: dicts). ``post``: byte-level damage applied in order
    after serialization. ``types``/``schema_meta``: parquet column types and schema metadata.
    ``wrap``: ``gz`` or ``zip`` (the serialized bytes compressed; ``post`` applies to the result)."""
    kind: str
    value: Any
    post: List[Callable[[bytes], bytes]] = field(default_factory=list)
    types: Dict[str, Any] = field(default_factory=dict)
    schema_meta: Optional[Dict[bytes, bytes]] = None
    ensure_ascii: bool = True
    wrap: Optional[str] = None


@dataclass
class Link:
    """A symlink to ``target`` (absolute with ``@CASE@``, or relative to the link's folder)."""
    target: str


@dataclass
class Folder:
    """An empty folder."""


@dataclass
class Fifo:
    """A named pipe."""


@dataclass
class Sparse:
    """A sparse file of ``size`` bytes starting with ``head``."""
    size: int
    head: bytes = b""


@dataclass
class Slot:
    """Media bytes that mutations may replace: a file (``rel``) or a value inside a document."""
    kind: str
    rel: Optional[str] = None
    get: Optional[Callable[[], bytes]] = None
    set: Optional[Callable[[bytes], None]] = None


@dataclass
class PathRef:
    """A record field naming a media file of ``kind``. ``set(target)``: write the field(s) so that
    the record names ``target`` (relative to the media root, or absolute with ``@CASE@``); returns
    the media-root-relative or absolute paths the reader will then open (where a secret is
    planted), or None when the field cannot express ``target`` (an int id in a file name
    pattern). ``raw(value)``: store any value (wrong types) in the field."""
    kind: str
    ext: str
    set: Callable[[str], Optional[List[str]]]
    raw: Callable[[Any], None]


@dataclass
class Layout:
    files: Dict[str, Any]
    input: str
    media_root: str = "data"
    options: Dict[str, Any] = field(default_factory=dict)
    records: List[Tuple[Any, Any]] = field(default_factory=list)  # (container, key)
    slots: List[Slot] = field(default_factory=list)
    paths: List[PathRef] = field(default_factory=list)
    docs: List[str] = field(default_factory=list)


@dataclass
class Case:
    fmt: str
    seed: Any
    layout: Layout
    flags: List[str]
    mutations: List[str]

    @property
    def name(self) -> str:
        return f"{self.fmt}-{self.seed}"

    def describe(self) -> str:
        return f"{self.name}: " + ("; ".join(self.mutations) or "no mutation") + \
            (f" [flags: {' '.join(self.flags)}]" if self.flags else "")


# -- media bytes ------------------------------------------------------------------------------------

class Gen:
    """Unique media bytes from one seeded generator (every file of a case differs from every
    other, so a shard member equal to a file outside the media root can only be that file)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.np = np.random.default_rng(rng.getrandbits(32))
        self.n = 0

    def image(self, fmt: Optional[str] = None, size: Optional[Tuple[int, int]] = None) -> bytes:
        fmt = fmt or self.rng.choice(["JPEG", "JPEG", "PNG", "GIF", "WEBP"])
        w, h = size or (self.rng.randint(6, 24), self.rng.randint(6, 24))
        self.n += 1
        arr = self.np.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[0, 0] = (self.n % 256, (self.n >> 8) % 256, 7)
        buf = io.BytesIO()
        im = Image.fromarray(arr)
        if fmt == "GIF":
            im = im.convert("P")
        im.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        return buf.getvalue()

    def video(self) -> bytes:
        self.n += 1
        clip = self.rng.choice(["yoga.mp4", "hitting_baseball.mp4", "silence_girl.mp4"])
        return (DEMO_VIDEOS / clip).read_bytes() + b"uniq%d" % self.n  # trailing bytes: still a clip

    def audio(self) -> bytes:
        self.n += 1
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(self.np.integers(-3000, 3000, 800, dtype=np.int16).tobytes())
        return buf.getvalue()

    def npy(self, shape: Tuple[int, ...] = (16, 3), dtype: str = "<f4") -> bytes:
        self.n += 1
        buf = io.BytesIO()
        np.save(buf, self.np.standard_normal(shape).astype(dtype), allow_pickle=False)
        return buf.getvalue()

    def of(self, kind: str) -> bytes:
        return {"image": self.image, "video": self.video, "audio": self.audio,
                "pointcloud": self.npy}[kind]()


def secret_bytes(kind: str) -> bytes:
    """The planted secret of ``kind``: valid content, so only confinement keeps it out."""
    if kind == "image":
        arr = np.full((9, 11, 3), (250, 3, 160), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=77)
        return buf.getvalue()
    if kind == "video":
        return (DEMO_VIDEOS / "ironman.mp4").read_bytes()  # no case uses this clip inside data/
    if kind == "audio":
        return (DEMO_AUDIO / "dog_bark.wav").read_bytes()
    if kind == "pointcloud":
        buf = io.BytesIO()
        np.save(buf, np.arange(30, dtype=np.float32).reshape(10, 3) + 0.5)
        return buf.getvalue()
    return SECRET_MARK + b"\nroot:x:0:0:root:/root:/bin/bash\n"


def png_with_size(w: int, h: int) -> bytes:
    """A PNG whose header says ``w`` x ``h`` (CRCs right) with a tiny IDAT: a decompression bomb's
    header, or a zero-sized image."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def jpeg_with_size(data: bytes, w: int, h: int) -> bytes:
    """``data`` (a JPEG) with its SOF header patched to ``w`` x ``h``."""
    b = bytearray(data)
    for code in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        i = b.find(code)
        if i > 0:
            b[i + 5:i + 9] = struct.pack(">HH", h, w)
            return bytes(b)
    return bytes(b)


def gif_with_size(data: bytes, w: int, h: int) -> bytes:
    b = bytearray(data)
    b[6:10] = struct.pack("<HH", w, h)
    return bytes(b)


# -- builders: one valid dataset per format ------------------------------------------------------------

class Builder:
    def __init__(self, rng: random.Random, media_root: str = "data"):
        self.rng = rng
        self.gen = Gen(rng)
        self.L = Layout(files={}, input="", media_root=media_root)

    # media files ------------------------------------------------------------------------------
    def media(self, rel: str, kind: str, data: Optional[bytes] = None) -> str:
        """A media file at ``<media root>/rel``; returns ``rel``."""
        full = f"{self.L.media_root}/{rel}"
        self.L.files[full] = Raw(self.gen.of(kind) if data is None else data)
        self.L.slots.append(Slot(kind, rel=full))
        return rel

    def inline(self, kind: str, container: Any, key: Any, encode: str = "raw") -> None:
        """Media bytes stored in ``container[key]`` (``b64``: as a base64 string)."""
        data = self.gen.of(kind)
        enc = (lambda b: base64.b64encode(b).decode()) if encode == "b64" else (lambda b: b)
        dec = (lambda v: base64.b64decode(v)) if encode == "b64" else (lambda v: v)
        container[key] = enc(data)

        def get() -> bytes:
            v = container[key]
            try:
                return dec(v)
            except Exception:
                return b""

        def set_(b: bytes) -> None:
            container[key] = enc(b)
        self.L.slots.append(Slot(kind, get=get, set=set_))

    # record fields naming media ---------------------------------------------------------------
    def path(self, container: Any, key: Any, kind: str, ext: Optional[str] = None,
             prefix: str = "") -> None:
        """``container[key]`` holds a media path (relative to the media root, after ``prefix``)."""
        ext = ext or os.path.splitext(str(container[key]))[1] or SECRET_EXT[kind]

        def set_(target: str) -> List[str]:
            container[key] = target if target.startswith(CASE) else prefix + target
            return [target]

        def raw(v: Any) -> None:
            container[key] = v
        self.L.paths.append(PathRef(kind, ext, set_, raw))

    def pathref(self, kind: str, ext: str, set_: Callable[[str], Optional[List[str]]],
                raw: Callable[[Any], None]) -> None:
        self.L.paths.append(PathRef(kind, ext, set_, raw))

    # documents -------------------------------------------------------------------------------
    def doc(self, rel: str, kind: str, value: Any, records: Any = None, **kw: Any) -> Doc:
        d = Doc(kind, value, **kw)
        self.L.files[rel] = d
        self.L.docs.append(rel)
        if records is not None:
            if isinstance(records, dict):
                self.L.records += [(records, k) for k in records]
            else:
                self.L.records += [(records, i) for i in range(len(records))]
        return d

    def text(self, i: int, what: str = "question") -> str:
        words = ["red", "dog", "car", "tree", "left", "two", "sky", "blue", "cat", "table"]
        return f"{what} {i}: " + " ".join(self.rng.choice(words) for _ in range(self.rng.randint(2, 6)))


def conv(b: Builder, i: int, image_tokens: int = 1, roles=("human", "gpt")) -> List[Dict[str, str]]:
    q = "<image>\n" * image_tokens + b.text(i) + "?"
    return [{"from": roles[0], "value": q}, {"from": roles[1], "value": b.text(i, "answer")}]


def build_llava(b: Builder, subdir: str = "", source_prefix: str = "r") -> None:
    recs: List[Dict[str, Any]] = []
    for i in range(3):
        r: Dict[str, Any] = {"id": f"{source_prefix}{i}"}
        if i == 0 and b.rng.random() < 0.4:  # several images
            r["image"] = [b.media(f"{subdir}img{i}a.jpg", "image"), b.media(f"{subdir}img{i}b.png", "image")]
            b.path(r["image"], 0, "image")
            b.path(r["image"], 1, "image")
            r["conversations"] = conv(b, i, 2)
        elif i < 2:
            r["image"] = b.media(f"{subdir}img{i}.jpg", "image")
            b.path(r, "image", "image")
            r["conversations"] = conv(b, i)
        else:  # text-only
            r["conversations"] = [{"from": "human", "value": b.text(i)}, {"from": "gpt", "value": b.text(i, "a")}]
        recs.append(r)
    if b.rng.random() < 0.5:
        b.doc("data/ann.json", "json", recs, recs)
        b.L.input = "data/ann.json"
    else:
        b.doc("data/ann.jsonl", "jsonl", recs, recs)
        b.L.input = "data/ann.jsonl"


def build_sharegpt4v(b: Builder) -> None:
    build_llava(b, subdir="coco/train2017/", source_prefix="sg")
    for (recs, i) in b.L.records:
        img = recs[i].get("image")
        if isinstance(img, str):  # COCO-style names
            new = f"coco/train2017/{i:012d}.jpg"
            b.L.files[f"data/{new}"] = b.L.files.pop(f"data/{img}")
            for s in b.L.slots:
                if s.rel == f"data/{img}":
                    s.rel = f"data/{new}"
            recs[i]["image"] = new


def build_vision_flan(b: Builder) -> None:
    style = b.rng.choice("abc")
    recs: List[Dict[str, Any]] = []
    for i in range(3):
        p = b.media(f"imgs/vf{i}.jpg", "image")
        if style == "a":
            r = {"id": f"vf_{i}", "image": f"./task_imgs/vf{i}.jpg", "task_name": "ok_vqa",
                 "conversations": [{"from": "human", "value": b.text(i) + "\n<image>"},
                                   {"from": "gpt", "value": b.text(i, "a")}]}
            b.path(r, "image", "image", prefix="")
        elif style == "b":
            r = {"img_path": "./" + p, "prompt": "<image>" + b.text(i), "target": b.text(i, "a"),
                 "task_name": "VQA+x"}
            b.path(r, "img_path", "image")
        else:
            r = {"instance_id": f"inst{i}", "img_path": "./" + p, "instruction": b.text(i) + " Options: yes, no",
                 "input_text": "", "options": ["yes", "no"], "raw_output": "yes", "output": "yes",
                 "dataset_name": "VQA", "task_name": "VQA+yesno"}
            b.path(r, "img_path", "image")
        recs.append(r)
    if style == "a":
        b.doc("data/tasks_web.json", "json", recs, recs)
        b.L.input = "data/tasks_web.json"
    elif style == "b":
        top = {"data": recs}
        b.doc("data/tasks.json", "json", top, recs)
        b.L.input = "data/tasks.json"
    else:
        top = {"data": [recs[:2], recs[2:]]}
        b.doc("data/data.json", "json", top)
        b.L.records += [(top["data"][0], 0), (top["data"][0], 1), (top["data"][1], 0)]
        b.L.input = "data/data.json"


#: MultiInstruct tasks whose templates read more of the record (regions, dialog history, steps).
MULTIINSTRUCT_TASKS = ["VQA_object_presence", "visual_dialog", "region_caption_match",
                       "wikihow_next_step", "commonsense_VQA", "visual_object_region"]


def build_multiinstruct(b: Builder) -> None:
    recs = []
    for i in range(3):
        rel = b.media(f"raw_datasets/MSCOCO2014/train2014/COCO_train2014_{i + 5277:012d}.jpg", "image")
        task = "VQA_object_presence" if i == 0 else b.rng.choice(MULTIINSTRUCT_TASKS)
        r = {"unique_id": f"VQA_{i}", "task_name": task, "image_path": "./" + rel,
             "question": b.text(i), "target_txt": "no", "options": ["no", "yes"],
             "prompt": b.text(i) + " [Options]: no||||yes", "target": "no"}
        if i:
            r["region"] = ["10 20 30 40"]
            r["context"] = ["first step", "second step"]
            r["meta_data"] = {"dialog_hist": [{"q": "is it red", "a": "yes"}],
                              "object_regions": {"subject": ["1 2 3 4"], "object": ["5 6 7 8"]},
                              "relation": "on"}
        b.path(r, "image_path", "image")
        recs.append(r)
    b.doc("data/train.jsonl", "jsonl", recs, recs)
    b.L.input = "data/train.jsonl"


def build_lamm(b: Builder) -> None:
    recs: List[Dict[str, Any]] = []
    for i in range(2):
        r = {"id": f"0000{i}", "image": b.media(f"coco_images/{i:06d}.jpg", "image"),
             "conversations": [{"from": "human", "value": b.text(i)}, {"from": "gpt", "value": b.text(i, "a")}],
             "task_type": "conversation", "src_image": "coco2017"}
        b.path(r, "image", "image")
        recs.append(r)
    r = {"pcl": "./" + b.media("pcl/scene0.npy", "pointcloud"),
         "conversations": [{"from": "human", "value": b.text(7)}, {"from": "gpt", "value": b.text(7, "a")}],
         "src_dataset": "scannet", "src_id": "scene0"}
    b.path(r, "pcl", "pointcloud", prefix="./")
    recs.append(r)
    b.doc("data/LAMM_instruct.json", "json", recs, recs)
    b.L.input = "data/LAMM_instruct.json"


def build_mimic_it(b: Builder) -> None:
    store = b.rng.choice(["json", "parquet", "folder"])
    data: Dict[str, Any] = {}
    ids = [f"XX_IMG_{i}" for i in range(3)]
    for i in range(3):
        data[f"XX_INS_{i:05d}"] = {"instruction": b.text(i), "answer": b.text(i, "a"),
                                   "image_ids": [ids[i]] if i < 2 else [ids[2], ids[0]],
                                   "rel_ins_ids": [f"XX_INS_{(i + 1) % 3:05d}"] if i == 0 else []}
    top = {"meta": {"version": "1"}, "data": data}
    b.doc("data/ann/XX_instructions.json", "json", top, data)
    b.L.input = "data/ann/XX_instructions.json"
    if b.rng.random() < 0.4:  # XX_train.json: ids to train on -> their in-context examples
        train = {"XX_INS_00000": ["XX_INS_00001"], "XX_INS_00002": []}
        b.doc("data/ann/XX_train.json", "json", train, train)
    if store == "folder":
        b.L.media_root = "data/frames"
        for i, iid in enumerate(ids):
            b.media(f"{iid}.jpg", "image")
        for rec in data.values():
            for j in range(len(rec["image_ids"])):
                b.path(rec["image_ids"], j, "image", ext=".jpg")
        return
    store_map: Dict[str, Any] = {}
    for iid in ids:
        b.inline("image", store_map, iid, "b64")
    if store == "json":
        b.doc("data/XX.json", "json", store_map)
    else:
        rows = [{"base64": store_map[k], "__index_level_0__": k} for k in ids]
        # the slots point into store_map; rebuild the rows from it when written
        meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": []}
        d = b.doc("data/XX.parquet", "parquet", rows, types={"base64": "string",
                                                              "__index_level_0__": "string"},
                  schema_meta={b"pandas": json.dumps(meta).encode()})
        d.value = _LiveRows(store_map, ids)


class _LiveRows(list):
    """Parquet rows of a MIMIC-IT store, read from the slot map at write time."""

    def __init__(self, store_map: Dict[str, Any], ids: List[str]):
        super().__init__()
        self.store_map, self.ids = store_map, ids

    def rows(self) -> List[Dict[str, Any]]:
        return [{"base64": self.store_map[k], "__index_level_0__": k} for k in self.ids]


def build_mmc4(b: Builder) -> None:
    docs = []
    for i in range(3):
        texts = ["Intro words.", b.text(i), b.text(i + 1, "more")]
        info: Dict[str, Any] = {"raw_url": f"http://example.com/{i}.jpg", "matched_text_index": 1,
                                "matched_sim": 0.3}
        if i == 2:
            b.inline("image", info, "image_base64", "b64")
        else:
            info["image_name"] = b.media(f"mmc4_{i}.jpg", "image")
            b.path(info, "image_name", "image")
        docs.append({"url": f"http://example.com/doc{i}", "text_list": texts, "image_info": [info],
                     "similarity_matrix": [[0.1, 0.3, 0.2]], "could_have_url_duplicate": 0})
    wrap = b.rng.choice([None, None, "gz", "zip"])
    name = {None: "docs.jsonl", "gz": "docs.jsonl.gz", "zip": "docs.jsonl.zip"}[wrap]
    b.doc(f"data/{name}", "jsonl", docs, docs, wrap=wrap)
    b.L.input = f"data/{name}"


def build_videochat(b: Builder) -> None:
    recs: List[Dict[str, Any]] = []
    r = {"video": b.media("videos/v0.mp4", "video"), "QA": [{"q": b.text(0), "a": b.text(0, "a")},
                                                           {"q": b.text(1), "a": b.text(1, "a")}],
         "start": 1.0, "end": 3.0}
    b.path(r, "video", "video")
    recs.append(r)
    r = {"image": b.media("train2014/COCO_train2014_000000021248.jpg", "image"),
         "QA": [{"q": b.text(2), "a": b.text(2, "a")}]}
    b.path(r, "image", "image")
    recs.append(r)
    r = {"audio": b.media("audio/a0.wav", "audio"), "QA": [{"q": "What sound can you hear?", "a": b.text(3, "a")}]}
    b.path(r, "audio", "audio")
    recs.append(r)
    v = b.media("videos/v1.mp4", "video")
    r = {"video": v, "audio": v, "QA": [{"q": b.text(4), "a": b.text(4, "a")}]}
    b.path(r, "video", "video")
    b.path(r, "audio", "audio", ext=".mp4")
    recs.append(r)
    style = b.rng.choice(["json", "jsonl"])
    b.doc(f"data/instruct.{style}", style, recs, recs)
    b.L.input = f"data/instruct.{style}"


def _webvid_ref(b: Builder, row: Dict[str, Any]) -> None:
    def set_(target: str) -> Optional[List[str]]:
        if not target.endswith(".mp4"):
            return None
        d, name = os.path.split(target)
        row["page_dir"], row["videoid"] = d, name[:-4]
        return [target]

    def raw(v: Any) -> None:
        row["videoid"] = v
    b.pathref("video", ".mp4", set_, raw)


def build_webvid(b: Builder) -> None:
    rows = []
    for i in range(3):
        vid = f"10{i}"
        b.media(f"000001_000050/{vid}.mp4", "video")
        row = {"videoid": vid, "contentUrl": f"https://example.com/{vid}.mp4", "duration": "PT00H00M10S",
               "page_dir": "000001_000050", "name": b.text(i, "caption")}
        _webvid_ref(b, row)
        rows.append(row)
    kind = b.rng.choice(["csv", "csv", "tsv"])
    b.doc(f"data/results_2M_val.{kind}", kind, rows, rows)
    b.L.input = f"data/results_2M_val.{kind}"


def build_instructpix2pix(b: Builder) -> None:
    if b.rng.random() < 0.5:  # seeds layout
        seeds = [["0000000", [11, 12]], ["0000001", [13]]]
        for folder, ss in seeds:
            prompt = {"caption": b.text(1, "caption"), "edit": "make it " + b.rng.choice(["red", "snowy"]),
                      "output": b.text(2, "out"), "url": "http://example.com/x.jpg"}
            b.doc(f"data/{folder}/prompt.json", "json", prompt)
            b.L.records.append(({"p": prompt}, "p"))
            if folder == "0000000" and b.rng.random() < 0.4:
                gen = [{"seed": s, "p2p_threshold": 0.2, "cfg_scale": 7.5} for s in ss]
                b.doc(f"data/{folder}/metadata.jsonl", "jsonl", gen, gen)
            for s in ss:
                b.media(f"{folder}/{s}_0.jpg", "image")
                b.media(f"{folder}/{s}_1.jpg", "image")

        for entry in seeds:
            def set_(target: str, entry: List[Any] = entry) -> Optional[List[str]]:
                d = os.path.dirname(target)
                if not d:
                    return None
                entry[0] = d
                return [f"{d}/{s}_{k}.jpg" for s in entry[1] for k in (0, 1)]

            def raw(v: Any, entry: List[Any] = entry) -> None:
                entry[0] = v
            b.pathref("image", ".jpg", set_, raw)
        b.doc("data/seeds.json", "json", seeds, seeds)
        b.L.input = b.rng.choice(["data", "data/seeds.json"])
        return
    rows = []
    for i in range(3):
        row: Dict[str, Any] = {"input_image": {"bytes": None, "path": None}, "edit_prompt": b.text(i, "edit"),
                               "edited_image": {"bytes": None, "path": None}}
        for col in ("input_image", "edited_image"):
            b.inline("image", row[col], "bytes")

            def set_(target: str, cell: Dict[str, Any] = row[col]) -> List[str]:
                cell["bytes"], cell["path"] = None, target
                return [target]

            def raw(v: Any, row: Dict[str, Any] = row, col: str = col) -> None:
                row[col] = v
            b.pathref("image", ".jpg", set_, raw)
        rows.append(row)
    img_t = "struct"
    b.doc("data/train-00000-of-00001.parquet", "parquet", rows, rows,
          types={"input_image": img_t, "edit_prompt": "string", "edited_image": img_t})
    b.L.input = "data/train-00000-of-00001.parquet"


# held-out evaluation sets (layouts of docs/data_formats and tests/test_data_heldout.py) -----------

def build_vsr(b: Builder) -> None:
    recs = []
    for i in range(3):
        name = b.media(f"{451431 + i:012d}.jpg", "image")
        r = {"image": name, "image_link": "http://images.cocodataset.org/train2017/" + name,
             "caption": f"The cat is {b.rng.choice(['on', 'under'])} the table {i}.", "label": i % 2,
             "relation": "on", "annotator_id": 29, "vote_true_validator_id": "[2, 9]",
             "vote_false_validator_id": "[3]"}
        b.path(r, "image", "image")
        recs.append(r)
    b.doc("data/test.jsonl", "jsonl", recs, recs)
    b.L.input = "data/test.jsonl"


def build_scienceqa(b: Builder) -> None:
    b.L.media_root = "data/images"
    probs: Dict[str, Any] = {}
    for i, pid in enumerate(["4", "11", "12"]):
        probs[pid] = {"question": b.text(i), "choices": ["chiasmus", "apostrophe"], "answer": i % 2,
                      "hint": "Sing, O goddess." if i == 0 else "", "image": "image.png",
                      "task": "closed choice", "grade": "grade11", "subject": "language science",
                      "split": "test"}
        b.media(f"test/{pid}/image.png", "image")

        def set_(target: str, p: Dict[str, Any] = probs[pid], pid: str = pid) -> List[str]:
            p["image"] = target if target.startswith(CASE) else "../../" + target
            return [target]

        def raw(v: Any, p: Dict[str, Any] = probs[pid]) -> None:
            p["image"] = v
        b.pathref("image", ".png", set_, raw)
    b.doc("data/problems.json", "json", probs, probs)
    b.L.input = "data/problems.json"
    if b.rng.random() < 0.4:  # the real release's split file, found beside problems.json
        splits = {"train": [], "val": [], "test": ["4", "11", "12"]}
        b.doc("data/pid_splits.json", "json", splits, splits)


def build_gqa(b: Builder) -> None:
    if b.rng.random() < 0.5:
        data: Dict[str, Any] = {}
        for i in range(3):
            b.media(f"n{2415801 + i}.jpg", "image")
            rec = {"question": b.text(i), "imageId": f"n{2415801 + i}", "answer": "no",
                   "fullAnswer": "No, it is clear.", "types": {"structural": "verify"}}
            data[str(201307251 + i)] = rec

            def set_(target: str, rec: Dict[str, Any] = rec) -> Optional[List[str]]:
                if not target.endswith(".jpg"):
                    return None
                rec["imageId"] = target[:-4]
                return [target]

            def raw(v: Any, rec: Dict[str, Any] = rec) -> None:
                rec["imageId"] = v
            b.pathref("image", ".jpg", set_, raw)
        b.doc("data/testdev_balanced_questions.json", "json", data, data)
        b.L.input = "data/testdev_balanced_questions.json"
    else:
        recs = []
        for i in range(3):
            r = {"image": b.media(f"g{i}.jpg", "image"), "question": b.text(i), "answer": "yes",
                 "question_id": 7 + i}
            b.path(r, "image", "image")
            recs.append(r)
        b.doc("data/gqa_list.json", "json", recs, recs)
        b.L.input = "data/gqa_list.json"


def build_hatefulmemes(b: Builder) -> None:
    recs = []
    for i in range(3):
        r = {"id": 42953 + i, "img": b.media(f"img/{42953 + i}.png", "image"), "label": i % 2,
             "text": b.text(i, "meme")}
        b.path(r, "img", "image")
        recs.append(r)
    b.doc("data/dev_seen.jsonl", "jsonl", recs, recs)
    b.L.input = "data/dev_seen.jsonl"


def build_flickr30k(b: Builder) -> None:
    recs = []
    for i in range(3):
        r = {"image": b.media(f"flickr30k-images/{1007129816 + i}.jpg", "image"),
             "caption": [b.text(i, "caption"), b.text(i + 1, "caption")]}
        b.path(r, "image", "image")
        recs.append(r)
    b.doc("data/flickr30k_test.json", "json", recs, recs)
    b.L.input = "data/flickr30k_test.json"


def build_nocaps(b: Builder) -> None:
    images, anns = [], []
    for i in range(3):
        im = {"id": i, "file_name": b.media(f"{i:016x}.jpg", "image"), "domain": "in-domain"}
        b.path(im, "file_name", "image")
        images.append(im)
        anns.append({"image_id": i, "caption": b.text(i, "caption"), "id": 2 * i})
        anns.append({"image_id": i, "caption": b.text(i + 5, "caption"), "id": 2 * i + 1})
    top = {"images": images, "annotations": anns}
    b.doc("data/nocaps_val_4500_captions.json", "json", top)
    b.L.records += [(images, i) for i in range(3)] + [(anns, i) for i in range(len(anns))]
    b.L.input = "data/nocaps_val_4500_captions.json"


def build_visdial(b: Builder) -> None:
    answers = ["yes", "no", "2", "a red one", "maybe"]
    questions = ["is the photo in color", "how many people", "is it sunny"]
    dialogs = []
    for i in range(2):
        b.media(f"VisualDialog_val2018_{185565 + i:012d}.jpg", "image")
        dialogs.append({"image_id": 185565 + i, "caption": b.text(i, "caption"), "dialog": [
            {"question": 0, "answer": 0, "answer_options": [1, 0, 4, 3], "gt_index": 1},
            {"question": 1, "answer": 2, "answer_options": [2, 3, 0, 1], "gt_index": 0}]})
    top = {"version": "1.0", "split": "val2018",
           "data": {"questions": questions, "answers": answers, "dialogs": dialogs}}
    b.doc("data/visdial_1.0_val.json", "json", top)
    b.L.input = "data/visdial_1.0_val.json"
    b.L.records += [(dialogs, 0), (dialogs, 1), (dialogs[0]["dialog"], 0), (dialogs[1]["dialog"], 1),
                    (top, "data")]
    for dl in dialogs:
        def raw(v: Any, dl: Dict[str, Any] = dl) -> None:
            dl["image_id"] = v
        b.pathref("image", ".jpg", lambda target: None, raw)


def build_iconqa(b: Builder) -> None:
    recs = []
    for i in range(3):
        r = {"image": b.media(f"test/choose_txt/{12 + i}/image.png", "image"), "question": b.text(i),
             "choices": ["5", "7", "6"], "answer": i % 3, "question_id": str(12 + i),
             "ques_type": "choose_txt"}
        b.path(r, "image", "image")
        recs.append(r)
    b.doc("data/annotations_test.json", "json", recs, recs)
    b.L.input = "data/annotations_test.json"


def build_videoqa(b: Builder, pattern: bool) -> None:
    recs = []
    for i in range(3):
        if pattern and i == 0:
            b.media(f"video{7010 + i}.mp4", "video")
            r = {"answer": "sing", "id": i, "question": b.text(i), "video_id": 7010 + i}

            def raw(v: Any, r: Dict[str, Any] = r) -> None:
                r["video_id"] = v
            b.pathref("video", ".mp4", lambda target: None, raw)
        else:
            r = {"video": b.media(f"vid{i}.avi" if not pattern else f"vid{i}.mp4", "video"),
                 "question": b.text(i), "answer": "man", "question_id": i}
            b.path(r, "video", "video")
        recs.append(r)
    b.doc("data/qa_test.json", "json", recs, recs)
    b.L.input = "data/qa_test.json"


def build_ivqa(b: Builder) -> None:
    rows = []
    for i in range(3):
        vid = f"abc{i}"
        b.media(f"{vid}_10_20.mp4", "video")
        row = {"video_id": vid, "start": "10", "end": "20", "question": b.text(i), "answer1": "guitar",
               "answer2": "guitar", "answer3": "bass", "answer4": "guitar", "answer5": ""}

        def set_(target: str, row: Dict[str, Any] = row) -> Optional[List[str]]:
            if not target.endswith(".mp4"):
                return None
            row["video_id"] = target[:-4]
            return [f"{target[:-4]}_{row['start']}_{row['end']}.mp4"]

        def raw(v: Any, row: Dict[str, Any] = row) -> None:
            row["video_id"] = v
        b.pathref("video", ".mp4", set_, raw)
        rows.append(row)
    b.doc("data/test.csv", "csv", rows, rows)
    b.L.input = "data/test.csv"


def build_vqav2(b: Builder) -> None:
    qs, anns = [], []
    for i in range(3):
        iid = 262148 + i
        b.media(f"COCO_val2014_{iid:012d}.jpg", "image")
        qs.append({"image_id": iid, "question": b.text(i), "question_id": iid * 1000})
        anns.append({"question_id": iid * 1000, "image_id": iid, "multiple_choice_answer": "down",
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                 for j, a in enumerate(["down"] * 4 + ["at table"] * 5 + ["board"])],
                     "answer_type": "other", "question_type": "where is"})

        def raw(v: Any, q: Dict[str, Any] = qs[-1]) -> None:
            q["image_id"] = v
        b.pathref("image", ".jpg", lambda target: None, raw)
    top_q = {"data_subtype": "val2014", "questions": qs}
    b.doc("data/v2_OpenEnded_mscoco_val2014_questions.json", "json", top_q, qs)
    b.doc("data/v2_mscoco_val2014_annotations.json", "json", {"annotations": anns}, anns)
    b.L.input = "data/v2_OpenEnded_mscoco_val2014_questions.json"


def build_textvqa(b: Builder) -> None:
    recs = []
    for i in range(3):
        iid = f"{0x54c91397f2fe05 + i:016x}"
        b.media(f"{iid}.jpg", "image")
        r = {"question": b.text(i), "image_id": iid, "question_id": i,
             "answers": ["nokia"] * 9 + ["nokia lumia"], "set_name": "val"}
        if i == 0:
            r["ocr_tokens"] = ["NOKIA", "Lumia"]

        def set_(target: str, r: Dict[str, Any] = r) -> Optional[List[str]]:
            if not target.endswith(".jpg"):
                return None
            r["image_id"] = target[:-4]
            return [target]

        def raw(v: Any, r: Dict[str, Any] = r) -> None:
            r["image_id"] = v
        b.pathref("image", ".jpg", set_, raw)
        recs.append(r)
    top = {"dataset_name": "textvqa", "data": recs}
    b.doc("data/TextVQA_0.5.1_val.json", "json", top, recs)
    b.L.input = "data/TextVQA_0.5.1_val.json"


def build_vizwiz(b: Builder) -> None:
    recs = []
    for i in range(3):
        r = {"image": b.media(f"VizWiz_val_{i:08d}.jpg", "image"), "question": b.text(i),
             "answers": [{"answer": a, "answer_confidence": "yes"} for a in ["soup"] * 6 + ["tomato soup"] * 4],
             "answer_type": "other", "answerable": 1}
        b.path(r, "image", "image")
        recs.append(r)
    b.doc("data/val.json", "json", recs, recs)
    b.L.input = "data/val.json"


BUILDERS: Dict[str, Callable[[Builder], None]] = {
    "llava": build_llava, "sharegpt4v": build_sharegpt4v, "vision-flan": build_vision_flan,
    "multiinstruct": build_multiinstruct, "lamm": build_lamm, "mimic-it": build_mimic_it,
    "mmc4": build_mmc4, "videochat": build_videochat, "webvid": build_webvid,
    "instructpix2pix": build_instructpix2pix, "heldout-vsr": build_vsr,
    "heldout-scienceqa": build_scienceqa, "heldout-gqa": build_gqa,
    "heldout-hatefulmemes": build_hatefulmemes, "heldout-flickr30k": build_flickr30k,
    "heldout-nocaps": build_nocaps, "heldout-visdial": build_visdial,
    "heldout-iconqa": build_iconqa, "heldout-msrvtt-qa": lambda b: build_videoqa(b, True),
    "heldout-msvd-qa": lambda b: build_videoqa(b, False), "heldout-ivqa": build_ivqa,
    "heldout-vqav2": build_vqav2, "heldout-textvqa": build_textvqa, "heldout-vizwiz": build_vizwiz,
}


# -- mutations ---------------------------------------------------------------------------------------

def _nested(depth: int) -> Any:
    v: Any = {"leaf": "x"}
    for _ in range(depth):
        v = {"a": v}
    return v


#: Values a field may be retyped to.
WEIRD_VALUES: List[Any] = [
    None, 0, -1, 2 ** 63, 1.5, float("nan"), True, False, "", "   ", "x", [], {}, [1, "a"],
    {"a": {"b": None}}, ["<image>"], "\ud800", "A" * 300_000, DEEP, BIGINT, "deep200",
]
#: Strings for text fields.
WEIRD_TEXT: List[str] = [
    "", "   ", "\n\t", "</s>", "<image>", "<image>\n<image>", "<|im_end|>", "<video>", "<audio>",
    "<pointcloud>", "\x00", "a\x00b", "\ud800", "x\udfffy", "\u202eevil", "é" * 3, "A" * 300_000,
    "line\r\nbreak", "null", "\ufeffbom", "\x1b[31mred",
]
#: Media path values that are junk (not a file inside the root).
JUNK_PATHS: List[Any] = [
    "", " ", "\x00", "a\x00b.jpg", "x" * 5000 + ".jpg", "/", ".", "..", "~/x.jpg",
    "http://example.com/a.jpg", "file:///etc/passwd", "C:\\x.jpg", "\u202egpj.exe", "/dev/zero",
    "/proc/self/environ", "/etc/passwd", "/etc", 0, 1.5, None, True, [], {}, ["a.jpg"],
    {"path": "x.jpg"}, "%s/outside" % CASE,
]


def _dicts(v: Any, depth: int = 0) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    if depth > 6:
        return out
    if isinstance(v, dict):
        if v:
            out.append(v)
        for x in v.values():
            out += _dicts(x, depth + 1)
    elif isinstance(v, list):
        for x in v:
            out += _dicts(x, depth + 1)
    return out


def _weird(rng: random.Random) -> Any:
    v = rng.choice(WEIRD_VALUES)
    return _nested(200) if v == "deep200" else v


def _pick_record(L: Layout, rng: random.Random) -> Optional[Tuple[Any, Any]]:
    live = [(c, k) for c, k in L.records if _has(c, k)]
    return rng.choice(live) if live else None


def _has(c: Any, k: Any) -> bool:
    try:
        c[k]
        return True
    except (KeyError, IndexError, TypeError):
        return False


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:30] + f"...({len(r)} chars)"


def m_drop_field(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    rec = _pick_record(L, rng)
    ds = _dicts(rec[0][rec[1]]) if rec else []
    if not ds:
        return None
    d = rng.choice(ds)
    k = rng.choice(list(d))
    del d[k]
    return f"drop field {k!r}"


def m_retype_field(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    rec = _pick_record(L, rng)
    ds = _dicts(rec[0][rec[1]]) if rec else []
    if not ds:
        return None
    d = rng.choice(ds)
    k = rng.choice(list(d))
    v = _weird(rng)
    d[k] = v
    return f"field {k!r} = {_short(v) if v is not DEEP else 'nested 100000 deep'}"


def m_weird_text(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    rec = _pick_record(L, rng)
    slots = [(d, k) for d in (_dicts(rec[0][rec[1]]) if rec else []) for k, v in d.items()
             if isinstance(v, str)]
    if not slots:
        return None
    d, k = rng.choice(slots)
    t = rng.choice(WEIRD_TEXT)
    d[k] = t if rng.random() < 0.5 else d[k] + t
    return f"text {k!r} <- {_short(t)}"


def m_replace_record(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    rec = _pick_record(L, rng)
    if rec is None:
        return None
    v = rng.choice([None, 1, "record", [], [1, 2], True, 2.5, {}])
    rec[0][rec[1]] = v
    return f"record {rec[1]!r} = {v!r}"


def m_duplicate_record(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    rec = _pick_record(L, rng)
    if rec is None:
        return None
    c, k = rec
    if isinstance(c, list):
        c.append(copy.deepcopy(c[k]))
    elif isinstance(c, dict):
        c[f"{k}_dup"] = copy.deepcopy(c[k])
    return f"duplicate record {k!r}"


def m_path_escape(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    refs = L.paths
    if not refs:
        return None
    ref = rng.choice(refs)
    ext = ref.ext
    style = rng.choice(["dotdot", "abs", "deep-dotdot", "link-file", "link-dir", "dot-slash-dotdot",
                        "link-relative"])
    up = "../" * (L.media_root.count("/") + 1)  # from the media root to the case folder
    if style == "dotdot":
        target = f"{up}outside/secret{ext}"
    elif style == "abs":
        target = f"{CASE}/outside/secret{ext}"
    elif style == "deep-dotdot":
        target = f"sub/../{up}outside/secret{ext}"
    elif style == "dot-slash-dotdot":
        target = f"./{up}outside/secret{ext}"
    elif style == "link-file":
        target = f"evil{ext}"
        L.files[f"{L.media_root}/evil{ext}"] = Link(f"{CASE}/outside/secret{ext}")
    elif style == "link-relative":
        target = f"evil_rel{ext}"
        L.files[f"{L.media_root}/evil_rel{ext}"] = Link(f"{up}outside/secret{ext}")
    else:
        target = f"evil_dir/secret{ext}"
        L.files[f"{L.media_root}/evil_dir"] = Link(f"{CASE}/outside")
    opened = ref.set(target)
    if opened is None:
        return None
    L.files[f"outside/secret{ext}"] = Raw(secret_bytes(ref.kind))
    for p in opened:  # plant the secret wherever the reader will look
        rel = p[len(CASE) + 1:] if p.startswith(CASE) else os.path.normpath(f"{L.media_root}/{p}")
        if rel.startswith("outside/"):
            L.files[rel] = Raw(secret_bytes(ref.kind))
    return f"{ref.kind} path -> {style} {target!r}"


def m_path_nonutf8(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    """A media file whose name is not UTF-8 (byte 0xff; Python spells it U+DCFF with
    surrogateescape), named by the record: it exists, but its path cannot be written as UTF-8."""
    if not L.paths:
        return None
    ref = rng.choice(L.paths)
    name = f"bad\udcff{rng.randrange(100)}{ref.ext}"
    opened = ref.set(name)
    if opened is None:
        return None
    for p in opened:
        if not p.startswith(CASE):
            L.files[os.path.normpath(f"{L.media_root}/{p}")] = Raw(g.of(ref.kind))
    return f"{ref.kind} path -> non-UTF-8 file name {name!r}"


def m_path_junk(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    if not L.paths:
        return None
    ref = rng.choice(L.paths)
    v = rng.choice(JUNK_PATHS)
    ref.raw(v)
    return f"{ref.kind} path = {_short(v)}"


def _media_variant(kind: str, data: bytes, rng: random.Random, g: Gen) -> Tuple[bytes, str]:
    n = len(data)
    choices = ["zero", "truncate", "header", "drop-tail", "corrupt", "append", "text", "other-kind",
               "html"]
    if kind == "image":
        choices += ["huge-png", "huge-jpeg", "huge-gif", "zero-size-png", "truncate", "drop-tail"]
    if kind == "pointcloud":
        choices += ["ply", "npy-2d-bad", "npy-object", "npy-huge-shape", "npz"]
    v = rng.choice(choices)
    if v == "zero":
        return b"", v
    if v == "truncate":
        cut = rng.randint(1, max(1, n - 1))
        return data[:cut], f"truncate to {cut}/{n}"
    if v == "header":
        k = rng.choice([2, 4, 12, 16, 64, 200])
        return data[:k], f"first {k} bytes"
    if v == "drop-tail":
        k = rng.randint(1, 3)
        return data[:-k], f"drop last {k} bytes"
    if v == "corrupt":
        b = bytearray(data)
        i = rng.randint(n // 4, max(n // 4, 3 * n // 4 - 1))
        for j in range(i, min(n, i + rng.randint(1, 64))):
            b[j] = rng.randrange(256)
        return bytes(b), "bytes overwritten in the middle"
    if v == "append":
        return data + (b"\0" * rng.randint(1, 64) if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(64))), v
    if v == "text":
        return b"just some text, not media\n" * 3, v
    if v == "html":
        return b"<html><body>404 Not Found</body></html>", v
    if v == "other-kind":
        other = rng.choice([k for k in ("image", "video", "audio", "pointcloud") if k != kind])
        return g.of(other), f"{other} bytes"
    if v == "huge-png":
        return png_with_size(100_000, 100_000), v
    if v == "zero-size-png":
        return png_with_size(0, 0), v
    if v == "huge-jpeg":
        return jpeg_with_size(g.image("JPEG"), 60_000, 60_000), v
    if v == "huge-gif":
        return gif_with_size(g.image("GIF"), 65_535, 65_535), v
    if v == "ply":
        return b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n", v
    if v == "npy-2d-bad":
        return g.npy((5, 2)), v
    if v == "npy-object":
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return buf.getvalue(), v
    if v == "npy-huge-shape":
        head = g.npy((4, 3))
        return head.replace(b"(4, 3)", b"(400000000000, 3)".ljust(6)), v
    buf = io.BytesIO()
    np.savez(buf, points=g.np.standard_normal((8, 3)).astype(np.float32))
    return buf.getvalue(), v


def m_media_bytes(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    slots = [s for s in L.slots if s.rel is None or isinstance(L.files.get(s.rel), Raw)]
    if not slots:
        return None
    s = rng.choice(slots)
    data = L.files[s.rel].data if s.rel else s.get()
    new, what = _media_variant(s.kind, data, rng, g)
    if s.rel:
        L.files[s.rel] = Raw(new)
    else:
        s.set(new)
    return f"{s.kind} {s.rel or 'inline'}: {what}"


def m_media_file(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    slots = [s for s in L.slots if s.rel is not None and s.rel in L.files]
    if not slots:
        return None
    s = rng.choice(slots)
    ext = SECRET_EXT[s.kind]
    v = rng.choice(["link-secret", "link-secret-text", "link-dangling", "link-loop", "folder",
                    "fifo", "delete", "sparse-huge", "link-dir-out", "link-inside"])
    if v == "link-secret":
        L.files[f"outside/secret{ext}"] = Raw(secret_bytes(s.kind))
        L.files[s.rel] = Link(f"{CASE}/outside/secret{ext}")
    elif v == "link-secret-text":
        L.files["outside/secret.txt"] = Raw(secret_bytes("text"))
        L.files[s.rel] = Link(f"{CASE}/outside/secret.txt")
    elif v == "link-dangling":
        L.files[s.rel] = Link(f"{CASE}/outside/nothing-here{ext}")
    elif v == "link-loop":
        L.files[s.rel] = Link(os.path.basename(s.rel))
    elif v == "folder":
        L.files[s.rel] = Folder()
    elif v == "fifo":
        L.files[s.rel] = Fifo()
    elif v == "delete":
        del L.files[s.rel]
    elif v == "sparse-huge":
        cap = {"image": 64 << 20, "video": 2 << 30, "audio": 512 << 20, "pointcloud": 1 << 30}[s.kind]
        head = L.files[s.rel].data[:4096] if isinstance(L.files[s.rel], Raw) else b""
        L.files[s.rel] = Sparse(cap + 1, head)
    elif v == "link-inside":  # a symlink that stays inside the root: allowed
        others = [o for o in L.slots if o.kind == s.kind and o.rel and o.rel != s.rel
                  and isinstance(L.files.get(o.rel), Raw)]
        if not others:
            return None
        L.files[s.rel] = Link(f"{CASE}/{rng.choice(others).rel}")
    else:  # the file's folder is moved out of the root and replaced by a symlink to it
        d = os.path.dirname(s.rel)
        if d == L.media_root or not d.startswith(L.media_root + "/"):
            return None
        if any(isinstance(b, Doc) and k.startswith(d + "/") for k, b in L.files.items()) or \
                L.input == d or any(k == d for k in L.files):
            return None
        moved = f"outside/moved/{d[len(L.media_root) + 1:]}"
        for k in [k for k in L.files if k.startswith(d + "/")]:
            L.files[moved + k[len(d):]] = L.files.pop(k)
        L.files[d] = Link(f"{CASE}/{moved}")
    return f"{s.kind} file {s.rel}: {v}"


def m_doc_bytes(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    docs = [r for r in L.docs if isinstance(L.files.get(r), Doc)]
    if not docs:
        return None
    rel = rng.choice(docs)
    d: Doc = L.files[rel]
    text_doc = d.kind in ("json", "jsonl", "csv", "tsv") and d.wrap is None
    choices = ["truncate", "empty", "garbage", "jpeg", "flip"]
    if text_doc:
        choices += ["bad-utf8", "nul", "bom", "crlf", "latin1", "no-final-newline", "blank-lines"]
    if d.kind in ("csv", "tsv"):
        choices += ["unclosed-quote", "ragged", "huge-field", "header-only", "dup-header"]
    if d.kind == "json" and d.ensure_ascii:
        choices += ["raw-utf8"]
    v = rng.choice(choices)
    pos_frac = rng.random()

    def at(b: bytes) -> int:
        return int(len(b) * pos_frac)

    if v == "raw-utf8":  # write non-ASCII (and lone surrogates) as raw bytes
        d.ensure_ascii = False
        return f"{rel}: {v}"
    fn: Callable[[bytes], bytes]
    if v == "truncate":
        fn = lambda b: b[:at(b)]
    elif v == "empty":
        fn = lambda b: b""
    elif v == "garbage":
        junk = bytes(rng.randrange(256) for _ in range(200))
        fn = lambda b: junk
    elif v == "jpeg":
        img = g.image("JPEG")
        fn = lambda b: img
    elif v == "flip":
        k = rng.randint(1, 5)
        seeds = [rng.random() for _ in range(k)]
        vals = [rng.randrange(256) for _ in range(k)]

        def fn(b: bytes) -> bytes:
            bb = bytearray(b)
            for s, x in zip(seeds, vals):
                if bb:
                    bb[int(s * (len(bb) - 1))] = x
            return bytes(bb)
    elif v == "bad-utf8":
        bad = rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80"])
        fn = lambda b: b[:at(b)] + bad + b[at(b):]
    elif v == "nul":
        fn = lambda b: b[:at(b)] + b"\x00" + b[at(b):]
    elif v == "bom":
        fn = lambda b: b"\xef\xbb\xbf" + b
    elif v == "crlf":
        fn = lambda b: b.replace(b"\n", b"\r\n")
    elif v == "latin1":
        fn = lambda b: b.decode("utf-8", "replace").encode("latin-1", "replace") + b"caf\xe9"
    elif v == "no-final-newline":
        fn = lambda b: b.rstrip(b"\n")
    elif v == "blank-lines":
        fn = lambda b: b"\n\n" + b.replace(b"\n", b"\n\n \n")
    elif v == "unclosed-quote":
        fn = lambda b: b.replace(b"\n", b'\n"', 2).replace(b'\n"', b"\n", 1)
    elif v == "ragged":
        fn = lambda b: b.replace(b"\n", b",extra,extra\n", 2).replace(b",extra,extra\n", b"\n", 1)
    elif v == "huge-field":
        fn = lambda b: b.rstrip(b"\n") + b"\n" + b"x" * 200_000 + b"," * 3 + b"\n"
    elif v == "header-only":
        fn = lambda b: b.split(b"\n", 1)[0] + b"\n"
    else:  # dup-header
        fn = lambda b: b.split(b"\n", 1)[0] + b"\n" + b
    d.post.append(fn)
    return f"{rel}: {v}"


def m_doc_delete(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    docs = [r for r in L.docs if r != L.input and r in L.files]
    if not docs:
        return None
    rel = rng.choice(docs)
    L.files[rel] = Folder() if rng.random() < 0.3 else None
    if L.files[rel] is None:
        del L.files[rel]
        return f"{rel}: deleted"
    return f"{rel}: a folder"


def m_deep_record(L: Layout, rng: random.Random, g: Gen) -> Optional[str]:
    rec = _pick_record(L, rng)
    if rec is None:
        return None
    c, k = rec
    if isinstance(c[k], dict):
        c[k]["extra_deep"] = DEEP if rng.random() < 0.7 else _nested(rng.choice([100, 400]))
        return f"record {k!r} gets a deeply nested field"
    c[k] = DEEP
    return f"record {k!r} = nested 100000 deep"


#: name -> (mutation, weight)
MUTATIONS: Dict[str, Tuple[Callable[[Layout, random.Random, Gen], Optional[str]], int]] = {
    "drop-field": (m_drop_field, 3), "retype-field": (m_retype_field, 4),
    "weird-text": (m_weird_text, 3), "replace-record": (m_replace_record, 1),
    "duplicate-record": (m_duplicate_record, 1), "deep-record": (m_deep_record, 1),
    "path-escape": (m_path_escape, 5), "path-junk": (m_path_junk, 3),
    "path-nonutf8": (m_path_nonutf8, 1),
    "media-bytes": (m_media_bytes, 6), "media-file": (m_media_file, 4),
    "doc-bytes": (m_doc_bytes, 4), "doc-delete": (m_doc_delete, 1),
}

#: Extra ``mmit convert`` flags some cases get.
FLAG_CHOICES: List[List[str]] = [
    ["--check", "decode"], ["--shard-size", "1"], ["--max-records", "2"], ["--sample-rate", "0.5"],
    ["--missing", "error"], ["--resize-max-side", "8"], ["--reencode", "png"],
    ["--reader-option", 'max_media_bytes={"image": 1500, "video": 20000}'],
]


def make_case(fmt: str, seed: Any, mutations: Optional[List[str]] = None,
              flags: Optional[List[str]] = None) -> Case:
    """The case ``(fmt, seed)``: the format's valid dataset, then ``mutations`` (names of
    :data:`MUTATIONS`; default: 1-3 drawn by weight, seed 0 of every format has none) and
    ``flags`` (default: drawn for about a third of the cases)."""
    rng = random.Random(f"mmit-fuzz:{fmt}:{seed}")
    b = Builder(rng)
    BUILDERS[fmt](b)
    L = b.L
    done: List[str] = []
    if mutations is None:
        names = list(MUTATIONS)
        weights = [MUTATIONS[n][1] for n in names]
        todo = [] if seed == 0 else rng.choices(names, weights, k=rng.choice([1, 1, 2, 2, 3]))
    else:
        todo = list(mutations)
    for name in todo:
        for _ in range(4):  # a mutation may not apply to this layout: draw again
            desc = MUTATIONS[name][0](L, rng, b.gen)
            if desc is not None:
                done.append(desc)
                break
    if flags is None:
        flags = [] if seed == 0 or rng.random() < 0.65 else list(rng.choice(FLAG_CHOICES))
    return Case(fmt, seed, L, list(flags), done)


# -- writing a case ------------------------------------------------------------------------------------

def _subst(v: Any, case_dir: str, depth: int = 0) -> Any:
    if isinstance(v, str):
        return v.replace(CASE, case_dir)
    if depth > 32:  # deeply nested junk holds no path
        return v
    if isinstance(v, list):
        return [_subst(x, case_dir, depth + 1) for x in v]
    if isinstance(v, dict):
        return {(_subst(k, case_dir) if isinstance(k, str) else k): _subst(x, case_dir, depth + 1)
                for k, x in v.items()}
    return v


def _json_text(v: Any, ensure_ascii: bool) -> bytes:
    text = json.dumps(v, ensure_ascii=ensure_ascii)
    text = text.replace(f'"{DEEP}"', DEEP_TEXT).replace(f'"{BIGINT}"', BIGINT_TEXT)
    return text.encode("utf-8", "surrogatepass")


def _cell_text(v: Any) -> str:
    if isinstance(v, str):
        return v.replace(DEEP, DEEP_TEXT).replace(BIGINT, BIGINT_TEXT)
    return json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else str(v))


def _csv_bytes(rows: List[Any], delimiter: str) -> bytes:
    import csv
    header: List[str] = []
    for r in rows:
        if isinstance(r, dict):
            for k in r:
                if k not in header:
                    header.append(k)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        if isinstance(r, dict):
            w.writerow([_cell_text(r.get(k)) for k in header])
        else:
            w.writerow([_cell_text(r)])
    return buf.getvalue().encode("utf-8", "surrogatepass")


def _arrow_column(values: List[Any], kind: Optional[str]) -> Any:
    import pyarrow as pa
    values = [v.replace(DEEP, DEEP_TEXT) if isinstance(v, str) else v for v in values]
    typ = {"string": pa.string(), "struct": pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
           None: None}.get(kind)
    for attempt in (typ, None):
        try:
            return pa.array(values, attempt) if attempt is not None else pa.array(values)
        except Exception:
            continue
    return pa.array([None if v is None else repr(v)[:1000] for v in values], pa.string())


def _parquet_bytes(d: Doc) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = d.value.rows() if isinstance(d.value, _LiveRows) else d.value
    cols: List[str] = []
    for r in rows:
        if isinstance(r, dict):
            for k in r:
                if k not in cols:
                    cols.append(k)
    table = pa.table({c: _arrow_column([r.get(c) if isinstance(r, dict) else None for r in rows],
                                       d.types.get(c)) for c in cols} or {"empty": pa.array([], pa.string())})
    if d.schema_meta:
        table = table.replace_schema_metadata(d.schema_meta)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=2)
    return buf.getvalue()


def doc_bytes(d: Doc, case_dir: str) -> bytes:
    value = d.value if isinstance(d.value, _LiveRows) else _subst(d.value, case_dir)
    if d.kind == "json":
        data = _json_text(value, d.ensure_ascii)
    elif d.kind == "jsonl":
        data = b"".join(_json_text(r, d.ensure_ascii) + b"\n" for r in value)
    elif d.kind in ("csv", "tsv"):
        data = _csv_bytes(value, "," if d.kind == "csv" else "\t")
    else:
        data = _parquet_bytes(Doc(d.kind, value if not isinstance(d.value, _LiveRows) else d.value,
                                  types=d.types, schema_meta=d.schema_meta))
    if d.wrap == "gz":
        import gzip
        data = gzip.compress(data, mtime=0)
    elif d.wrap == "zip":
        import zipfile
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(zipfile.ZipInfo("docs.jsonl", (2020, 1, 1, 0, 0, 0)), data,
                       compress_type=zipfile.ZIP_DEFLATED)
        data = buf.getvalue()
    for fn in d.post:
        data = fn(data)
    return data


def write_case(case: Case, case_dir: Path) -> None:
    """Create the case's files under ``case_dir`` (which must not exist yet)."""
    base = str(case_dir.resolve())
    L = case.layout
    (case_dir / "outside").mkdir(parents=True)
    (case_dir / L.media_root).mkdir(parents=True, exist_ok=True)
    # the secrets are always there, whether or not a record points at them
    for kind, ext in list(SECRET_EXT.items()) + [("text", ".txt")]:
        p = case_dir / "outside" / f"secret{ext}"
        p.write_bytes(secret_bytes(kind))
    for rel in sorted(L.files, key=lambda r: (isinstance(L.files[r], Link), r)):
        blob = L.files[rel]
        p = case_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() or p.is_file():
            p.unlink()
        if isinstance(blob, Raw):
            p.write_bytes(blob.data)
        elif isinstance(blob, Doc):
            p.write_bytes(doc_bytes(blob, base))
        elif isinstance(blob, Link):
            p.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(blob.target.replace(CASE, base), p)
        elif isinstance(blob, Folder):
            p.mkdir(exist_ok=True)
        elif isinstance(blob, Fifo):
            os.mkfifo(p)
        elif isinstance(blob, Sparse):
            with open(p, "wb") as f:
                f.write(blob.head)
                f.truncate(blob.size)
