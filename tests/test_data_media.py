"""mmit.data.media: content sniffing, decoding to RGB, cheap checks (real samples + hand-made bytes)."""

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmit.data.media import (ImageInfo, check_image, decode_image, media_kind, read_media_bytes,
                             sniff_ext)
from mmit.data.sample import SampleError

SAMPLES = Path(__file__).parents[1] / ".." / "shared" / "samples"


def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    return SAMPLES


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb(size=(8, 6), color=(10, 120, 230)) -> Image.Image:
    return Image.new("RGB", size, color)


# -- sniffing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"),
                                     ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tiff")])
def test_sniff_pil_encoded_images(fmt, ext):
    assert sniff_ext(encode(rgb(), fmt)) == ext


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 3), np.float32))
    return buf.getvalue()


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, points=np.zeros((4, 3), np.float32))
    return buf.getvalue()


@pytest.mark.parametrize("data,ext", [
    (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2mp41", "mp4"),
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ", "mov"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm\x42\x87", "webm"),
    (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", "mkv"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", "wav"),
    (b"RIFF\x24\x00\x00\x00AVI LIST", "avi"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
    (b"\xff\xfb\x90\x64\x00\x00\x00\x00", "mp3"),
    (b"\xff\xf1\x50\x80\x02\x1f\xfc", "aac"),
    (b"fLaC\x00\x00\x00\x22", "flac"),
    (b"OggS\x00\x02\x00\x00", "ogg"),
    (b"%PDF-1.7\n", "pdf"),
    (b"ply\nformat ascii 1.0\n", "ply"),
    (b"hello world, plain text", None),
    (b"", None),
    (b"\xff\xd8", None),
])
def test_sniff_handmade_headers(data, ext):
    assert sniff_ext(data) == ext


def test_sniff_arrays():
    assert sniff_ext(_npy()) == "npy"
    assert sniff_ext(_npz()) == "npz"
    assert media_kind("npy") == "pointcloud" and media_kind("mp4") == "video"
    assert media_kind("jpg") == "image" and media_kind("wav") == "audio" and media_kind(None) is None


def test_lying_extension_handmade(tmp_path):
    """A PNG saved as .jpg and a JPEG saved as .png are sniffed by content."""
    (tmp_path / "xray.jpg").write_bytes(encode(rgb(), "PNG"))
    (tmp_path / "photo.png").write_bytes(encode(rgb(), "JPEG"))
    assert sniff_ext(read_media_bytes(tmp_path / "xray.jpg")) == "png"
    assert sniff_ext(read_media_bytes(tmp_path / "photo.png")) == "jpg"
    assert check_image(read_media_bytes(tmp_path / "xray.jpg"), "xray.jpg").ext == "png"


def test_lying_extension_real_samples():
    root = samples_dir()
    assert sniff_ext(read_media_bytes(root / "otter/images/xray.jpg")) == "png"
    # MANIFEST.md calls breaking_bad.png "really a JPEG"; its bytes are RIFF....WEBPVP8 (WebP, 960x640)
    bb = read_media_bytes(root / "sharegpt4v/examples/breaking_bad.png")
    assert sniff_ext(bb) == "webp"
    assert check_image(bb, "breaking_bad.png") == ImageInfo(960, 640, "webp")
    assert decode_image(bb, "breaking_bad.png").mode == "RGB"
    assert sniff_ext(read_media_bytes(root / "llava/coco/train2017/000000319154.jpg")) == "jpg"
    upper = root / "vision_flan/imgs/ImageNet-C+image_classification_blur_523_ILSVRC2012_val_00005365.JPEG"
    assert sniff_ext(read_media_bytes(upper)) == "jpg"
    for mp4 in sorted((root / "video_llama/examples").glob("*.mp4")):
        assert sniff_ext(read_media_bytes(mp4)) in ("mp4", "mov", "m4v"), mp4
    wavs = sorted(root.rglob("*.wav"))
    assert wavs and all(sniff_ext(read_media_bytes(w)) == "wav" for w in wavs)


# -- decoding -----------------------------------------------------------------------------------

def test_rgba_composited_onto_white():
    im = Image.new("RGBA", (2, 1))
    im.putpixel((0, 0), (255, 0, 0, 0))      # fully transparent red -> white
    im.putpixel((1, 0), (0, 0, 255, 255))    # opaque blue stays blue
    out = decode_image(encode(im, "PNG"), "rgba.png")
    assert out.mode == "RGB" and out.size == (2, 1)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)


def test_half_transparent_blends():
    im = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    r, g, b = decode_image(encode(im, "PNG"), "x").getpixel((0, 0))
    assert 120 <= r <= 135 and r == g == b


def test_palette_grayscale_la_16bit_cmyk_to_rgb():
    pal = rgb((4, 4), (200, 10, 10)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    out = decode_image(encode(pal, "PNG"), "pal.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (200, 10, 10)

    pal_t = Image.new("P", (2, 1))
    pal_t.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal_t.putpixel((0, 0), 0)
    pal_t.putpixel((1, 0), 1)
    out = decode_image(encode(pal_t, "PNG", transparency=0), "pal_t.png")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 255, 0)

    gray = Image.new("L", (3, 3), 77)
    out = decode_image(encode(gray, "PNG"), "gray.png")
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (77, 77, 77)

    la = Image.new("LA", (1, 1), (0, 0))
    assert decode_image(encode(la, "PNG"), "la.png").getpixel((0, 0)) == (255, 255, 255)

    g16 = Image.fromarray(np.full((2, 2), 65535, np.uint16))
    out = decode_image(encode(g16, "PNG"), "g16.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)

    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    out = decode_image(encode(cmyk, "JPEG"), "cmyk.jpg")
    assert out.mode == "RGB" and min(out.getpixel((0, 0))) > 240


def test_real_modes_and_sizes():
    imgs = samples_dir() / "vision_flan" / "imgs"
    cases = {
        "CLEVR+question_answer_184_CLEVR_train_003462.png": ("RGBA", (480, 320)),
        "DOCVQA+question_answer_394_qjyg0023_4.png": (None, (1692, 2245)),
        "GTSRB+image_classification_48_00000_00001.jpeg": (None, (39, 37)),
        "MNIST-M+number_recognition_153_00058887.png": (None, (32, 32)),
        "GEOMETRY3K+geometry_question_answer_391_img_diagram.png": ("RGBA", (238, 160)),
    }
    for name, (mode, size) in cases.items():
        data = read_media_bytes(imgs / name)
        if mode:
            assert Image.open(io.BytesIO(data)).mode == mode
        out = decode_image(data, name)
        assert out.mode == "RGB" and out.size == size, name
        assert check_image(data, name)[:2] == size
    otter = sorted((samples_dir() / "otter/images").glob("*"))
    assert otter and all(decode_image(read_media_bytes(p), str(p)).mode == "RGB" for p in otter)


# -- errors ---------------------------------------------------------------------------------------

def test_undecodable_bytes_name_the_file():
    for fn in (decode_image, check_image):
        with pytest.raises(SampleError) as e:
            fn(b"<html>404 not found</html>", "/data/coco/0001.jpg")
        assert e.value.reason == "undecodable-image"
        assert "/data/coco/0001.jpg" in str(e.value)


def test_truncated_jpeg_header_check_vs_full_decode():
    """A truncated JPEG (no end-of-image marker) is refused by the header check too (issue 16: it
    used to pass and was only dropped at training time); damage that keeps the file's length only
    shows in a full decode (tests/fuzz/test_image_completeness.py has more)."""
    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(arr), "JPEG", quality=95)
    assert check_image(data, "ok.jpg") == ImageInfo(64, 64, "jpg")
    cut = data[: len(data) // 2]
    for full in (False, True):
        with pytest.raises(SampleError) as e:
            check_image(cut, "cut.jpg", full=full)
        assert e.value.reason == "undecodable-image" and "cut.jpg" in str(e.value)
    with pytest.raises(SampleError) as e:
        decode_image(cut, "cut.jpg")
    assert e.value.reason == "undecodable-image" and "cut.jpg" in str(e.value)


def test_png_crc_error_caught_by_header_check():
    data = bytearray(encode(rgb((16, 16)), "PNG"))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + length] ^= 0xFF  # first CRC byte of the IDAT chunk
    with pytest.raises(SampleError) as e:
        check_image(bytes(data), "bad_crc.png")
    assert e.value.reason == "undecodable-image" and "bad_crc.png" in str(e.value)


def test_pixel_cap():
    data = encode(rgb((100, 100)), "PNG")
    for fn in (decode_image, check_image):
        with pytest.raises(SampleError) as e:
            fn(data, "big.png", max_pixels=5_000)
        assert e.value.reason == "image-too-large" and "big.png" in str(e.value)
    assert decode_image(data, "ok.png", max_pixels=10_000).size == (100, 100)


def test_read_media_bytes(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"\x00\x01\x02")
    assert read_media_bytes(p) == b"\x00\x01\x02"
    with pytest.raises(FileNotFoundError):
        read_media_bytes(tmp_path / "nope.jpg")


def test_read_media_bytes_when_the_size_changes_or_reads_come_short(tmp_path, monkeypatch):
    """One ``read`` serves a file that still has its ``fstat`` size; a file that grew or shrank
    after ``fstat``, or a system that returns fewer bytes per read, still gives the whole file,
    and growth past the cap is still refused."""
    import os

    from mmit.data import media

    body = bytes(range(256)) * 40  # 10 KiB, above HEAD_BYTES
    p = tmp_path / "a.jpg"
    p.write_bytes(body)
    real_open, real_read = media._open_regular, os.read
    for seen in (100, len(body) + 100, 0):  # grew after fstat, shrank, was empty
        monkeypatch.setattr(media, "_open_regular", lambda path, seen=seen: (real_open(path)[0], seen))
        assert read_media_bytes(p) == body
    monkeypatch.setattr(media, "_open_regular", lambda path: (real_open(path)[0], 100))
    with pytest.raises(SampleError) as e:
        read_media_bytes(p, max_bytes=5000)  # it grew past its cap while being read
    assert e.value.reason == "media-too-large" and "a.jpg" in str(e.value)
    # a file read at once because fstat saw it under every kind's cap, that then grew past the
    # image cap: its own kind's cap decides (a video here), as when fstat had seen it whole
    caps = {"image": 5000, "video": 50000, "audio": 20000, "pointcloud": 20000}
    monkeypatch.setattr(media, "MAX_MEDIA_BYTES", caps)
    video = body[:4] + b"ftypisom" + body[12:]
    (tmp_path / "v.mp4").write_bytes(video)
    assert read_media_bytes(tmp_path / "v.mp4") == video
    with pytest.raises(SampleError) as e:
        read_media_bytes(p)  # the JPEG-named bytes are no video: the image cap
    assert e.value.reason == "media-too-large"
    monkeypatch.undo()
    monkeypatch.setattr(media, "_open_regular", real_open)
    calls = []
    monkeypatch.setattr(media.os, "read", lambda fd, n: calls.append(n) or real_read(fd, min(n, 999)))
    assert read_media_bytes(p) == body and len(calls) > 10  # short reads
    calls.clear()
    monkeypatch.setattr(media.os, "read", lambda fd, n: calls.append(n) or real_read(fd, n))
    assert read_media_bytes(p) == body and calls == [len(body) + 1]  # the usual case: one read
    assert read_media_bytes(p, kind="image") == body and calls[1:] == [media.HEAD_BYTES, len(body) + 1]
