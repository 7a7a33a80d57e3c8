"""Issue 16: the default image check (``mmit convert --check header``) refuses a truncated image
without decoding its pixels (:func:`mmit.data.media.truncation_error`): a JPEG must reach its
end-of-image marker, a PNG its ``IEND`` chunk, a GIF its trailer, a WebP the size in its RIFF header.
Bytes after that end are allowed, as real files have them. No real image of ``demo_data/`` or
``../shared/samples/`` (odd ones included: a PNG named ``.jpg``, a WebP named ``.png``, ``.JPEG``,
RGBA / palette / grayscale, 39x37 and 1692x2245) is refused.

old: a JPEG cut anywhere after its header passed the header check (``Image.verify`` does not read
JPEG scan data) and was only dropped when a training step decoded it.
"""

import io
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmit.data.convert import main as convert_main
from mmit.data.media import check_image, decode_image, sniff_ext, truncation_error
from mmit.data.sample import SampleError

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "samples"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}


def real_images():
    files = [p for base in (ROOT / "demo_data", SAMPLES) if base.is_dir()
             for p in sorted(base.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return files


REAL = real_images()


def ids(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT.parent))
    except ValueError:
        return str(p)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(w=48, h=32, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def refused(data: bytes, name: str, full: bool = False) -> SampleError:
    with pytest.raises(SampleError) as e:
        check_image(data, name, full=full)
    assert e.value.reason == "undecodable-image" and name in str(e.value)
    return e.value


# -- real images ------------------------------------------------------------------------------------

def test_the_real_images_are_there():
    assert len([p for p in REAL if "demo_data" in p.parts]) >= 6
    if SAMPLES.is_dir():  # the odd ones listed in ../shared/samples/MANIFEST.md
        names = {p.name for p in REAL}
        for odd in ("xray.jpg", "breaking_bad.png", "photo.png", "pepsi.png",
                    "ImageNet-C+image_classification_blur_523_ILSVRC2012_val_00005365.JPEG",
                    "GTSRB+image_classification_48_00000_00001.jpeg",
                    "DOCVQA+question_answer_394_qjyg0023_4.png",
                    "CLEVR+question_answer_184_CLEVR_train_003462.png"):
            assert odd in names, odd
        assert len(REAL) >= 60


@pytest.mark.parametrize("path", REAL, ids=ids)
def test_real_image_passes_and_its_truncations_do_not(path):
    data = path.read_bytes()
    ext = sniff_ext(data)
    info = check_image(data, str(path))  # the default check: header + completeness
    assert info.width > 0 and info.height > 0
    assert truncation_error(data, ext) is None
    # cut anywhere (every 1/40 of the file, and the last 1-5 bytes): refused, naming the file
    cuts = sorted(set(range(16, len(data), max(1, len(data) // 40))) |
                  {len(data) - k for k in range(1, 6)})
    for cut in cuts:
        assert truncation_error(data[:cut], ext) is not None, (path.name, cut, len(data))
    refused(data[: len(data) // 2], str(path))
    refused(data[:-2], str(path))
    # bytes after the end are allowed: zero padding, junk, another file appended
    for tail in (b"\0" * 37, b"junk" * 10, (ROOT / "demo_data/videos/yoga.mp4").read_bytes()):
        assert check_image(data + tail, str(path)) == info


def test_the_check_is_cheap():
    big = max(REAL, key=lambda p: p.stat().st_size)
    data = big.read_bytes()
    ext = sniff_ext(data)
    t = time.perf_counter()
    for _ in range(5):
        assert truncation_error(data, ext) is None
    per_call = (time.perf_counter() - t) / 5
    assert per_call < 0.02, f"{big.name}: {len(data)} bytes took {per_call * 1000:.1f} ms"


# -- each format's end, with generated files -----------------------------------------------------

@pytest.mark.parametrize("fmt,kw", [("JPEG", {}), ("JPEG", {"progressive": True}),
                                    ("JPEG", {"quality": 20, "subsampling": 0}),
                                    ("PNG", {}), ("PNG", {"optimize": True}),
                                    ("WEBP", {"lossless": True}), ("WEBP", {"quality": 50}),
                                    ("GIF", {}), ("GIF", {"interlace": True})])
def test_generated_images_and_their_truncations(fmt, kw):
    im = noise(seed=len(kw))
    data = encode(im.convert("P") if fmt == "GIF" else im, fmt, **kw)
    assert check_image(data, "ok")[:2] == (48, 32)
    assert decode_image(data, "ok").size == (48, 32)
    for cut in range(8, len(data), max(1, len(data) // 30)):
        assert truncation_error(data[:cut], sniff_ext(data)) is not None, cut
    refused(data[:-1], f"cut.{fmt.lower()}")
    refused(data[:-1], f"cut.{fmt.lower()}", full=True)  # --check decode agrees


def test_animated_gif_and_webp_with_alpha():
    frames = [Image.new("RGBA", (20, 10), (i * 60, 0, 200, 128)) for i in range(4)]
    for fmt in ("GIF", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
        assert check_image(data, "anim")[:2] == (20, 10)
        assert truncation_error(data[: len(data) * 3 // 4], sniff_ext(data)) is not None
        refused(data[: len(data) * 3 // 4], f"anim.{fmt.lower()}")


def test_jpeg_end_marker_walk():
    base = encode(noise(64, 64, 3), "JPEG", quality=90)
    # a thumbnail (a whole JPEG with its own EOI) in an APPn segment: its FF D9 does not count
    thumb = encode(noise(8, 8, 4), "JPEG")
    seg = b"thumbnail\0" + thumb
    with_thumb = base[:2] + b"\xff\xe9" + struct.pack(">H", len(seg) + 2) + seg + base[2:]
    assert check_image(with_thumb, "thumb.jpg")[:2] == (64, 64)
    assert decode_image(with_thumb, "thumb.jpg").size == (64, 64)
    refused(with_thumb[: len(with_thumb) - len(base) // 2], "thumb.jpg")
    # fill bytes (FF FF ...) before a marker, as the JPEG standard allows
    sos = base.index(b"\xff\xda")
    filled = base[:sos] + b"\xff\xff\xff" + base[sos:]
    assert truncation_error(filled, "jpg") is None
    # no EOI at all (the last two bytes gone): Pillow cannot decode it either
    with pytest.raises(SampleError):
        decode_image(base[:-2], "no_eoi.jpg")
    assert "end-of-image" in str(refused(base[:-2], "no_eoi.jpg"))
    # a segment length running past the end of the file
    assert "needs" in truncation_error(base[:sos + 6], "jpg")
    assert "cut off" in truncation_error(base[:sos + 3], "jpg")


def test_png_iend_and_webp_riff_size():
    png = encode(noise(), "PNG")
    assert "IEND" in truncation_error(png[:-12], "png")  # the IEND chunk is gone
    assert truncation_error(png[:-4], "png") is not None  # IEND without its CRC
    webp = encode(noise(), "WEBP", lossless=True)
    riff = struct.unpack("<I", webp[4:8])[0]
    assert "RIFF" in truncation_error(webp[:-3], "webp") and len(webp) == riff + 8
    grown = webp[:4] + struct.pack("<I", riff + 100) + webp[8:]
    assert "RIFF" in truncation_error(grown, "webp")
    # other formats are not checked (BMP, TIFF: no end marker to look for)
    assert truncation_error(encode(noise(), "BMP")[:-10], "bmp") is None


# -- end to end: mmit convert's default check --------------------------------------------------------

def test_convert_counts_a_truncated_jpeg_as_undecodable(tmp_path, capsys):
    good = encode(noise(40, 30, 5), "JPEG")
    (tmp_path / "ok.jpg").write_bytes(good)
    (tmp_path / "cut.jpg").write_bytes(encode(noise(40, 30, 6), "JPEG")[:-300])
    (tmp_path / "padded.jpg").write_bytes(encode(noise(40, 30, 7), "JPEG") + b"\0" * 64)
    recs = [{"id": name, "image": f"{name}.jpg",
             "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                               {"from": "gpt", "value": "Noise."}]} for name in ("ok", "cut", "padded")]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    out = tmp_path / "out"
    code = convert_main(["--format", "llava", "--input", str(tmp_path / "a.json"), "--media-root",
                         str(tmp_path), "--output", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["written"] == 2 and stats["skipped"] == {"undecodable-image": 1}
    (example,) = stats["skip_examples"]["undecodable-image"]
    assert str(tmp_path / "cut.jpg") in example and "truncated" in example
