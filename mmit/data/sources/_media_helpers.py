"""Helpers shared by the MIMIC-IT, VideoChat, WebVid, MMC4 and InstructPix2Pix readers.

Not a format module (the leading ``_`` keeps :mod:`mmit.data.sources` from importing it as one).
The normalisation rules themselves (base64, COCO names, content-checked loading, placeholders,
the skip/error policy) live in :mod:`mmit.data.normalize` and :mod:`mmit.data.media_resolve`;
this module adapts them to these readers:

* :func:`attach_file`: the media rule of :func:`mmit.data.media_resolve.attach_media` (confined
  to the media root, size cap, content check; read whole with ``load_bytes``).
* :func:`attach_bytes`: the same content check for in-memory bytes (base64 JSON, parquet cells).
* :func:`image_cell_bytes`: bytes out of a parquet image cell (HF ``datasets`` ``Image`` struct
  ``{bytes, path}`` or a binary column).
* :func:`validated`: :meth:`Sample.validate` plus the ``<video>`` count, which ``validate`` does not
  check; :func:`report`: count or raise one failed record.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Tuple

from mmit.data.media import check_image
from mmit.data.media_check import check_media_bytes, remember_image_check
from mmit.data.media_resolve import attach_media, media_policy
from mmit.data.normalize import MEDIA_PLACEHOLDERS
from mmit.data.sample import Media, Sample, SampleError
from mmit.data.stats import SkipCounter

#: Placeholder for one video item in turn text (:data:`mmit.data.normalize.MEDIA_PLACEHOLDERS`).
VIDEO_PLACEHOLDER = MEDIA_PLACEHOLDERS["video"]


def report(error: SampleError, missing: str, stats: SkipCounter, record_id: Any) -> None:
    """Apply the ``missing`` policy to a failed record: raise under ``"error"``, else count the
    skip in ``stats`` under ``error.reason`` (the message is kept as an example)."""
    if missing == "error":
        raise error
    stats.add(error.reason, record_id, str(error))


def attach_file(m: Media, where: str, load_bytes: bool, root: str) -> None:
    """Confine, check (``load_bytes=False``) or read (``True``) the file at ``m.path``.

    ``root``: the media root ``m.path`` must stay inside (a
    :class:`~mmit.data.media_resolve.MediaRoot` carries the reader's ``allow_absolute`` and size
    caps). With ``load_bytes`` the whole file goes into ``m.data`` unchanged, ``m.ext`` is sniffed
    from content and the content must match ``m.kind`` (an HTML error page saved as ``.mp4`` is
    rejected). Without it the file is checked without being read whole: size cap, and for video /
    audio a container probe (:func:`mmit.data.media_check.check_media_file`).

    Raises:
        SampleError: ``missing-media`` (absent, a folder, unreadable), ``media-outside-root``,
            ``media-too-large``, ``undecodable-image`` / ``undecodable-video`` /
            ``undecodable-audio`` (content of another kind), point-cloud reasons.
    """
    attach_media(m, where, root, load_bytes)


def attach_bytes(m: Media, data: bytes, where: str, root: Optional[str] = None) -> None:
    """Set ``m.data`` (unchanged) and ``m.ext`` (sniffed) from in-memory bytes; images also get
    :func:`mmit.data.media.check_image`'s header check (a truncated image is refused here).

    ``root``: the reader's media root, whose :class:`~mmit.data.media_resolve.MediaRoot` size caps
    apply (default caps without one). Raises :class:`SampleError` ``media-too-large`` or
    ``undecodable-image`` / ``undecodable-video`` / ``undecodable-audio`` / point-cloud reasons
    when the content is not of kind ``m.kind`` (:func:`mmit.data.media_check.check_media_bytes`;
    the message names the sniffed type, ``unknown`` for text)."""
    src = m.path or m.meta.get("image_id") or "in-memory bytes"
    caps = media_policy(root)[1] if root is not None else None
    ext = check_media_bytes(data, m.kind, f"{where}: {src}", caps)
    if m.kind == "image":
        # the bytes are in memory anyway: the header check that `mmit convert` runs while building
        # the shard, here, so that a failure names the annotation file and record (a shard builder
        # only knows the sample id). The pixel cap stays with convert (its max_pixels).
        info = check_image(data, f"{where}: {src}", max_pixels=sys.maxsize)
        remember_image_check(m, data, info)  # the shard builder then skips its own header check
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
