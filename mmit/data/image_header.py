"""Fast header check for common JPEG, PNG and WebP files: :func:`check_image`'s answer without Pillow.

``mmit convert`` checks every image (:func:`mmit.data.media.check_image`, ``full=False``): Pillow's
``Image.open`` + ``verify()`` + the end-marker walk (:mod:`mmit.data.image_end`). Building Pillow's
image object costs more than copying the bytes into a shard, so :func:`fast_image_info` parses the
formats that make up most datasets itself and answers only when it is SURE that the Pillow path
accepts the file with the same ``(width, height, ext)``. Anything it does not fully model returns
None and the caller runs the Pillow path, so refusals (and their messages) always come from Pillow.

Accepted here (each condition mirrors Pillow 12's plugin code, ``JpegImagePlugin`` / ``PngImagePlugin``):

* JPEG: segments from SOI to the first SOS, back to back (fill bytes allowed, no junk), only APPn,
  COM, DQT, DHT, DRI and one SOF0/1/2 (8-bit, 1/3/4 components, whole component triples);
  no MPF APP2 (Pillow would make it an MPO), JFIF/Adobe/ICC/Photoshop segments long enough for
  Pillow's parsers, EXIF that Pillow's DPI reader parses or refuses in the ways it catches; then the
  file reaches its EOI marker (:func:`mmit.data.image_end.truncation_error`).
* PNG: IHDR first (13 bytes, a bit depth / colour type Pillow knows, filter 0, interlace 0/1), every
  chunk type four ASCII letters, every chunk's CRC right (Pillow's ``verify`` checks all but
  ``IEND``'s), chunks before the first IDAT only ones whose Pillow handler cannot fail on them (no
  APNG ``acTL``/``fcTL``/``fdAT``, no ``zTXt``, no compressed ``iTXt``), a complete ``IEND``.

* WebP: the simple format only (RIFF holding exactly one ``VP8 `` or ``VP8L`` chunk, padded, that
  ends where the RIFF size says; no ``VP8X``), with the frame header checks libwebp 1.6 applies in
  ``WebPGetFeatures`` / ``WebPDemux`` (VP8: key frame, profile <= 3, shown, partition inside the
  chunk, signature ``9d 01 2a``; VP8L: signature ``2f``, version 0), at most 16 megapixels (Pillow's
  animation decoder allocates two canvases of 4 bytes a pixel; a failed allocation is a refusal).

All: width and height above 0, ``width * height`` within ``max_pixels`` and Pillow's decompression
bomb limit, ``ImageFile.LOAD_TRUNCATED_IMAGES`` off, Pillow 12 installed (the version mirrored;
another sends every file to Pillow until the mirror is re-checked). ``tests/test_image_header.py``
compares this with the Pillow path on real, generated, corrupted and randomly mutated files.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Dict, List, Optional, Tuple

import PIL
from PIL import Image, ImageFile, PngImagePlugin, TiffImagePlugin

from mmit.data.image_end import jpeg_end

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: JPEG segment codes whose Pillow handler only reads (and, for these, parses) the segment.
_JPEG_SEGMENTS = frozenset([0xC0, 0xC1, 0xC2, 0xC4, 0xDA, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)])
#: PNG chunks before the first IDAT whose Pillow handler this module mirrors.
_PNG_HANDLED = frozenset([b"IHDR", b"IDAT", b"PLTE", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"pHYs",
                          b"tEXt", b"iTXt", b"iCCP", b"eXIf"])
#: The plugin code mirrored here is Pillow 12's; with another major version every file goes to Pillow.
_PILLOW_MIRRORED = PIL.__version__.split(".")[0] == "12"
_EXIF_CAUGHT = (struct.error, KeyError, SyntaxError, TypeError, ValueError, ZeroDivisionError)


def fast_image_info(data: bytes, max_pixels: int) -> Optional[Tuple[int, int, str]]:
    """``(width, height, ext)`` of ``data`` when the Pillow check would accept it with exactly
    these values (module docstring), else None: the caller must run the Pillow path.

    Never raises; a None says nothing about whether the file is good. Cost: a walk over the JPEG
    markers or PNG chunks (CRC-32 at C speed), no image object.
    """
    if not _PILLOW_MIRRORED or ImageFile.LOAD_TRUNCATED_IMAGES or not isinstance(data, bytes):
        return None
    try:
        if data[:3] == b"\xff\xd8\xff":
            info = _jpeg_info(data)
        elif data[:8] == _PNG_MAGIC:
            info = _png_info(data)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            info = _webp_info(data)
        else:
            return None
    except Exception:  # a case the parsers did not foresee: let Pillow decide
        return None
    if info is None:
        return None
    w, h = info[0], info[1]
    bomb = Image.MAX_IMAGE_PIXELS
    if w <= 0 or h <= 0 or w * h > max_pixels or (bomb is not None and w * h > 2 * bomb):
        return None
    return info


# -- JPEG -----------------------------------------------------------------------------------------

def _jpeg_info(data: bytes) -> Optional[Tuple[int, int, str]]:
    """Width, height and ``jpg`` when Pillow's JPEG parser opens ``data`` as a plain JPEG of that
    size and the file reaches its EOI marker; None otherwise (or when unsure)."""
    n, pos = len(data), 2
    size: Optional[Tuple[int, int]] = None
    icc: List[bytes] = []
    exif: Optional[bytes] = None
    dpi = False
    while True:
        if pos + 1 >= n or data[pos] != 0xFF:
            return None  # cut off, or junk Pillow would skip byte by byte: let it decide
        while data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
            if pos + 1 >= n:
                return None
        code = data[pos + 1]
        if code not in _JPEG_SEGMENTS or pos + 4 > n:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > n:
            return None
        s = data[pos + 4:pos + 2 + length]
        pos += 2 + length
        if code == 0xDA:  # start of scan: Pillow's header parse ends here
            break
        if code in (0xC0, 0xC1, 0xC2):
            if size is not None or len(s) < 6 or s[0] != 8 or s[5] not in (1, 3, 4) \
                    or (len(s) - 6) % 3:
                return None
            if icc and min(len(p) for p in icc) < 14:
                return None
            icc = []
            size = ((s[3] << 8) | s[4], (s[1] << 8) | s[2])
        elif code == 0xDB and not _dqt_ok(s):
            return None
        elif 0xE0 <= code <= 0xEF:
            ok, exif, dpi = _app_ok(code, s, exif, dpi, icc)
            if not ok:
                return None
    if size is None:
        return None
    if exif is not None and not dpi and not _exif_dpi_ok(exif):
        return None
    if jpeg_end(data, pos) is not None:  # the end walk goes on from the first scan
        return None
    return size[0], size[1], "jpg"


def _dqt_ok(s: bytes) -> bool:
    """Whether Pillow's DQT handler reads every quantization table in ``s`` without error."""
    while s:
        qt_length = 1 + (1 if s[0] // 16 == 0 else 2) * 64
        if len(s) < qt_length:
            return False
        s = s[qt_length:]
    return True


def _app_ok(code: int, s: bytes, exif: Optional[bytes], dpi: bool, icc: List[bytes]
            ) -> Tuple[bool, Optional[bytes], bool]:
    """Pillow's APPn handler on segment ``s``: (no error and not an MPO, EXIF so far, DPI set)."""
    if code == 0xE0 and s.startswith(b"JFIF"):
        if len(s) < 7:
            return False, exif, dpi
        dpi = dpi or (len(s) >= 12 and s[7] in (1, 2))
    elif code == 0xE1 and s.startswith(b"Exif\0\0"):
        exif = s if exif is None else exif + s[6:]
    elif code == 0xE2 and s.startswith(b"ICC_PROFILE\0"):
        icc.append(s)
    elif code == 0xE2 and s.startswith(b"MPF\0"):
        return False, exif, dpi  # Pillow may open it as an MPO
    elif code == 0xED and s.startswith(b"Photoshop 3.0\x00"):
        return _photoshop_ok(s), exif, dpi
    elif code == 0xEE and s.startswith(b"Adobe") and len(s) < 7:
        return False, exif, dpi
    return True, exif, dpi


def _photoshop_ok(s: bytes) -> bool:
    """Whether Pillow's Photoshop resource walk ends normally or with the ``struct.error`` it
    catches (an ``IndexError`` would fail ``Image.open``)."""
    offset = 14
    try:
        while s[offset:offset + 4] == b"8BIM":
            offset += 4
            code = struct.unpack_from(">H", s, offset)[0]
            offset += 2
            offset += 1 + s[offset]
            offset += offset & 1
            size = struct.unpack_from(">I", s, offset)[0]
            offset += 4
            if code == 0x03ED:  # ResolutionInfo: Pillow unpacks its first 14 bytes
                struct.unpack_from(">IH2xIH", s[offset:offset + size])
            offset += size
            offset += offset & 1
    except struct.error:
        return True
    except Exception:
        return False
    return True


def _exif_dpi_ok(exif: bytes) -> bool:
    """Whether Pillow's ``_read_dpi_from_exif`` on this EXIF ends normally or with an error it
    catches (other errors fail ``Image.open``). For a classic TIFF header, IFD0 is walked here as
    ``ImageFileDirectory_v2.load`` walks it (same stops) and only the two tags the DPI code reads
    are handed to Pillow's own value decoding: ~10x cheaper than parsing every tag."""
    data = exif
    while data.startswith(b"Exif\0\0"):
        data = data[6:]
    head = data[:8]
    if len(head) < 8 or head[:4] not in (b"II*\0", b"MM\0*"):
        return _exif_dpi_ok_pillow(exif)
    end = "<" if head[:1] == b"I" else ">"
    found = _ifd0_tags(data, end, (0x0128, 0x011A))
    unit, x_resolution = found.get(0x0128), found.get(0x011A)
    if unit is None:
        return True  # the DPI code's first lookup raises KeyError, which it catches
    if unit[0] == 3 and len(unit[1]) == 2 and (
            x_resolution is None or (x_resolution[0] in (5, 10) and len(x_resolution[1]) == 8)):
        # one SHORT unit; no resolution (KeyError) or one (signed) RATIONAL: Pillow's IFDRational,
        # whose float is a number or NaN (ValueError): nothing escapes the DPI code's except
        return True
    ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
    for tag, (typ, value) in found.items():
        ifd._tagdata[tag], ifd.tagtype[tag] = value, typ
    ex = Image.Exif()
    ex._info = ifd
    return _dpi_from_exif_ok(ex)


def _ifd0_tags(data: bytes, end: str, want: Tuple[int, ...]) -> Dict[int, Tuple[int, bytes]]:
    """``{tag: (type, raw value)}`` for the tags in ``want`` that Pillow's IFD loader keeps: entries
    of a known type, value not empty, read until an entry or a value runs past the data (where
    Pillow's loader stops on its ``OSError``); a later duplicate replaces an earlier one."""
    dispatch = TiffImagePlugin.ImageFileDirectory_v2._load_dispatch
    n, found = len(data), {}  # type: Tuple[int, Dict[int, Tuple[int, bytes]]]
    pos = struct.unpack(end + "L", data[4:8])[0]
    if pos + 2 > n:
        return found
    count = struct.unpack(end + "H", data[pos:pos + 2])[0]
    pos += 2
    for _ in range(count):
        if pos + 12 > n:
            break
        tag, typ, n_values, raw = struct.unpack(end + "HHL4s", data[pos:pos + 12])
        pos += 12
        if typ not in dispatch:
            continue
        size = n_values * dispatch[typ][0]
        if size > 4:
            offset = struct.unpack(end + "L", raw)[0]
            if offset + size > n:
                break
            raw = data[offset:offset + size]
        else:
            raw = raw[:size]
        if raw and tag in want:
            found[tag] = (typ, raw)
    return found


def _exif_dpi_ok_pillow(exif: bytes) -> bool:
    """:func:`_exif_dpi_ok` through ``Image.Exif.load`` (any TIFF header Pillow accepts)."""
    try:
        ex = Image.Exif()
        ex.load(exif)
    except _EXIF_CAUGHT:
        return True
    except Exception:
        return False
    return _dpi_from_exif_ok(ex)


def _dpi_from_exif_ok(ex: "Image.Exif") -> bool:
    """Pillow's DPI code on a loaded EXIF, repeated: False when it raises what Pillow lets through."""
    try:
        resolution_unit = ex[0x0128]
        x_resolution = ex[0x011A]
        try:
            value = float(x_resolution[0]) / x_resolution[1]
        except TypeError:
            value = x_resolution
        if math.isnan(value):
            raise ValueError("DPI is not a number")
        if resolution_unit == 3:
            value *= 2.54
    except _EXIF_CAUGHT:
        return True
    except Exception:
        return False
    return True


# -- WebP -----------------------------------------------------------------------------------------

#: Largest simple WebP decided here (width * height): libwebp's canvases stay small enough to allocate.
_WEBP_MAX_PIXELS = 1 << 24


def _webp_info(data: bytes) -> Optional[Tuple[int, int, str]]:
    """Width, height and ``webp`` when ``data`` is a simple lossy/lossless WebP that libwebp's
    demuxer and Pillow's animation decoder open, and the file holds all the RIFF size announces;
    None otherwise (extended ``VP8X`` files, trailing chunks, anything odd)."""
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    size = int.from_bytes(data[16:20], "little")
    if riff_end < 20 or riff_end > 0xFFFFFFF6 or len(data) < riff_end or 20 + size + (size & 1) != riff_end:
        return None
    fourcc, p = data[12:16], data[20:20 + size]
    if fourcc == b"VP8 ":  # libwebp VP8GetInfo
        if size < 10 or p[3:6] != b"\x9d\x01\x2a":
            return None
        bits = p[0] | (p[1] << 8) | (p[2] << 16)
        if bits & 1 or (bits >> 1) & 7 > 3 or not (bits >> 4) & 1 or bits >> 5 >= size:
            return None
        w, h = (p[6] | (p[7] << 8)) & 0x3FFF, (p[8] | (p[9] << 8)) & 0x3FFF
    elif fourcc == b"VP8L":  # libwebp VP8LGetInfo
        if size < 5 or p[0] != 0x2F:
            return None
        v = int.from_bytes(p[1:5], "little")
        if v >> 29:
            return None
        w, h = (v & 0x3FFF) + 1, ((v >> 14) & 0x3FFF) + 1
    else:
        return None
    if w * h > _WEBP_MAX_PIXELS:
        return None
    return w, h, "webp"


# -- PNG ------------------------------------------------------------------------------------------

def _png_info(data: bytes) -> Optional[Tuple[int, int, str]]:
    """Width, height and ``png`` when Pillow's PNG parser opens ``data``, its ``verify`` finds every
    CRC right and the chunk walk reaches a complete ``IEND``; None otherwise (or when unsure)."""
    n, pos = len(data), 8
    view = memoryview(data)
    mode, size, idat, text = "", None, False, 0
    while True:
        if pos + 8 > n:
            return None
        length = int.from_bytes(data[pos:pos + 4], "big")
        cid = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > n or not (cid.isalpha() and cid.isascii()):
            return None
        if cid == b"IEND":
            break
        if zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return None
        if not idat:
            s = data[pos + 8:end - 4]
            if size is None:
                if cid != b"IHDR" or length != 13:
                    return None
                kind = PngImagePlugin._MODES.get((s[8], s[9]))
                if kind is None or s[10] != 0 or s[11] != 0 or s[12] > 1:
                    return None
                mode, size = kind[0], (int.from_bytes(s[0:4], "big"), int.from_bytes(s[4:8], "big"))
            elif cid in _PNG_HANDLED:
                if not _png_chunk_ok(cid, s, mode):
                    return None
                idat = cid == b"IDAT"
                if cid in (b"tEXt", b"iTXt"):
                    text += length
                    if text > PngImagePlugin.MAX_TEXT_MEMORY:
                        return None
            elif hasattr(PngImagePlugin.PngStream, "chunk_" + cid.decode("ascii")):
                return None  # a handler this module does not mirror (APNG, zTXt, ...)
        pos = end
    if not idat or size is None:
        return None
    return size[0], size[1], "png"


def _png_chunk_ok(cid: bytes, s: bytes, mode: str) -> bool:
    """Whether Pillow's handler for chunk ``cid`` (before the first IDAT) accepts payload ``s``."""
    if cid == b"IHDR":
        return False  # a second header
    if cid == b"tRNS":
        need = {"1": 2, "L": 2, "I;16": 2, "RGB": 6}.get(mode, 0)
        return len(s) >= need
    if cid == b"gAMA":
        return len(s) >= 4
    if cid == b"cHRM":
        return len(s) % 4 == 0
    if cid == b"sRGB":
        return len(s) >= 1
    if cid == b"pHYs":
        return len(s) >= 9
    if cid == b"iTXt":  # Pillow decompresses a compressed one (ValueError when too large)
        parts = s.split(b"\0", 1)
        return len(parts) < 2 or len(parts[1]) < 2 or not (parts[1][0] != 0 and parts[1][1] == 0)
    if cid == b"iCCP":
        i = s.find(b"\0")
        if i + 1 >= len(s) or s[i + 1] != 0:
            return False
        try:
            PngImagePlugin._safe_zlib_decompress(s[i + 2:])
        except zlib.error:
            return True
        except Exception:
            return False
    return True  # IDAT, PLTE, tEXt, eXIf: read as they are
