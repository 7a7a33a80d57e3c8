"""The fast paths of `mmit convert` (issue 17) decide exactly as the slow code they replace:
the shard tar writer writes `tarfile`'s bytes, the header-only `.npy` check refuses what `np.load`
refuses, the one-pass base64 decode returns what the normalising decoder returns, the cached
`realpath` equals `os.path.realpath`, and a header check is reused only for the very bytes it saw.
(`tests/test_convert_golden.py` pins the whole output.)"""

import base64
import io
import os
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmit.data.media import check_image
from mmit.data.media_check import image_check_done, remember_image_check
from mmit.data.media_base64 import decode_base64
from mmit.data.media_resolve import MediaRoot, resolve_media_path
from mmit.data.sample import Media, SampleError
from mmit.data.shard_build import ShardOptions, pointcloud_npy, prepare_media
from mmit.data.sample import Sample, Turn
from mmit.data.tar_members import TarMembers
from conftest import DEMO_IMAGES


@pytest.mark.parametrize("names", [
    ["a" * 40 + ".0.jpg", "a" * 40 + ".json"],  # the shard layout
    ["x", "ü-non-ascii.json", "n" * 99, "n" * 100, "d/" * 60 + "long.bin"],  # tarfile's fallbacks
])
def test_tar_members_write_the_bytes_tarfile_writes(tmp_path, names):
    datas = [b"", b"x" * 511, b"y" * 512, bytes(range(256)) * 7, memoryview(b"z" * 1000)][:len(names)]
    with open(tmp_path / "ours.tar", "wb") as f:
        w = TarMembers(f, mtime=0, user="mmit", group="mmit")
        w.add(list(zip(names[:1], datas[:1])))
        w.add(list(zip(names[1:], datas[1:])))
        w.close()
        assert w.offset == f.tell()
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in zip(names, datas):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o444, "mmit", "mmit"
            tf.addfile(ti, io.BytesIO(bytes(data)))
    assert (tmp_path / "ours.tar").read_bytes() == ref.getvalue()
    with tarfile.open(tmp_path / "ours.tar") as tf:
        assert [tf.extractfile(m).read() for m in tf] == [bytes(d) for d in datas]


def test_tar_members_refuse_what_ustar_cannot_hold(tmp_path):
    with open(tmp_path / "t.tar", "wb") as f:
        w = TarMembers(f)
        with pytest.raises(ValueError):
            w.add([("n" * 300, b"x")])  # no prefix/name split possible: tarfile's ValueError


# -- point clouds: header-only .npy check == np.load ------------------------------------------------

def _npy(a, version=None):
    b = io.BytesIO()
    np.lib.format.write_array(b, a, version=version, allow_pickle=True)
    return b.getvalue()


def _reference(data):
    """What pointcloud_npy decided before: np.load the whole array, then check it."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:
        return "undecodable-pointcloud"
    ok = arr.ndim == 2 and arr.shape[0] >= 1 and arr.shape[1] >= 3 and arr.dtype.kind in "fiu"
    return (tuple(arr.shape), arr.dtype.str) if ok else "undecodable-pointcloud"


F32 = _npy(np.arange(18, dtype=np.float32).reshape(6, 3))
NPY_CASES = {
    "f32": F32, "f64": _npy(np.ones((4, 6))), "i8": _npy(np.ones((4, 3), np.int8)),
    "big-endian": _npy(np.ones((2, 3), ">f4")), "fortran": _npy(np.asfortranarray(np.ones((5, 4)))),
    "v2": _npy(np.ones((3, 3)), (2, 0)), "v3": _npy(np.ones((3, 3)), (3, 0)),
    "1d": _npy(np.ones(9)), "0-rows": _npy(np.ones((0, 3))), "2-cols": _npy(np.ones((5, 2))),
    "objects": _npy(np.array([[1, 2, 3]], dtype=object)), "bool": _npy(np.ones((3, 3), bool)),
    "complex": _npy(np.ones((3, 3), complex)), "scalar": _npy(np.float32(3)),
    "3d": _npy(np.ones((2, 3, 4))), "truncated": F32[:-5], "trailing-bytes": F32 + b"xyz",
    "huge-shape": F32.replace(b"'shape': (6, 3), }", b"'shape': (4611686018427387904, 8), }"),
    "bad-header": F32[:12] + b"garbage" + F32[19:],
    "structured": _npy(np.zeros((3, 3), dtype=[("a", "f4")])),
}


@pytest.mark.parametrize("name", sorted(NPY_CASES))
def test_npy_header_check_decides_as_np_load(name):
    data = NPY_CASES[name]
    want = _reference(data)
    try:
        out, shape, dtype = pointcloud_npy(data, "x")
        got = (shape, dtype)
        assert out is data  # kept byte for byte
    except SampleError as e:
        got = e.reason
    assert got == want


@pytest.mark.parametrize("name", sorted(NPY_CASES))
def test_reader_npy_header_check_decides_as_np_load_twice(name):
    """The reader's header check (:func:`npy_header`, cached per header text) refuses what
    ``np.load`` refuses; asked twice (the second time from the cache) it answers the same."""
    from mmit.data.media_check import npy_header

    data = NPY_CASES[name]
    want = _reference(data)
    answers = []
    for _ in range(2):
        try:
            answers.append(npy_header(data, "x"))
        except SampleError as e:
            answers.append(e.reason)
    assert answers[0] == answers[1]
    if name not in ("truncated", "huge-shape"):  # it reads the header only, not the data
        assert answers[0] == want


def test_npy_header_text_is_parsed_once(monkeypatch):
    """numpy's header parser (``ast.literal_eval``) runs once per distinct header text."""
    from mmit.data import media_check

    media_check._npy_header_text.cache_clear()
    calls = []
    real = np.lib.format.read_array_header_1_0
    monkeypatch.setattr(np.lib.format, "read_array_header_1_0",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    other = _npy(np.ones((7, 3), np.float32))
    for data in (F32, F32, other, F32 + b"", other):
        pointcloud_npy(data, "x")
    assert len(calls) == 2


# -- base64: one strict pass == the normalising decoder ----------------------------------------------

def _normalising(text):
    """The decoder before issue 17 (every input through the normaliser)."""
    import re
    body = re.sub(r"^data:[^,;]*(?:;[^,;]*)*;base64,", "", text.strip(), count=1, flags=re.I)
    body = body.encode("ascii", "replace").translate(bytes.maketrans(b"-_", b"+/"), b" \t\r\n\f\v")
    if not body:
        return "bad-base64"
    body = body.rstrip(b"=")
    if len(body) % 4 == 1:
        return "bad-base64"
    try:
        return base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
    except ValueError:
        return "bad-base64"


def test_base64_fast_path_agrees_with_the_normalising_decoder():
    rng = random.Random(0)
    alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    noise = alpha + "=-_ \n*é"
    texts = ["", "====", "QQ", "QUJD", "QUI=", "QU=I", " QUJD ", "data:image/png;base64,QUJD"]
    for _ in range(20000):
        n = rng.randint(1, 12)
        if rng.random() < 0.5:
            texts.append("".join(rng.choice(alpha) for _ in range(n)) + "=" * rng.randint(0, 3))
        else:
            texts.append("".join(rng.choice(noise) for _ in range(n)))
    texts.append(base64.b64encode(os.urandom(300_000)).decode())
    for t in texts:
        try:
            got = decode_base64(t, "w")
        except SampleError as e:
            got = e.reason
        assert got == _normalising(t), t[:80]


# -- realpath cache, header-check memo ----------------------------------------------------------------

def test_media_root_realpath_equals_os_realpath(tmp_path, monkeypatch):
    (tmp_path / "root" / "a" / "b").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "root" / "a" / "b" / "x.jpg").write_bytes(b"x")
    (tmp_path / "out" / "secret.jpg").write_bytes(b"s")
    (tmp_path / "root" / "a" / "link.jpg").symlink_to(tmp_path / "out" / "secret.jpg")
    (tmp_path / "root" / "dirlink").symlink_to(tmp_path / "out")
    root = MediaRoot(tmp_path / "root")
    paths = ["a/b/x.jpg", "a/link.jpg", "dirlink/secret.jpg", "a/b/../b/x.jpg", "a/b/nope.jpg",
             "a/..", "a/b/", "x.jpg"]
    for _ in range(2):  # cold and cached
        for p in paths:
            full = os.path.join(root, p)
            assert root.realpath(full) == os.path.realpath(full), p
    monkeypatch.chdir(tmp_path / "root")
    assert root.realpath("a/b/x.jpg") == os.path.realpath("a/b/x.jpg")


def _resolution(path, root):
    try:
        return resolve_media_path(path, root, "w")
    except SampleError as e:
        return e.reason, str(e).replace(str(root), "<root>")


def test_resolve_fast_path_decides_as_the_general_route(tmp_path):
    """A :class:`MediaRoot` resolves a regular file with one ``lstat`` (its folder's real place
    remembered); a plain ``str`` root takes ``os.path.realpath``. Same answers, same errors, for
    files inside, symlinks (file and folder) leading out, ``..``, folders and missing files."""
    (tmp_path / "root" / "a" / "b").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "root" / "a" / "b" / "x.jpg").write_bytes(b"x")
    (tmp_path / "out" / "secret.jpg").write_bytes(b"s")
    (tmp_path / "root" / "a" / "link.jpg").symlink_to(tmp_path / "out" / "secret.jpg")
    (tmp_path / "root" / "a" / "inlink.jpg").symlink_to(tmp_path / "root" / "a" / "b" / "x.jpg")
    (tmp_path / "root" / "dirlink").symlink_to(tmp_path / "out")
    (tmp_path / "root" / "indir").symlink_to(tmp_path / "root" / "a")
    paths = ["a/b/x.jpg", "./a/b/x.jpg", "a/link.jpg", "a/inlink.jpg", "dirlink/secret.jpg",
             "indir/b/x.jpg", "a/b/../b/x.jpg", "a/b/../../../out/secret.jpg", "a/b/nope.jpg",
             "a/b", "a/b/x.jpg/", str(tmp_path / "out" / "secret.jpg"),
             str(tmp_path / "root" / "a" / "b" / "x.jpg")]
    fast = MediaRoot(tmp_path / "root")
    for _ in range(2):  # cold and with the folders remembered
        for p in paths:
            got = _resolution(p, fast)
            assert got == _resolution(p, str(tmp_path / "root")), p
    assert _resolution("a/b/x.jpg", fast) == (str(tmp_path / "root" / "a" / "b" / "x.jpg"), None)
    assert _resolution("dirlink/secret.jpg", fast)[0] == "media-outside-root"
    allowed = MediaRoot(tmp_path / "root", allow_absolute=True)
    assert _resolution("dirlink/secret.jpg", allowed)[1] is None  # found where it is written


def test_header_check_is_reused_only_for_the_same_bytes(tmp_path):
    data = (DEMO_IMAGES / "extreme_ironing.jpg").read_bytes()
    m = Media(kind="image", data=data)
    remember_image_check(m, data, check_image(data, "x"))
    assert image_check_done(m, data) is not None
    assert image_check_done(m, bytes(bytearray(data))) is None  # equal but another object
    # the shard builder still applies its pixel cap to a reused check
    s = Sample(id="s", turns=[Turn("user", "<image>"), Turn("assistant", "a")], media=[m])
    with pytest.raises(SampleError) as e:
        prepare_media(s, ShardOptions(str(tmp_path), max_pixels=100))
    assert e.value.reason == "image-too-large"
    m2 = Media(kind="image", data=data[:5000])  # a remembered check of OTHER bytes is not used
    remember_image_check(m2, data, check_image(data, "x"))
    with pytest.raises(SampleError) as e:
        prepare_media(Sample(id="t", turns=s.turns, media=[m2]), ShardOptions(str(tmp_path)))
    assert e.value.reason == "undecodable-image"


def test_tar_members_finish_a_short_write(tmp_path, monkeypatch):
    import mmit.data.tar_members as tm

    real = os.writev

    def short(fd, parts):  # the kernel may write less than asked (e.g. > 2 GiB in one call)
        return real(fd, [memoryview(parts[0])[:100]])

    monkeypatch.setattr(tm.os, "writev", short)
    data = os.urandom(5000)
    with open(tmp_path / "t.tar", "wb") as f:
        w = TarMembers(f)
        w.add([("a.bin", data), ("b.json", b"{}")])
        w.close()
    with tarfile.open(tmp_path / "t.tar") as tf:
        assert [tf.extractfile(m).read() for m in tf] == [data, b"{}"]
    assert (tmp_path / "t.tar").stat().st_size == w.offset


def test_tar_members_equal_tarfile_beyond_one_writev(tmp_path):
    """A sample with more parts than one ``writev`` takes (header, data and padding per member;
    1000 per call): the bytes equal ``tarfile``'s, as for every shard."""
    import mmit.data.tar_members as tm

    rng = random.Random(1)
    members = [(f"k.{i}.bin", os.urandom(rng.choice([0, 1, 511, 512, 513, 2000])))
               for i in range(700)]
    assert 3 * len(members) > tm._IOV_MAX
    with open(tmp_path / "ours.tar", "wb") as f:
        w = TarMembers(f, mtime=0, user="mmit", group="mmit")
        w.add(members[:1])
        w.add(members[1:])
        w.close()
    with tarfile.open(tmp_path / "ref.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o444, "mmit", "mmit"
            tf.addfile(ti, io.BytesIO(data))
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()
    assert w.offset == (tmp_path / "ours.tar").stat().st_size


# -- JPEG end: vectorised marker search == the regular expression's ----------------------------------

def _jpeg_cases():
    """Real photos (and a progressive and two restart-interval re-encodings) whole, cut short,
    padded, with a video appended, and with bytes flipped to 0xFF or stray markers, fill bytes
    and cuts put in at random."""
    import glob

    root = Path(__file__).resolve().parents[1] / "demo_data" / "images"
    photos = [Path(p).read_bytes() for p in sorted(glob.glob(str(root / "**" / "*.jpg"), recursive=True))]
    first = Image.open(io.BytesIO(photos[0]))
    for kw in ({"progressive": True}, {"restart_marker_blocks": 1}, {"restart_marker_rows": 2}):
        out = io.BytesIO()
        first.save(out, "JPEG", quality=70, **kw)
        photos.append(out.getvalue())
    rng = random.Random(5)
    cases = []
    for data in photos:
        cases += [data, data + b"\0" * 64, data + b"\0\0\0\x18ftypmp42", data[:-2], data[:len(data) // 2]]
        for _ in range(40):
            b = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(2, len(b) - 1)
                op = rng.random()
                if op < 0.4:
                    b[i] = 0xFF
                elif op < 0.7:
                    b[i:i] = bytes([0xFF, rng.choice([0xD9, 0xC4, 0xDA, 0xFF, 0xD8, 0x01, 0xFE, 0xD3])])
                else:
                    del b[i:]
            cases.append(bytes(b))
    return cases


def test_jpeg_end_vectorised_walk_agrees_with_the_regex_walk(monkeypatch):
    """``jpeg_end`` finds markers with numpy above 4 KiB (flags searched one ``argmax`` at a time,
    passing over restart markers, or all markers listed once past a number of restart markers)
    and with the regular expression below: all three give the same answer and message on every
    case of :func:`_jpeg_cases`, restart-interval files (hundreds of FF D0-D7) included."""
    from mmit.data import image_end

    answers, restarts = set(), 0
    for data in _jpeg_cases():
        monkeypatch.setattr(image_end, "_VECTOR_FROM", 1 << 40)  # the regular expression only
        want = image_end.jpeg_end(data)
        monkeypatch.setattr(image_end, "_VECTOR_FROM", 0)
        for limit in (1 << 40, 0):  # restart markers passed one by one / all markers listed
            monkeypatch.setattr(image_end, "_RST_LIMIT", limit)
            assert image_end.jpeg_end(data) == want
        answers.add(want is None)
        restarts += data.count(b"\xff\xd0") > 10
    assert answers == {True, False} and restarts > 40


def test_jpeg_end_from_the_first_scan_agrees_with_the_walk_from_soi():
    """The header parse hands the end walk the first byte after its SOS segment: wherever that
    parse reaches SOS, the answer from there equals the walk from SOI (the header is not walked
    twice), and the fast header check accepts exactly the files the walk finds complete."""
    from mmit.data import image_end, image_header

    reached, complete, accepted = 0, 0, 0
    for data in _jpeg_cases():
        sos = _first_sos_end(data)
        if sos is None:
            continue
        reached += 1
        want = image_end.jpeg_end(data)
        assert image_end.jpeg_end(data, sos) == want
        info = image_header._jpeg_info(data)
        assert info is None or want is None
        complete += want is None
        accepted += info is not None
    assert reached > 100 and complete > 20 and accepted > complete // 2


def _first_sos_end(data: bytes):
    """The first byte after the first SOS segment when every segment before it is a plain
    ``FF xx LEN`` segment (the walk ``_jpeg_info`` does), else None."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] not in (0x00, 0xFF, 0xD8, 0xD9, 0x01) \
            and not 0xD0 <= data[pos + 1] <= 0xD7:
        code, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > len(data):
            return None
        pos += 2 + length
        if code == 0xDA:
            return pos
    return None


# -- JSONL lines ---------------------------------------------------------------------------------------

def _outcome(loads, line):
    try:
        return "value", loads(line)
    except RecursionError:
        return "RecursionError", None
    except ValueError as e:  # JSONDecodeError included: its message names the column
        return type(e).__name__, str(e)


def test_jsonl_line_scan_decides_as_json_loads():
    """A JSONL line is read by ``json``'s scanner directly; the value, and the error with its
    message, are ``json.loads``' for valid lines, broken ones, trailing data and whitespace, NaN,
    lone surrogate escapes, too deep nesting and integers too long to convert."""
    import json

    from mmit.data.record_io import _loads_line
    lines = ['{"a": [1, 2.5, "x"], "b": {"c": null, "d": true}}', '{"a": 1} ', ' {"a": 1}',
             '{"a": 1} x', '{"a": 1}{"b": 2}', '{"a": 1', '{"a": NaN, "b": -Infinity}',
             '{"a": "\\ud800"}', '{"a": 01}', '{"a": "\x01"}', '{"a": 1, "a": 2}', '{"a": -0}',
             '{"a":' * 3000 + '1' + '}' * 3000, '{"a": ' + '9' * 5000 + '}', '[1]', '"x"', '{}',
             '\ufeff{"a": 1}', '{"é": "\U0001F600"}']
    rng = random.Random(0)
    base = lines[0]
    for _ in range(300):  # random cuts and byte flips of a valid line
        i = rng.randrange(len(base))
        lines.append(base[:i] if rng.random() < 0.5 else base[:i] + rng.choice('{}[]",:x1 ') + base[i + 1:])
    for line in lines:
        assert _outcome(_loads_line, line) == _outcome(json.loads, line), line[:40]
