"""Media bytes: content sniffing, image decoding to RGB, cheap integrity checks.

File extensions lie in real datasets (``otter/images/xray.jpg`` is a PNG, ShareGPT4V's
``breaking_bad.png`` is really a WebP, although the samples MANIFEST calls it a JPEG), so the type of a media item is always taken
from its first bytes (:func:`sniff_ext`), never from its name.

Decoding policy (:func:`decode_image`): the result is always an 8-bit ``RGB`` ``PIL.Image.Image``.

* Transparent images (``RGBA``, ``LA``, ``PA``, ``P`` with a ``transparency`` entry) are alpha-composited
  onto **white**. LLaVA's ``Image.open(f).convert("RGB")`` instead keeps whatever colour the transparent
  pixels store (often black), which turns black-on-transparent diagrams (Geometry3K, AI2D-style
  figures) into black squares. The two agree wherever alpha is 255 (e.g. the CLEVR RGBA PNGs).
* Palette, grayscale (``L``, ``1``), ``CMYK`` and ``YCbCr`` go through ``convert("RGB")``; 16-bit and
  32-bit grayscale (``I;16``, ``I``, ``F``) are scaled to 0..255 first instead of being clipped.
* EXIF orientation is **not** applied, matching LLaVA / HF image processors that read the stored
  pixel grid as is.
* Animated images (GIF/WebP): the first frame.
* Reduced-size JPEG decoding (optional, :class:`Draft`): when the caller will shrink the image anyway,
  a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, PIL ``Image.draft``),
  never below ``reducing_gap`` (default 2) times the size the caller's resize needs, as PIL's own
  ``Image.thumbnail`` does, and only by a factor that divides both sides (and, for ``pad``, the pad
  offset), so the smaller image is the same picture at the same place. A 1504x1000 JPEG for a 336 px
  ``pad`` tower is decoded at 752x500: a quarter of the pixels to decode and to resize. The tower
  input then differs from a full decode's by at most 8 levels of 255 at any pixel and 0.5 on average
  at 224-336 px, 16 and 2.5 for a 32 px tiny tower (``tests/test_pipeline_speedups.py``, real photos).
  COCO-sized photos (640x480) are not reduced for 224 px towers and up. Other formats decode in full.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import warnings
from typing import BinaryIO, Dict, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np
from PIL import Image

from mmit.data.image_end import truncation_error  # noqa: F401  (re-exported: check_image uses it)
from mmit.data.image_draft import DRAFT_FITS, Draft  # noqa: F401  (re-exported)
from mmit.data.image_header import fast_image_info
from mmit.data.sample import SampleError

#: Extensions :func:`sniff_ext` returns for still images that PIL decodes.
IMAGE_EXTS = ("jpg", "png", "gif", "webp", "bmp", "tiff")
#: Video containers :func:`sniff_ext` recognises.
VIDEO_EXTS = ("mp4", "mov", "m4v", "webm", "mkv", "avi")
#: Audio formats :func:`sniff_ext` recognises.
AUDIO_EXTS = ("wav", "mp3", "aac", "flac", "ogg", "m4a")

#: Default cap on ``width * height`` of one image (64 megapixels; an 8000x8000 image is allowed).
MAX_PIXELS = 64_000_000
#: Cap on a media file's size in bytes, per kind; a larger file is a ``media-too-large`` skip found
#: from its size alone (nothing is read). Readers take ``max_media_bytes`` to lower entries (not to
#: raise them: :func:`read_media_bytes` applies these caps wherever a file is read, e.g. while a shard
#: is built or a processor decodes, without knowing the reader's options).
MAX_MEDIA_BYTES: Dict[str, int] = {"image": 64 << 20, "video": 2 << 30, "audio": 512 << 20,
                                   "pointcloud": 1 << 30}
#: Bytes read to decide a file's type (:func:`sniff_ext` needs 64; more for the ``.npz`` member name).
HEAD_BYTES = 4096

_ISO_BRANDS = {b"qt  ": "mov", b"M4V ": "m4v", b"M4VH": "m4v", b"M4VP": "m4v", b"M4A ": "m4a",
               b"M4B ": "m4a", b"heic": "heic", b"heix": "heic", b"mif1": "heic", b"msf1": "heic",
               b"avif": "avif", b"avis": "avif"}


def sniff_ext(data: Union[bytes, bytearray, memoryview]) -> Optional[str]:
    """The real file type of ``data`` from its magic bytes, as a lower-case extension without dot.

    Recognised: images ``jpg png gif webp bmp tiff heic avif``; video ``mp4 mov m4v webm mkv avi``;
    audio ``wav mp3 aac flac ogg m4a``; arrays ``npy npz``; also ``zip pdf ply``. Only the first
    ~64 bytes are looked at (more for zip archives, whose first member name decides ``npz``).

    Returns None when nothing matches (empty input, text, truncated headers, unknown formats).
    """
    b = bytes(data[:64])
    if len(b) < 4:
        return None
    if b[:3] == b"\xff\xd8\xff":
        return "jpg"
    if b[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if b[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if b[:4] == b"RIFF" and len(b) >= 12:
        return {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}.get(b[8:12])
    if b[:2] == b"BM" and len(b) >= 14 and b[6:10] == b"\0\0\0\0":
        return "bmp"
    if b[:4] in (b"II*\0", b"MM\0*"):
        return "tiff"
    if len(b) >= 12 and b[4:8] == b"ftyp":
        return _ISO_BRANDS.get(b[8:12], "mp4")
    if b[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska family; the DocType says which
        return "webm" if b"webm" in b else "mkv"
    if b[:6] == b"\x93NUMPY":
        return "npy"
    if b[:4] == b"PK\x03\x04":
        if len(data) >= 30:
            n = struct.unpack("<H", bytes(data[26:28]))[0]
            if bytes(data[30:30 + n]).endswith(b".npy"):
                return "npz"
        return "zip"
    if b[:4] == b"fLaC":
        return "flac"
    if b[:4] == b"OggS":
        return "ogg"
    if b[:3] == b"ID3":
        return "mp3"
    if b[0] == 0xFF and (b[1] & 0xE0) == 0xE0:  # MPEG audio frame sync (JPEG's FFD8 handled above)
        layer = (b[1] >> 1) & 0x3
        return "aac" if layer == 0 else "mp3"
    if b[:4] == b"%PDF":
        return "pdf"
    if b[:4] == b"ply\n" or b[:5] == b"ply\r\n":
        return "ply"
    return None


def media_kind(ext: Optional[str]) -> Optional[str]:
    """``image|video|audio|pointcloud`` for an extension from :func:`sniff_ext`, else None."""
    if ext in IMAGE_EXTS or ext in ("heic", "avif"):
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    if ext in AUDIO_EXTS:
        return "audio"
    if ext in ("npy", "npz", "ply"):
        return "pointcloud"
    return None


class ImageInfo(NamedTuple):
    """What :func:`check_image` learnt from the header: size in pixels and the real extension."""

    width: int
    height: int
    ext: str


#: PIL format name → extension, where the lower-cased name is not already the usual extension.
_PIL_EXTS = {"JPEG": "jpg", "MPO": "jpg", "JPEG2000": "jp2", "TIFF": "tiff", "PPM": "ppm"}


def media_caps(overrides: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
    """:data:`MAX_MEDIA_BYTES` with the entries of ``overrides`` (kind → bytes) replaced.

    Raises ``ValueError`` for an unknown kind, a cap that is not a positive integer, or one above
    :data:`MAX_MEDIA_BYTES` (caps can be lowered, not raised; see there)."""
    caps = dict(MAX_MEDIA_BYTES)
    for kind, cap in dict(overrides or {}).items():
        if kind not in caps:
            raise ValueError(f"max_media_bytes: unknown media kind {kind!r} (expected one of "
                             f"{', '.join(caps)})")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"max_media_bytes[{kind!r}] must be a positive integer, got {cap!r}")
        if cap > caps[kind]:
            raise ValueError(f"max_media_bytes[{kind!r}] = {cap} is above the built-in cap of "
                             f"{caps[kind]} bytes (mmit.data.media.MAX_MEDIA_BYTES); caps can only "
                             "be lowered")
        caps[kind] = cap
    return caps


def _open_regular(path: str) -> Tuple[int, int]:
    """``(descriptor, size)`` of the regular file at ``path`` (:func:`open_media_file`'s checks)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (device, FIFO or socket)", path)
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise


def open_media_file(path: Union[str, "os.PathLike[str]"]) -> Tuple[BinaryIO, int]:
    """``(unbuffered binary file, size in bytes)`` for the regular file at ``path``.

    Opened without blocking (a FIFO named ``x.jpg`` cannot hang the caller) and checked with
    ``fstat`` on the descriptor, so the size is that of the file actually opened. The caller closes
    the file. Raises ``FileNotFoundError`` / ``PermissionError`` / ``IsADirectoryError``, or
    ``OSError(EINVAL)`` for a device, FIFO or socket; every message names ``path``.
    """
    fd, size = _open_regular(os.fspath(path))
    try:
        return os.fdopen(fd, "rb", buffering=0), size
    except BaseException:
        os.close(fd)
        raise


def too_large(where: str, kind: Optional[str], size: int, cap: int) -> SampleError:
    """The ``media-too-large`` :class:`SampleError` for a file of ``size`` bytes above ``cap``."""
    return SampleError(f"{where}: {kind or 'media'} file is {size} bytes, above the cap of {cap} "
                       f"bytes (max_media_bytes)", "media-too-large")


def read_media_bytes(path: Union[str, "os.PathLike[str]"], kind: Optional[str] = None,
                     max_bytes: Optional[int] = None) -> bytes:
    """The whole file at ``path`` as bytes (no decoding), read only when it is under its size cap.

    The size comes from ``fstat`` before anything is read. The cap is ``max_bytes`` if given, else
    :data:`MAX_MEDIA_BYTES` of ``kind`` (``image|video|audio|pointcloud``), else of the kind sniffed
    from the first :data:`HEAD_BYTES` bytes (the image cap for unknown content); a file under every
    kind's cap is read at once, without that first look. So a 1 GiB file named ``.jpg`` costs 4 KiB
    of memory, not 1 GiB. A file that grows while being read is still cut off at the cap. A file
    is read with one ``read`` when it still has the size ``fstat`` gave (more are made when it
    grew or shrank, or the system returned less).

    Raises:
        OSError: ``FileNotFoundError`` / ``IsADirectoryError`` / ``PermissionError``, or
            ``EINVAL`` for a device/FIFO/socket; the message names the path.
        SampleError: ``media-too-large`` (the message names the path, size and cap).
    """
    path = os.fspath(path)
    fd, size = _open_regular(path)
    try:
        k = kind
        smallest = min(MAX_MEDIA_BYTES.values())
        if max_bytes is None and kind is None and size <= smallest:
            cap = smallest  # under every kind's cap: the type is not needed to choose it
        else:
            head = os.read(fd, HEAD_BYTES)
            k = kind or media_kind(sniff_ext(head))
            cap = max_bytes if max_bytes is not None else MAX_MEDIA_BYTES.get(k or "image",
                                                                             MAX_MEDIA_BYTES["image"])
            if size > cap:
                raise too_large(path, k, size, cap)
            os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, min(size, cap) + 1)  # one more byte than fstat saw: did it grow?
        if len(data) == size:
            return data
        if k is None and max_bytes is None and len(data) > size:
            # it grew after fstat: its own kind's cap decides, as for a file seen at that size
            k = media_kind(sniff_ext(data[:HEAD_BYTES]))
            cap = MAX_MEDIA_BYTES.get(k or "image", MAX_MEDIA_BYTES["image"])
        parts, total = [data], len(data)
        while data and total <= cap:
            data = os.read(fd, min(1 << 20, cap + 1 - total))
            parts.append(data)
            total += len(data)
        if total > cap:
            raise too_large(path, k or media_kind(sniff_ext(parts[0][:HEAD_BYTES])), total, cap)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


#: sniffed extension → PIL format name, so ``Image.open`` tries the right plugin first.
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP",
                "tiff": "TIFF"}


def _open(data: bytes, where: str, max_pixels: int) -> Image.Image:
    """``Image.open`` on bytes with our size cap; decoding has not happened yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            hint = _PIL_FORMATS.get(sniff_ext(data))
            try:
                im = Image.open(io.BytesIO(data), formats=[hint] if hint else None)
            except Image.UnidentifiedImageError:
                if hint is None:
                    raise
                im = Image.open(io.BytesIO(data))  # e.g. a plugin not registered: try them all
    except Image.DecompressionBombError as e:
        raise SampleError(f"{where}: image too large: {e}", "image-too-large") from None
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, struct.error, ...
        kind = sniff_ext(data) or "unknown type"
        raise SampleError(f"{where}: undecodable image ({kind}, {len(data)} bytes): {e}",
                          "undecodable-image") from None
    w, h = im.size
    if w * h > max_pixels:
        raise SampleError(f"{where}: image too large: {w}x{h} = {w * h} pixels > cap {max_pixels}",
                          "image-too-large")
    if w <= 0 or h <= 0:
        raise SampleError(f"{where}: undecodable image: empty size {w}x{h}", "undecodable-image")
    return im


def check_image(data: bytes, where: str, max_pixels: int = MAX_PIXELS, full: bool = False
                ) -> ImageInfo:
    """Cheap integrity check of encoded image bytes; returns :class:`ImageInfo` ``(width, height,
    ext)`` with the size in pixels and the extension of the format PIL found (``jpg``, ``png``, ...).

    ``full=False`` (what ``mmit convert`` uses): parse the header with ``Image.open``, run
    ``Image.verify()`` and check that the file is complete (:func:`truncation_error`: a JPEG
    reaches its end-of-image marker, a PNG its ``IEND`` chunk, a GIF its trailer, a WebP holds
    the bytes its RIFF header announces; bytes after that end are allowed, as in real files).
    Cost is microseconds per image, plus a walk over the file's markers / chunks / blocks (under
    0.5 ms for an 800 KB JPEG; PNG's ``verify`` also checks every chunk's CRC). It rejects
    non-image bytes, unknown formats, corrupt headers, truncated JPEG/PNG/GIF/WebP files, PNG CRC
    errors and images above ``max_pixels``, but NOT a file whose compressed data is damaged
    without being cut short (that only shows when the pixels are decoded), nor a truncated BMP or
    TIFF. ``full=True`` also decodes the pixels (:func:`decode_image`): catches everything, but
    costs a full decode (~5 ms for a 640x480 JPEG), which is slower than copying the bytes into a
    shard.

    Raises :class:`SampleError` with reason ``undecodable-image`` or ``image-too-large``; the message
    starts with ``where`` (file path or sample id).

    Most JPEG, PNG and simple WebP files are decided without Pillow
    (:func:`mmit.data.image_header.fast_image_info`: the same answer, 1.5-4x faster, 20x for WebP);
    anything it is unsure of, every refusal included, goes through Pillow (:func:`_check_image_pillow`).
    """
    if not full:
        fast = fast_image_info(data, max_pixels)
        if fast is not None:
            return ImageInfo(*fast)
    return _check_image_pillow(data, where, max_pixels, full)


def _check_image_pillow(data: bytes, where: str, max_pixels: int = MAX_PIXELS, full: bool = False
                        ) -> ImageInfo:
    """:func:`check_image` through Pillow (``Image.open`` + ``verify``, or a full decode), then the
    end-marker walk: the reference the fast header path must agree with."""
    im = _open(data, where, max_pixels)
    info = ImageInfo(im.size[0], im.size[1], _PIL_EXTS.get(im.format, str(im.format).lower()))
    if full:
        decode_image(data, where, max_pixels)
    else:
        try:
            im.verify()
        except Exception as e:
            raise SampleError(f"{where}: undecodable image ({im.format}): {e}",
                              "undecodable-image") from None
    cut = truncation_error(data, info.ext)
    if cut is not None:
        raise SampleError(f"{where}: undecodable image ({im.format}, {len(data)} bytes): "
                          f"truncated: {cut}", "undecodable-image")
    return info


def decode_image(data: bytes, where: str, max_pixels: int = MAX_PIXELS, draft: Optional[Draft] = None
                 ) -> Image.Image:
    """Decode encoded image bytes (any format PIL reads) into an 8-bit RGB image.

    Args:
        data: the encoded file (JPEG, PNG, GIF, WebP, BMP, TIFF, ...); the extension is irrelevant.
        where: file path or sample id, put at the start of every error message.
        max_pixels: reject images with ``width * height`` above this (checked from the header,
            before any pixels are decoded).
        draft: a JPEG may be decoded at 1/2, 1/4 or 1/8 size, never below ``draft.min_size`` (module
            docstring); None decodes every image in full.

    Returns:
        ``PIL.Image.Image`` in mode ``RGB``, size ``(width, height)`` as stored (no EXIF rotation), or
        that size divided by ``draft.scale(width, height)`` (2, 4 or 8, exactly) under ``draft``; fully
        loaded (no open file behind it). Transparency is composited onto white (module doc).

    Raises:
        SampleError: reason ``undecodable-image`` (not an image, unknown format, truncated or
            corrupt data) or ``image-too-large``; the message names ``where``.
    """
    im = _open(data, where, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if draft is not None and im.format in ("JPEG", "MPO"):
                scale = draft.scale(*im.size)
                if scale > 1:
                    im.draft(None, (im.size[0] // scale, im.size[1] // scale))
            im.load()
        return to_rgb(im)
    except SampleError:
        raise
    except Exception as e:  # OSError("image file is truncated"), SyntaxError, ValueError, ...
        raise SampleError(f"{where}: undecodable image ({im.format}): {e}",
                          "undecodable-image") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded PIL image of any mode to ``RGB`` following the module's policy."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.alpha_composite(rgba)
        return out.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 255.0 if mode == "F" else 65535.0
        arr = np.clip(arr, 0.0, top) * (255.0 / top)
        return Image.fromarray(np.round(arr).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")
