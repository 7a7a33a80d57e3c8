"""The fast header path of ``check_image`` (mmit/data/image_header.py) gives exactly the Pillow
path's answer: accept/refuse, the skip reason, the message and ``ImageInfo``, on real files,
Pillow-made files in many modes and systematic corruptions of them."""

from __future__ import annotations

import collections
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from mmit.data.image_header import _PILLOW_MIRRORED, fast_image_info
from mmit.data.media import IMAGE_EXTS, _check_image_pillow, check_image, sniff_ext
from mmit.data.sample import SampleError

# Pillow warns about the corrupt files on purpose made here (EXIF, MPO, decompression bombs)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples"


def _outcome(fn, data: bytes, max_pixels: int):
    try:
        return "ok", tuple(fn(data, "img", max_pixels))
    except SampleError as e:
        return e.reason, re.sub(r" at 0x[0-9a-f]+", "", str(e))  # object addresses differ


def _same(data: bytes, max_pixels: int = 64_000_000, label: str = "") -> bool:
    """Assert both paths agree; True when the fast path itself answered."""
    want, got = _outcome(_check_image_pillow, data, max_pixels), _outcome(check_image, data, max_pixels)
    assert got == want, f"{label}: fast {got} != pillow {want}"
    fast = fast_image_info(data, max_pixels)
    if fast is not None:
        assert want == ("ok", fast), f"{label}: fast path accepted what Pillow answers {want}"
    return fast is not None


def _real_images():
    files = []
    for top in (ROOT / "demo_data", SAMPLES):
        if top.is_dir():
            files += [p for p in sorted(top.rglob("*")) if p.is_file() and p.stat().st_size < 4 << 20]
    out = []
    for p in files:
        data = p.read_bytes()
        if sniff_ext(data) in IMAGE_EXTS:
            out.append((str(p.relative_to(p.parents[1])), data))
    return out


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3)
    return Image.fromarray((base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8))


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(cid: bytes, payload: bytes, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(cid + payload) ^ (0 if crc_ok else 1)
    return struct.pack(">I", len(payload)) + cid + payload + struct.pack(">I", crc)


def _png_with(data: bytes, extra: bytes, ihdr: bytes = b"") -> bytes:
    """``data`` (a PNG) with chunk bytes ``extra`` inserted after IHDR, IHDR payload replaced."""
    head = data[:8]
    body = data[8 + 25:]
    ihdr_chunk = _png_chunk(b"IHDR", ihdr) if ihdr else data[8:8 + 25]
    return head + ihdr_chunk + extra + body


def _generated():
    rgb = _rgb(64, 48)
    icc = b"\0" * 128 + bytes(range(256)) * 60  # a long fake profile: several APP2 segments
    ex = Image.Exif()
    ex[0x0128], ex[0x011A], ex[0x011B] = 2, 300.0, 300.0
    out = {
        "jpg-rgb": _save(rgb, "JPEG"),
        "jpg-gray": _save(rgb.convert("L"), "JPEG"),
        "jpg-cmyk": _save(rgb.convert("CMYK"), "JPEG"),
        "jpg-progressive": _save(rgb, "JPEG", progressive=True, optimize=True),
        "jpg-444": _save(rgb, "JPEG", subsampling=0, quality=95),
        "jpg-exif-icc": _save(rgb, "JPEG", exif=ex.tobytes(), icc_profile=icc, comment=b"hello"),
        "jpg-exif-nodpi": _save(rgb, "JPEG", exif=b"Exif\0\0" + b"MM\0*\0\0\0\x08\0\0"),
        "jpg-dpi": _save(rgb, "JPEG", dpi=(72, 72)),
        "jpg-1x1": _save(Image.new("RGB", (1, 1)), "JPEG"),
        "jpg-odd": _save(_rgb(333, 17, 1), "JPEG", quality=30),
        "png-rgb": _save(rgb, "PNG"),
        "png-rgba": _save(rgb.convert("RGBA"), "PNG"),
        "png-la": _save(rgb.convert("LA"), "PNG"),
        "png-l": _save(rgb.convert("L"), "PNG", dpi=(96, 96)),
        "png-1": _save(rgb.convert("1"), "PNG"),
        "png-16": _save(Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 7), "PNG"),
        "png-p": _save(rgb.convert("P"), "PNG"),
        "png-p-trns": _save(rgb.convert("P"), "PNG", transparency=3),
        "png-rgb-trns": _save(rgb, "PNG", transparency=(1, 2, 3)),
        "png-l-trns": _save(rgb.convert("L"), "PNG", transparency=7),
        "png-icc": _save(rgb, "PNG", icc_profile=icc),
        "png-exif": _save(rgb, "PNG", exif=ex.tobytes()),
        "apng": _save(rgb, "PNG", save_all=True, append_images=[rgb.rotate(90)]),
        "webp-lossy": _save(rgb, "WEBP", quality=50),
        "webp-lossless": _save(rgb, "WEBP", lossless=True),
        "webp-alpha": _save(rgb.convert("RGBA"), "WEBP"),
        "webp-anim": _save(rgb, "WEBP", save_all=True, append_images=[rgb.rotate(90)]),
        "gif": _save(rgb.convert("P"), "GIF"),
        "gif-anim": _save(rgb.convert("P"), "GIF", save_all=True,
                          append_images=[rgb.rotate(90).convert("P")]),
        "bmp": _save(rgb, "BMP"),
        "tiff": _save(rgb, "TIFF"),
    }
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("Title", "a caption")
    info.add_text("Comment", "compressed " * 50, zip=True)
    info.add_itxt("Author", "ünïcode", lang="de", tkey="Autor")
    info.add_itxt("Zipped", "x" * 500, zip=True)
    out["png-text"] = _save(rgb, "PNG", pnginfo=info)
    plain = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    plain.add_text("Title", "a caption")
    plain.add_itxt("Author", "ünïcode", lang="de", tkey="Autor")
    out["png-text-plain"] = _save(rgb, "PNG", pnginfo=plain)
    png = out["png-rgb"]
    out["png-interlaced-flag"] = _png_with(png, b"", png[16:28] + b"\x01")
    out["png-gama-chrm"] = _png_with(png, _png_chunk(b"gAMA", struct.pack(">I", 45455))
                                     + _png_chunk(b"cHRM", struct.pack(">8I", *range(8)))
                                     + _png_chunk(b"sRGB", b"\0") + _png_chunk(b"prVt", b"x" * 5))
    out["png-bad-chunks"] = _png_with(png, _png_chunk(b"gAMA", b"\0\0") + _png_chunk(b"cHRM", b"12345"))
    out["png-short-srgb"] = _png_with(png, _png_chunk(b"sRGB", b""))
    out["png-short-phys"] = _png_with(png, _png_chunk(b"pHYs", b"\0" * 4))
    out["png-bad-ancillary-crc"] = _png_with(png, _png_chunk(b"tEXt", b"k\0v", crc_ok=False))
    out["png-bad-iccp"] = _png_with(png, _png_chunk(b"iCCP", b"name\0\0not zlib"))
    out["png-iccp-method"] = _png_with(png, _png_chunk(b"iCCP", b"name\0\x01" + zlib.compress(icc)))
    out["png-huge-iccp"] = _png_with(png, _png_chunk(b"iCCP", b"n\0\0" + zlib.compress(b"\0" * (2 << 20))))
    out["png-digit-chunk"] = _png_with(png, _png_chunk(b"ab1d", b"x"))
    out["png-trailing"] = png + b"\0" * 100
    webp = out["webp-lossy"]  # one byte more in its VP8 chunk: an odd payload, then a pad byte
    size = int.from_bytes(webp[16:20], "little")
    assert size % 2 == 0
    out["webp-odd"] = (b"RIFF" + struct.pack("<I", len(webp) - 8 + 2) + webp[8:16]
                       + struct.pack("<I", size + 1) + webp[20:] + b"\0\0")
    webp = out["webp-lossy"]
    out["webp-trailing"] = webp + b"\0" * 10
    out["webp-extra-chunk"] = (webp[:4] + struct.pack("<I", len(webp) + 4) + webp[8:]
                               + b"EXIF\0\0\0\0")
    out["webp-big-riff"] = webp[:4] + struct.pack("<I", len(webp) + 100) + webp[8:]
    jpg = out["jpg-rgb"]
    out["jpg-trailing"] = jpg + b"\0" * 100 + b"video"
    out["jpg-fill-bytes"] = jpg[:2] + b"\xff\xff\xff" + jpg[2:]
    out["jpg-junk"] = jpg[:2] + b"\x00\x11" + jpg[2:]
    out["jpg-com"] = jpg[:2] + b"\xff\xfe\x00\x05abc" + jpg[2:]
    out["jpg-short-jfif"] = jpg[:2] + b"\xff\xe0\x00\x06JFIF" + jpg[2:]
    out["jpg-short-adobe"] = jpg[:2] + b"\xff\xee\x00\x07Adobe" + jpg[2:]
    out["jpg-short-icc"] = jpg[:2] + b"\xff\xe2\x00\x0fICC_PROFILE\0\x01" + jpg[2:]
    out["jpg-mpf"] = jpg[:2] + b"\xff\xe2\x00\x0aMPF\0MM\0*" + jpg[2:]
    resolution = b"8BIM\x03\xed\0\0\0\0\0\x10" + b"\0" * 16  # a ResolutionInfo resource
    out["jpg-photoshop"] = jpg[:2] + _app(0xED, b"Photoshop 3.0\x00" + resolution) + jpg[2:]
    short = b"8BIM\x03\xed\0\0\0\0\0\x0c" + b"\0" * 12 + b"8BIM\x04\x04\x05ab"  # then cut short
    out["jpg-photoshop-short-res"] = jpg[:2] + _app(0xED, b"Photoshop 3.0\x00" + short) + jpg[2:]
    out["jpg-photoshop-cut"] = jpg[:2] + _app(0xED, b"Photoshop 3.0\x008BIM\x03\xed") + jpg[2:]
    out["jpg-photoshop-cut2"] = jpg[:2] + _app(0xED, b"Photoshop 3.0\x008BIM\x03\xed\x05ab") + jpg[2:]
    out["jpg-two-soi"] = jpg[:2] + b"\xff\xd8" + jpg[2:]
    out["jpg-tem"] = jpg[:2] + b"\xff\x01" + jpg[2:]
    out["jpg-bad-exif"] = jpg[:2] + _app(0xE1, b"Exif\0\0II*\0\x08\0\0\0\xff\xff") + jpg[2:]
    return out


def _app(code: int, payload: bytes) -> bytes:
    return bytes([0xFF, code]) + struct.pack(">H", len(payload) + 2) + payload


def _corruptions(data: bytes):
    """Truncations, flipped header bytes and patched sizes of one encoded image."""
    n = len(data)
    cuts = sorted({*range(0, min(n, 80), 3), *range(80, n, max(1, n // 40)), n - 1, n - 2, n - 3})
    for c in cuts:
        yield f"cut{c}", data[:c]
    for i in range(min(n, 120)):
        yield f"flip{i}", data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        yield f"inc{i}", data[:i] + bytes([(data[i] + 1) & 0xFF]) + data[i + 1:]
    for i in range(n - 40, n):
        if i > 0:
            yield f"tailflip{i}", data[:i] + bytes([data[i] ^ 0x55]) + data[i + 1:]
    for i in range(0, n, max(1, n // 30)):
        yield f"midflip{i}", data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:]


def _huge(data: bytes):
    """The file with its declared size raised past the caps (JPEG SOF, PNG IHDR with a fixed CRC)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        for w, h in ((9000, 9000), (20000, 20000), (0, 5), (1 << 31, 2)):
            ihdr = struct.pack(">II", w, h) + data[24:29]
            yield f"ihdr{w}x{h}", data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:]
    elif data[12:16] == b"VP8 ":
        for w, h in ((4000, 4000), (4097, 4096), (16383, 16383), (0, 9)):
            yield f"vp8-{w}x{h}", data[:26] + struct.pack("<HH", w, h) + data[30:]
    elif data[12:16] == b"VP8L":
        for w, h in ((4000, 4000), (4097, 4096), (16384, 16384)):
            v = (w - 1) | ((h - 1) << 14) | (int.from_bytes(data[21:25], "little") & (0xF << 28))
            yield f"vp8l-{w}x{h}", data[:21] + struct.pack("<I", v) + data[25:]
    elif data[:2] == b"\xff\xd8":
        sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
        if sof > 0:
            for w, h in ((9000, 9000), (65535, 65535), (0, 7)):
                yield f"sof{w}x{h}", data[:sof + 5] + struct.pack(">HH", h, w) + data[sof + 9:]


def test_real_and_generated_files_agree():
    corpus = _real_images() + sorted(_generated().items())
    assert len(corpus) > 60
    fast = 0
    for label, data in corpus:
        for cap in (64_000_000, 1000, 2):
            fast += _same(data, cap, f"{label} cap={cap}")
    if not _PILLOW_MIRRORED:  # another Pillow: everything went through it, nothing more to see
        assert fast == 0
        return
    # the fast path answers the ordinary files (else it would be dead code): 49 answers without
    # ../shared/samples (a clean clone), more with it
    assert fast >= 40
    gen = _generated()
    for key in ("jpg-rgb", "jpg-gray", "jpg-cmyk", "jpg-progressive", "jpg-exif-icc", "jpg-dpi",
                "png-rgb", "png-16", "png-p-trns", "png-icc", "png-text-plain", "png-interlaced-flag",
                "webp-lossy", "webp-lossless", "webp-odd"):
        assert fast_image_info(gen[key], 64_000_000) is not None, key


@pytest.mark.parametrize("key", ["jpg-rgb", "jpg-progressive", "jpg-exif-icc", "jpg-cmyk", "png-rgb",
                                 "png-p-trns", "png-icc", "png-text", "png-16", "webp-lossy",
                                 "webp-lossless", "webp-alpha", "webp-odd"])
def test_corruptions_agree(key):
    data = _generated()[key]
    refused = 0
    for label, bad in [*_corruptions(data), *_huge(data)]:
        for cap in (64_000_000, 3000):
            _same(bad, cap, f"{key}/{label} cap={cap}")
            refused += _outcome(check_image, bad, cap)[0] != "ok"
    assert refused > 50  # the corruptions really exercise refusals


def test_real_file_corruptions_agree():
    real = [(label, d) for label, d in _real_images() if d[:3] == b"\xff\xd8\xff" or d[:4] == b"\x89PNG"]
    for label, data in real[:6]:
        for cut, bad in list(_corruptions(data))[::4]:
            _same(bad, 64_000_000, f"{label}/{cut}")


def test_random_mutations_agree():
    """Random byte changes and deletions anywhere in the files (the header region more often)."""
    rng = np.random.default_rng(7)
    bases = [d for _, d in _real_images() if len(d) < 300_000] + [d for _, d in sorted(_generated().items())]
    fast = 0
    for i in range(1500):
        d = bytearray(bases[rng.integers(len(bases))])
        for _ in range(rng.integers(1, 4)):
            r = rng.random()
            if r < 0.5:
                d[rng.integers(min(len(d), 400))] = rng.integers(256)
            elif r < 0.8:
                d[rng.integers(len(d))] = (0xFF, 0x00, 0xD9, 0xD8, int(rng.integers(256)))[rng.integers(5)]
            else:
                p = int(rng.integers(len(d)))
                del d[p:p + int(rng.integers(1, 50))]
        fast += _same(bytes(d), (64_000_000, 2000)[i % 2], f"mutation {i}")
    # the fast path met mutations it still accepts (bytes outside the structure it checks)
    assert fast > 100 or not _PILLOW_MIRRORED


def _exif_blob(le: bool, entries, next_ifd: int = 0) -> bytes:
    """An ``Exif\\0\\0`` TIFF block with one IFD of ``(tag, type, count, payload)`` entries."""
    e = "<" if le else ">"
    head = (b"II*\0" if le else b"MM\0*") + struct.pack(e + "L", 8)
    base, body, extra = 8 + 2 + 12 * len(entries) + 4, struct.pack(e + "H", len(entries)), b""
    for tag, typ, count, payload in entries:
        if len(payload) > 4:
            field, extra = struct.pack(e + "L", base + len(extra)), extra + payload
        else:
            field = payload.ljust(4, b"\0")
        body += struct.pack(e + "HHL", tag, typ, count) + field
    return b"Exif\0\0" + head + body + struct.pack(e + "L", next_ifd) + extra


def _exif_variants():
    rng = np.random.default_rng(3)
    out = []
    for _ in range(400):
        le = bool(rng.integers(2))
        e = "<" if le else ">"
        unit = [(0x0128, 3, 1, struct.pack(e + "H", int(rng.integers(0, 4)))),
                (0x0128, 4, 1, struct.pack(e + "L", 3)), (0x0128, 2, 2, b"2\0"),
                (0x0128, 7, 1, b"\x03"), (0x0128, 99, 1, b"\x03")]
        xres = [(0x011A, 5, 1, struct.pack(e + "LL", int(rng.integers(0, 400)), int(rng.integers(0, 3)))),
                (0x011A, 10, 1, struct.pack(e + "ll", -72, 1)), (0x011A, 3, 1, struct.pack(e + "H", 72)),
                (0x011A, 12, 1, struct.pack(e + "d", float("nan"))),
                (0x011A, 11, 1, struct.pack(e + "f", 96)),
                (0x011A, 2, 3, b"72\0"), (0x011A, 5, 2, struct.pack(e + "LLLL", 1, 2, 3, 4)),
                (0x011A, 5, 0, b""), (0x011A, 5, 1000, b"\1" * 8),
                (0x011A, 1, 1, b"H"), (0x011A, 7, 1, b"H")]  # one byte: IndexError, Image.open fails
        entries = [(0x010F, 2, 6, b"Canon\0")]
        if rng.random() < 0.85:
            entries.append(unit[int(rng.integers(len(unit)))])
        if rng.random() < 0.85:
            entries.append(xres[int(rng.integers(len(xres)))])
        if rng.random() < 0.2:
            entries.append(xres[int(rng.integers(len(xres)))])  # a duplicate tag
        blob = bytearray(_exif_blob(le, entries, int(rng.integers(0, 3)) * 1000))
        r = rng.random()
        if r < 0.3:
            del blob[int(rng.integers(6, len(blob))):]
        elif r < 0.6:
            blob[int(rng.integers(6, len(blob)))] = int(rng.integers(256))
        out.append(bytes(blob))
    return out + [b"Exif\0\0", b"Exif\0\0Exif\0\0II*\0", b"Exif\0\0MM\0+\0\0\0\x08", b"Exif\0\0II\0*abcd"]


def test_exif_dpi_mirror_matches_pillows_exif_loader():
    """The IFD0 walk that stands in for ``Image.Exif.load`` decides like Pillow's loader, and a JPEG
    carrying such EXIF (no JFIF density) gets the Pillow path's answer."""
    from mmit.data import image_header as H
    variants = _exif_variants()
    answers = set()
    for blob in variants:
        want = H._exif_dpi_ok_pillow(blob)
        assert H._exif_dpi_ok(blob) == want, blob
        answers.add(want)
    jpg = _save(_rgb(16, 16), "JPEG")  # JFIF without density units: the EXIF is read
    for blob in variants[:120]:
        if len(blob) + 2 < 65536:
            _same(jpg[:2] + _app(0xE1, blob) + jpg[2:], label=f"exif {blob[:40]!r}")
    assert answers == {True, False}


def test_load_truncated_images_goes_to_pillow(monkeypatch):
    data = _generated()["jpg-rgb"][:-2]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert fast_image_info(_generated()["jpg-rgb"], 64_000_000) is None
    _same(data, 64_000_000, "truncated with LOAD_TRUNCATED_IMAGES")


def test_bomb_limit_goes_to_pillow(monkeypatch):
    data = _generated()["png-rgb"]  # 64x48
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert fast_image_info(data, 64_000_000) is None
    assert _outcome(check_image, data, 64_000_000)[0] == "image-too-large"


def _meta_walk(value, limit):
    """The general walk of ``mmit.data.sample._meta_problem`` (the reference for its shortcuts)."""
    from mmit.data.sample import has_lone_surrogate
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if has_lone_surrogate(v):
                return "bad-encoding"
            continue
        if isinstance(v, dict):
            items = list(v) + list(v.values())
        elif isinstance(v, (list, tuple)):
            items = v
        else:
            continue
        if depth > limit:
            return "too-deep"
        stack.extend((x, depth + 1) for x in items)
    return None


def test_meta_problem_shortcuts_match_the_walk():
    """Sample.validate's metadata check (shared with conversion: its cost shows in bench/convert.py)
    answers as the full walk on random nested metadata, lone surrogates and deep nesting included."""
    from mmit.data.sample import _meta_problem
    rng = np.random.default_rng(0)
    plain, odd = ["a", "ü", 1, 2.5, None, True, ""], ["\ud800", "x\udcff"]

    def build(depth):
        r = rng.random()
        if depth > 6 or r < 0.45:
            pool = odd if rng.random() < 0.03 else plain
            return pool[rng.integers(len(pool))]
        if r < 0.7:
            return [build(depth + 1) for _ in range(rng.integers(0, 4))]
        keys = ["k", "opt", "\ud83d", "box"] if rng.random() < 0.1 else ["k", "opt", "box", "n"]
        return {keys[i]: build(depth + 1) for i in range(rng.integers(0, 4))}

    class Text(str):
        pass

    odd_types = [lambda: Text("\ud800"), lambda: Text("ok"), lambda: (1, "\udcff"),
                 lambda: collections.OrderedDict(a="\ud800"), lambda: np.float32(1.5),
                 lambda: b"\xff", lambda: [[[[[["deep", "\ud800"]]]]]]]
    seen = set()
    for i in range(3000):
        meta = {"m": build(1), "n": build(1)}
        if i % 7 == 0:
            meta["o"] = odd_types[rng.integers(len(odd_types))]()
        for limit in (1, 2, 3, 4, 5, 64):
            want = _meta_walk(meta, limit)
            assert _meta_problem(meta, limit) == want, (meta, limit)
            seen.add(want)
    assert seen == {None, "bad-encoding", "too-deep"}

