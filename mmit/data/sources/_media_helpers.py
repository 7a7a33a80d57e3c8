"""Helpers shared by the MIMIC-IT, VideoChat, WebVid and InstructPix2Pix readers.

Not a format module (the leading ``_`` keeps :mod:`mmit.data.sources` from importing it as one).

* :data:`VIDEO_PLACEHOLDER`: ``"<video>"``, the placeholder a turn carries for each video item (the
  Video-LLaVA / LLaVA-NeXT-Video spelling; :meth:`Sample.validate` only counts ``<image>``, so the
  video readers check the video count themselves with :func:`check_video_placeholders`).
* :func:`decode_base64`: standard **and** URL-safe alphabets (Otter decodes MIMIC-IT with
  ``base64.urlsafe_b64decode``), missing padding, ``data:`` URIs, embedded newlines.
* :func:`attach_file` / :func:`attach_bytes`: the ``load_bytes`` / missing-file rule every reader
  follows (read and sniff, or only check the file exists).
* :func:`report`: the ``missing="skip"|"error"`` policy in one place.
* :func:`image_cell_bytes`: bytes out of a parquet image cell (HF ``datasets`` struct
  ``{bytes, path}`` or a plain binary column).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any, Optional, Tuple

from mmit.data.media import media_kind, read_media_bytes, sniff_ext
from mmit.data.sample import Media, Sample, SampleError
from mmit.data.stats import SkipCounter

#: Placeholder for one video item in turn text (``"<video>\\n"`` prefixes the first user turn).
VIDEO_PLACEHOLDER = "<video>"

_B64_JUNK = re.compile(r"\s+")
_DATA_URI = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)


def check_missing_policy(missing: str) -> None:
    """Raise ``ValueError`` unless ``missing`` is ``"skip"`` or ``"error"``."""
    if missing not in ("skip", "error"):
        raise ValueError(f"missing must be 'skip' or 'error', got {missing!r}")


def report(error: SampleError, missing: str, stats: SkipCounter, record_id: Any) -> None:
    """Apply the missing-media policy to a failed record: raise under ``"error"``, else count the
    skip in ``stats`` under ``error.reason`` (with the message kept as an example)."""
    if missing == "error":
        raise error
    stats.add(error.reason, record_id, str(error))


def decode_base64(text: Any, where: str) -> bytes:
    """Decode a base64 string written with either alphabet.

    Accepts the standard (``+/``) and URL-safe (``-_``) alphabets, missing ``=`` padding, embedded
    whitespace/newlines and a ``data:<mime>;base64,`` prefix. A string mixing both alphabets is
    rejected.

    Returns the decoded bytes (not checked to be an image; see :func:`attach_bytes`).

    Raises:
        SampleError: reason ``bad-base64`` naming ``where`` (not a string, empty, characters outside
            the alphabet, impossible length).
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise SampleError(f"{where}: base64 value is not ASCII text", "bad-base64") from None
    if not isinstance(text, str):
        raise SampleError(f"{where}: base64 value must be a string, got {type(text).__name__}",
                          "bad-base64")
    s = _B64_JUNK.sub("", _DATA_URI.sub("", text.strip(), count=1))
    if not s:
        raise SampleError(f"{where}: empty base64 string", "bad-base64")
    urlsafe = "-" in s or "_" in s
    if urlsafe and ("+" in s or "/" in s):
        raise SampleError(f"{where}: base64 string mixes the standard (+/) and URL-safe (-_) "
                          f"alphabets", "bad-base64")
    s = s.rstrip("=")
    if len(s) % 4 == 1:
        raise SampleError(f"{where}: invalid base64 length ({len(s)} characters without padding)",
                          "bad-base64")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, altchars=b"-_" if urlsafe else None, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SampleError(f"{where}: invalid base64: {e}", "bad-base64") from None


def attach_file(m: Media, where: str, load_bytes: bool, expect: Optional[str] = None) -> None:
    """Check (``load_bytes=False``) or read (``True``) the file at ``m.path``.

    With ``load_bytes`` the whole file goes into ``m.data`` unchanged and ``m.ext`` is sniffed from
    content; ``expect`` (``"image"``/``"video"``) then also checks the sniffed kind.

    Raises:
        SampleError: ``missing-media`` (absent, a folder, unreadable) or ``wrong-media-type``.
    """
    if not load_bytes:
        if not os.path.isfile(m.path):
            what = "is a folder, not a file" if os.path.isdir(m.path) else "not found"
            raise SampleError(f"{where}: {m.kind} file {what}: {m.path}", "missing-media")
        return
    try:
        data = read_media_bytes(m.path)
    except OSError as e:
        raise SampleError(f"{where}: cannot read {m.kind} file {m.path}: {e.strerror or e}",
                          "missing-media") from None
    attach_bytes(m, data, where, expect)


def attach_bytes(m: Media, data: bytes, where: str, expect: Optional[str] = None) -> None:
    """Set ``m.data`` / ``m.ext`` from in-memory bytes (base64 or parquet cells).

    ``expect`` (``"image"``/``"video"``): the kind the sniffed content must have.

    Raises:
        SampleError: ``wrong-media-type`` when the content is not of kind ``expect`` (names the
            sniffed type, e.g. ``unknown`` for text).
    """
    ext = sniff_ext(data)
    if expect is not None and media_kind(ext) != expect:
        src = m.path or m.meta.get("image_id") or "bytes"
        raise SampleError(f"{where}: {src} is not a{'n' if expect[0] in 'aeiou' else ''} "
                          f"{expect} (content sniffed as {ext or 'unknown'}, {len(data)} bytes)",
                          "wrong-media-type")
    m.data, m.ext = data, ext


def image_cell_bytes(cell: Any, where: str, media_root: Optional[str] = None
                     ) -> Tuple[Optional[bytes], Optional[str]]:
    """``(bytes, path)`` of a parquet image cell.

    ``cell`` is ``bytes`` (a binary column) or a dict ``{"bytes": ..., "path": ...}`` (the HF
    ``datasets`` ``Image`` feature). When the struct has no bytes but a path, the path (joined to
    ``media_root`` if relative) is returned with ``None`` bytes, for the caller to read.

    Raises:
        SampleError: ``invalid-record`` for a null cell or an unusable type.
    """
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell), None
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        if data is not None:
            return bytes(data), None
        if isinstance(path, str) and path:
            if media_root is not None and not os.path.isabs(path):
                path = os.path.join(media_root, path)
            return None, path
        raise SampleError(f"{where}: image cell has neither bytes nor path", "invalid-record")
    if cell is None:
        raise SampleError(f"{where}: image cell is null", "invalid-record")
    raise SampleError(f"{where}: image cell must be binary or a {{bytes, path}} struct, got "
                      f"{type(cell).__name__}", "invalid-record")


def check_video_placeholders(sample: Sample) -> None:
    """Raise :class:`SampleError` (``video-count-mismatch``) unless the turns hold exactly one
    :data:`VIDEO_PLACEHOLDER` per video media item."""
    n_ph = sum(t.content.count(VIDEO_PLACEHOLDER) for t in sample.turns)
    n_vid = sum(1 for m in sample.media if m.kind == "video")
    if n_ph != n_vid:
        raise SampleError(f"sample {sample.id!r}: {n_ph} {VIDEO_PLACEHOLDER} placeholder(s) but "
                          f"{n_vid} video(s)", "video-count-mismatch")


def validated(sample: Sample, where: str) -> Sample:
    """``sample.validate()`` plus the video placeholder check, errors prefixed with ``where``."""
    try:
        sample.validate()
        check_video_placeholders(sample)
    except SampleError as e:
        raise SampleError(f"{where}: {e}", e.reason) from None
    return sample
