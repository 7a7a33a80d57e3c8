"""Whether an image file is complete: each format's end marker, found without decoding pixels.

JPEG must reach its EOI marker (walking the marker segments, so a thumbnail's EOI inside APP1 does not
count), PNG a complete ``IEND`` chunk, GIF the 0x3B trailer, WebP the size its RIFF header announces.
Bytes after the end (padding, an appended video) are allowed. Used by the default ``--check header``
image check (:func:`mmit.data.media.check_image`); a truncated file is an ``undecodable-image`` skip.
"""

from __future__ import annotations

import bisect
import re
import threading
from typing import List, Optional, Tuple

import numpy as np

_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")
#: Files with more bytes than this to walk find their JPEG markers with numpy (:class:`_Markers`);
#: shorter ones with the regular expression, whose start-up costs less there.
_VECTOR_FROM = 4096
#: Restart markers (FF D0-D7) :class:`_Markers` passes over one search each before it lists every
#: marker with numpy: none, since a file that has one has one per restart interval (tens to
#: thousands) and one listing costs about what 4 searches do.
_RST_LIMIT = 0
#: Elements of the per-thread scratch array the vectorised search reuses (16 MiB at most).
_SCRATCH_MAX = 1 << 24
_SCRATCH = threading.local()


def _scratch(n: int) -> np.ndarray:
    """A boolean array of length ``n``: a view of this thread's reused buffer (up to
    :data:`_SCRATCH_MAX` elements), a fresh array above that."""
    if n > _SCRATCH_MAX:
        return np.empty(n, bool)
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) < n:
        buf = _SCRATCH.buf = np.empty(min(max(n, 1 << 17), _SCRATCH_MAX), bool)
    return buf[:n]


def _marker_flags(data: bytes, start: int) -> np.ndarray:
    """``flag[k]``: whether ``data[start + k]`` is 0xFF and the byte after it is not 0x00 (a marker, a
    restart marker or a fill byte: ~10 in a photo's scan data, where 0xFF is followed by 0x00
    ~250 times). Two passes: the 0xFF test, then a logical AND with the next bytes themselves (as
    uint8: non-zero is true). A view of this thread's scratch array (a fresh 50 KB array per file
    cost more than the comparisons), valid until the next call in this thread."""
    a = np.frombuffer(data, np.uint8, offset=start)
    flag = _scratch(len(a) - 1)
    np.equal(a[:-1], 0xFF, out=flag)
    np.logical_and(flag.view(np.uint8), a[1:], out=flag)
    return flag


class _Markers:
    """``find(pos)``: the first position ``i >= pos`` (``pos >= start``) where :data:`_JPEG_MARKER`
    matches (``data[i] == 0xFF`` and ``data[i + 1]`` neither 0x00 nor 0xD0-0xD7), or -1.

    Above :data:`_VECTOR_FROM` bytes after ``start``, one vectorised pass flags the candidates
    (:func:`_marker_flags`) and each search is an ``argmax`` over the flags from ``pos``, which
    stops at the first one: a baseline photo's walk is one search that lands on its EOI. Once a
    search meets more than :data:`_RST_LIMIT` restart markers, every marker is listed by numpy and
    searched by bisection (a file with restart intervals has one per interval).
    Shorter files use the regular expression, whose start-up costs less there. The three ways give
    the same answers (``tests/test_convert_fast_paths.py``).
    """

    def __init__(self, data: bytes, start: int):
        self.data, self.start, self.rst = data, start, 0
        self.flag = _marker_flags(data, start) if len(data) - start > max(_VECTOR_FROM, 1) else None
        self.marks: Optional[List[int]] = None

    def find(self, pos: int) -> int:
        data, flag = self.data, self.flag
        if flag is None:
            m = _JPEG_MARKER.search(data, pos)
            return -1 if m is None else m.start()
        if self.marks is not None:
            k = bisect.bisect_left(self.marks, pos)
            return self.marks[k] if k < len(self.marks) else -1
        k = pos - self.start
        while k < len(flag):
            j = k + int(flag[k:].argmax())
            if not flag[j]:
                return -1
            i = self.start + j
            if not 0xD0 <= data[i + 1] <= 0xD7:
                return i
            self.rst += 1
            if self.rst > _RST_LIMIT:
                found = np.flatnonzero(flag)
                after = np.frombuffer(data, np.uint8, offset=self.start)[found + 1]
                self.marks = (found[(after < 0xD0) | (after > 0xD7)] + self.start).tolist()
                return self.find(pos)
            k = j + 1
        return -1


def jpeg_end(data: bytes, start: int = 2) -> Optional[str]:
    """None when the JPEG reaches its EOI marker (FF D9), else what is missing.

    Walks the marker segments from SOI (lengths skipped: an EXIF thumbnail's own EOI does not
    count) and takes, after each scan, the first marker in its entropy-coded data, as libjpeg
    reads the file. Bytes before a marker that libjpeg would skip ("extraneous bytes") are skipped;
    bytes after EOI (padding, a Motion Photo's appended video) are allowed. Without its EOI,
    Pillow refuses to decode a JPEG ("image file is truncated") unless LOAD_TRUNCATED_IMAGES.
    ``start``: where the walk begins, 2 (after SOI) or the first byte after a segment that an
    earlier walk over the same bytes reached (:func:`mmit.data.image_header._jpeg_info` passes the
    end of the first SOS segment, so that the header is not walked twice).

    ``data``: the encoded file (``bytes``); returns the reason as text, never raises. Marker syntax:
    ITU-T T.81 (JPEG) Annex B.
    """
    n, pos = len(data), start
    markers = _Markers(data, start)
    while True:
        start = markers.find(pos)
        if start < 0:
            return "no end-of-image marker (FF D9): the file ends inside the image data"
        code, pos = data[start + 1], start + 2  # pos: first byte after the marker code
        if code == 0xFF:  # fill byte: the marker code comes later
            pos -= 1
            continue
        if code == 0xD9:
            return None
        if code in (0x01, 0xD8):  # TEM, a stray SOI: no length field
            continue
        if pos + 2 > n:
            return f"marker FF {code:02X} at byte {start} is cut off"
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2 or pos + length > n:
            return (f"segment FF {code:02X} at byte {start} needs {length} bytes, the "
                    f"file ends after {n - pos}")
        pos += length  # SOS: the search for the next marker skips the scan's entropy-coded data


def _png_end(data: bytes) -> Optional[str]:
    """None when the chunk walk from the signature reaches a complete ``IEND`` chunk."""
    n, pos = len(data), 8
    while pos + 8 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length  # length, type, data, CRC
        if end > n:
            return (f"chunk {ctype!r} at byte {pos} needs {12 + length} bytes, the file ends "
                    f"after {n - pos}")
        if ctype == b"IEND":
            return None
        pos = end
    return "no IEND chunk: the file ends after the last complete chunk"


def _gif_end(data: bytes) -> Optional[str]:
    """None when the block walk (extensions, images and their data sub-blocks) reaches the GIF
    trailer (0x3B). Unknown bytes between blocks are skipped, as Pillow does."""
    n = len(data)
    if n < 13:
        return "the logical screen descriptor is cut off"
    flags, pos = data[10], 13
    if flags & 0x80:
        pos += 3 << ((flags & 7) + 1)  # global colour table
    while pos < n:
        block = data[pos]
        if block == 0x3B:
            return None
        if block == 0x21:  # extension: label, then data sub-blocks
            pos += 2
        elif block == 0x2C:  # image descriptor (10 bytes), local colour table, LZW code size
            if pos + 10 > n:
                break
            local = data[pos + 9]
            pos += 10 + ((3 << ((local & 7) + 1)) if local & 0x80 else 0) + 1
        else:
            pos += 1
            continue
        while pos < n:  # data sub-blocks: a length byte, that many bytes; 0 ends them
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
        else:
            break
        if pos > n:
            break
    return "no GIF trailer (0x3B): the file ends inside a block"


def _webp_end(data: bytes) -> Optional[str]:
    """None when the file holds the bytes its RIFF header announces (one missing pad byte is
    tolerated) and every chunk in it is complete."""
    n = len(data)
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    if n + 1 < riff_end:
        return f"the RIFF header announces {riff_end} bytes, the file has {n}"
    end, pos = min(n, riff_end), 12
    while pos + 8 <= end:
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        if pos + 8 + size > end:
            return (f"chunk {data[pos:pos + 4]!r} at byte {pos} needs {8 + size} bytes, the file "
                    f"ends after {end - pos}")
        pos += 8 + size + (size & 1)
    return None


_END_CHECKS = {"jpg": jpeg_end, "png": _png_end, "gif": _gif_end, "webp": _webp_end}


def truncation_error(data: bytes, ext: Optional[str]) -> Optional[str]:
    """Why the encoded image ``data`` of type ``ext`` (``jpg``, ``png``, ``gif``, ``webp``; other
    types are not checked) is cut short, or None when its end is in the file.

    Structural only, no pixels decoded: JPEG's EOI marker, PNG's ``IEND`` chunk, GIF's trailer,
    WebP's RIFF size. Data after that end (zero padding, appended metadata or video) is allowed.
    Part of :func:`check_image`.
    """
    fn = _END_CHECKS.get(ext or "")
    return None if fn is None else fn(bytes(data))
