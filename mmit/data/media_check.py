"""Content checks of media before they are written into a shard or decoded: size caps, the type
from the first bytes, a PyAV container probe for video and audio, the header of point clouds.

Used by every reader through :func:`mmit.data.media_resolve.attach_media` (files) and
:func:`check_media_bytes` (bytes carried inline: base64 JSON, parquet cells). What each kind must
pass, and the skip reason when it does not:

* ``image``: at most ``max_bytes["image"]`` (``media-too-large``). The content is checked where
  the pixels are parsed: ``mmit convert``'s header check / full decode
  (:func:`mmit.data.media.check_image`), or :func:`~mmit.data.media_resolve.load_media` with
  ``load_bytes`` (``undecodable-image``).
* ``video``: a container :func:`~mmit.data.media.sniff_ext` recognises (mp4/mov/m4v, webm/mkv,
  avi) that PyAV opens with at least one video stream, or an animated GIF / WebP / PNG (which
  :mod:`mmit.data.video` decodes with PIL; a still image is not a video); else
  ``undecodable-video``.
* ``audio``: an audio format (wav, mp3, aac, flac, ogg, m4a) or a video container, opened by PyAV
  with an audio stream (or a video stream: :func:`mmit.data.audio.decode_audio` then applies its
  ``no_audio`` policy); else ``undecodable-audio``.
* ``pointcloud``: a numeric ``.npy`` array of shape ``(N, C>=3)`` (header only, no pickle) or an
  ``.npz``; PLY and others are ``unsupported-pointcloud``, bad arrays ``undecodable-pointcloud``.

The probe forces the demuxer of the sniffed type and reads through a Python file object, so FFmpeg
never guesses a format from the content (a text file is never parsed as an HLS or concat playlist
naming other files or URLs) and never opens a path itself. The probe reads the container header
(and FFmpeg's first packets), not the whole file; a clip whose packets are damaged further on
passes and is a counted skip when decoded for training.
"""

from __future__ import annotations

import functools
import io
import os
import stat
from typing import Any, BinaryIO, Mapping, Optional, Tuple, Union

import numpy as np

from mmit.data.media import (AUDIO_EXTS, HEAD_BYTES, MAX_MEDIA_BYTES, VIDEO_EXTS, media_kind,
                             open_media_file, sniff_ext, too_large)
from mmit.data.sample import SampleError

#: Sniffed extension → the FFmpeg demuxer the probe forces.
AV_FORMATS = {"mp4": "mov", "mov": "mov", "m4v": "mov", "m4a": "mov", "webm": "matroska",
              "mkv": "matroska", "avi": "avi", "wav": "wav", "mp3": "mp3", "aac": "aac",
              "flac": "flac", "ogg": "ogg"}
#: Still-image formats :mod:`mmit.data.video` decodes as a clip (animated GIF / WebP / APNG).
ANIMATION_EXTS = ("gif", "webp", "png")
#: Skip reason per media kind when the content is not of that kind.
UNDECODABLE = {"image": "undecodable-image", "video": "undecodable-video",
               "audio": "undecodable-audio", "pointcloud": "undecodable-pointcloud"}
#: Bytes read from a point-cloud file to parse its ``.npy`` header (version 1 headers are < 64 KiB).
_NPY_HEAD = 70_000


# -- header checks done once ------------------------------------------------------------------------

#: Attribute of a :class:`~mmit.data.sample.Media` holding ``(data, ImageInfo)`` of a header check
#: already run on exactly ``data`` (not a dataclass field: never serialised, but pickled with the
#: object, so it travels to shard-building processes).
_CHECKED = "_image_header_checked"


def remember_image_check(media: Any, data: bytes, info: Any) -> None:
    """Record that :func:`mmit.data.media.check_image` (``full=False``, no pixel cap) passed on
    ``data`` with result ``info`` (an ``ImageInfo``), so that :func:`image_check_done` can skip
    repeating it (a reader of in-memory bytes checks them to name the record in the message;
    ``mmit convert`` would check them again while building the shard)."""
    media.__dict__[_CHECKED] = (data, info)


def image_check_done(media: Any, data: bytes) -> Optional[Any]:
    """The ``ImageInfo`` recorded by :func:`remember_image_check` when it was for this very
    ``data`` object (identity, not equality: replaced bytes are checked again), else None."""
    done = media.__dict__.get(_CHECKED)
    return done[1] if done is not None and done[0] is data else None


# -- point clouds ------------------------------------------------------------------------------------

def _check_cloud(shape: Tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if dtype.hasobject or dtype.kind not in "fiu":
        raise SampleError(f"{where}: point cloud must be a numeric array, got dtype {dtype} "
                          f"(objects are never unpickled)", "undecodable-pointcloud")
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 3:
        raise SampleError(f"{where}: point cloud must have shape (N, C>=3) (xyz[rgb...]), got "
                          f"{tuple(shape)}", "undecodable-pointcloud")


@functools.lru_cache(maxsize=1024)
def _npy_header_text(head: bytes) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    read = (np.lib.format.read_array_header_1_0 if head[6] == 1
            else np.lib.format.read_array_header_2_0)
    buf = io.BytesIO(head)
    np.lib.format.read_magic(buf)
    return read(buf)


def cached_npy_header(data: bytes) -> Optional[Tuple[Tuple[int, ...], bool, np.dtype, int]]:
    """``(shape, fortran_order, dtype, data offset)`` of ``.npy`` bytes of format version 1.0 or
    2.0, as ``np.lib.format.read_array_header_1_0`` / ``_2_0`` return them (raising what they
    raise for a bad header). None for other versions, or when ``data`` ends inside the header:
    the caller then asks numpy itself. A header text seen before is not parsed again (LRU cache
    of 1024): numpy parses it with ``ast.literal_eval``, which costs more than reading a point
    cloud file, and a dataset's clouds share a handful of shapes."""
    if len(data) < 12 or data[:6] != b"\x93NUMPY" or data[7] != 0 or data[6] not in (1, 2):
        return None
    width = 2 if data[6] == 1 else 4
    end = 8 + width + int.from_bytes(data[8:8 + width], "little")
    if len(data) < end:
        return None
    shape, fortran, dtype = _npy_header_text(bytes(data[:end]))
    return shape, fortran, dtype, end


def npy_header(data: bytes, where: str) -> Tuple[Tuple[int, ...], str]:
    """Shape and dtype of a ``.npy`` point cloud from its header (no data parsed, no pickle).

    ``data`` may be the whole file or only its beginning (the header is all that is parsed).
    Returns ``(shape, dtype string)``. Raises :class:`SampleError`: ``unsupported-pointcloud``
    when the bytes are not ``.npy``; ``undecodable-pointcloud`` for a corrupt header, a
    non-numeric dtype (Python objects) or a shape other than ``(N, C)`` with ``N >= 1``,
    ``C >= 3``.
    """
    if sniff_ext(data) != "npy":
        raise SampleError(f"{where}: point cloud is not a .npy array (content: "
                          f"{sniff_ext(data) or 'unknown'})", "unsupported-pointcloud")
    try:
        known = cached_npy_header(data)
        if known is not None:
            shape, dtype = known[0], known[2]
        else:
            buf = io.BytesIO(data)
            version = np.lib.format.read_magic(buf)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _fortran, dtype = read(buf)
    except Exception as e:
        raise SampleError(f"{where}: corrupt .npy header: {e}", "undecodable-pointcloud") from None
    _check_cloud(shape, dtype, where)
    return tuple(int(x) for x in shape), dtype.str


def npz_points(npz) -> np.ndarray:
    """The point array of an opened ``.npz``: its only array, else the one named ``points``, ``xyz``,
    ``pcl`` or ``arr_0``. Raises ``ValueError`` listing the names when none fits."""
    keys = npz.files
    pick = keys[0] if len(keys) == 1 else next((k for k in ("points", "xyz", "pcl", "arr_0") if k in keys), None)
    if pick is None:
        raise ValueError(f"several arrays and none named points/xyz/pcl: {keys}")
    return npz[pick]


def pointcloud_shape(data: bytes, where: str) -> Tuple[Tuple[int, ...], str]:
    """Shape and dtype of a point cloud stored as ``.npy`` (header only) or ``.npz`` (its only
    array, or the one named ``points``/``xyz``/``pcl``/``arr_0``; loaded with
    ``allow_pickle=False``). Raises :class:`SampleError` as :func:`npy_header`."""
    if sniff_ext(data) != "npz":
        return npy_header(data, where)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arr = npz_points(z)
    except Exception as e:
        raise SampleError(f"{where}: undecodable .npz point cloud: {e}",
                          "undecodable-pointcloud") from None
    _check_cloud(arr.shape, arr.dtype, where)
    return tuple(int(x) for x in arr.shape), arr.dtype.str


# -- video and audio -----------------------------------------------------------------------------------

def probe_av(src: Union[bytes, BinaryIO], ext: str, kind: str, where: str, size: int) -> None:
    """Open ``src`` (bytes or a seekable binary file) with PyAV, forcing the demuxer of ``ext``
    (:data:`AV_FORMATS`), and require a stream of ``kind``: a video stream for ``video``; an audio
    or a video stream for ``audio``. Without PyAV installed only the magic bytes were checked.

    Raises :class:`SampleError` ``undecodable-video`` / ``undecodable-audio`` naming ``where``,
    the sniffed type and ``size``; never echoes file content."""
    try:
        import av
    except ImportError:  # pragma: no cover - av is a dependency; magic bytes only then
        return
    reason = UNDECODABLE[kind]
    f = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    try:
        with av.open(f, format=AV_FORMATS[ext], metadata_errors="ignore") as c:
            n_video, n_audio = len(c.streams.video), len(c.streams.audio)
    except Exception as e:  # noqa: BLE001  (PyAV raises many error types)
        msg = " ".join(str(e).split())[:200]
        raise SampleError(f"{where}: undecodable {kind} ({ext}, {size} bytes): {msg}",
                          reason) from None
    if kind == "video" and not n_video:
        raise SampleError(f"{where}: no video stream in the {ext} file ({size} bytes)", reason)
    if kind == "audio" and not (n_audio or n_video):
        raise SampleError(f"{where}: no audio (or video) stream in the {ext} file ({size} bytes)",
                          reason)


def check_animation(src: Union[bytes, BinaryIO], where: str, size: int) -> None:
    """Require ``src`` (a GIF / WebP / PNG, bytes or a seekable binary file) to be animated
    (PIL's ``is_animated``: a second frame exists; read from the header for WebP and APNG, the
    first frame's blocks are walked for GIF). Raises :class:`SampleError` ``undecodable-video``
    for a still image or unparsable bytes."""
    from PIL import Image

    f = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    try:
        with Image.open(f) as im:
            animated, fmt = bool(getattr(im, "is_animated", False)), im.format
    except Exception as e:  # noqa: BLE001  (PIL raises many error types)
        raise SampleError(f"{where}: undecodable video (animated image, {size} bytes): "
                          f"{' '.join(str(e).split())[:200]}", "undecodable-video") from None
    if not animated:
        raise SampleError(f"{where}: a still {fmt} image, not a video ({size} bytes)",
                          "undecodable-video")


def _av_ext(ext: Optional[str], kind: str, where: str, size: int) -> bool:
    """Whether ``ext`` needs a PyAV probe for ``kind`` (True) or :func:`check_animation` (False:
    an animated image as video); raises ``undecodable-<kind>`` for any other content."""
    if kind == "video" and ext in ANIMATION_EXTS:
        return False
    if ext in VIDEO_EXTS or (kind == "audio" and ext in AUDIO_EXTS):
        return True
    raise SampleError(f"{where}: not {'an' if kind == 'audio' else 'a'} {kind} file (content: "
                      f"{ext or 'unknown'}, {size} bytes)", UNDECODABLE[kind])


def check_media_bytes(data: bytes, kind: str, where: str,
                      max_bytes: Optional[Mapping[str, int]] = None) -> Optional[str]:
    """Check in-memory media bytes of ``kind`` (module docstring); returns the sniffed extension.

    ``max_bytes``: kind → cap (default :data:`~mmit.data.media.MAX_MEDIA_BYTES`). Images are checked
    to be an image format by their magic bytes only (the pixels are checked where they are parsed).

    Raises :class:`SampleError`: ``media-too-large``, ``undecodable-image|video|audio``,
    ``unsupported-pointcloud``, ``undecodable-pointcloud``; the message starts with ``where``.
    """
    caps = MAX_MEDIA_BYTES if max_bytes is None else max_bytes
    cap = caps.get(kind, MAX_MEDIA_BYTES[kind])
    if len(data) > cap:
        raise too_large(where, kind, len(data), cap)
    ext = sniff_ext(data)
    if kind == "image":
        if media_kind(ext) != "image":
            raise SampleError(f"{where}: not an image (content: {ext or 'unknown'}, {len(data)} "
                              f"bytes)", "undecodable-image")
    elif kind == "pointcloud":
        pointcloud_shape(data, where)
    elif _av_ext(ext, kind, where, len(data)):
        probe_av(data, ext, kind, where, len(data))
    else:
        check_animation(data, where, len(data))
    return ext


def _image_file_size(path: str, where: str, caps: Mapping[str, Any],
                     known_stat: Optional[os.stat_result] = None) -> int:
    """The size of the image file at ``path`` from ``os.stat`` (symlinks followed, as ``open``
    would), with :func:`check_media_file`'s errors: ``missing-media`` (absent, a folder, not a
    regular file, empty), ``media-too-large``. (Unreadable contents show when the shard builder
    reads the file: a ``missing-media`` skip there.)"""
    try:
        st = os.stat(path) if known_stat is None else known_stat
    except (OSError, ValueError) as e:
        what = ("not found" if isinstance(e, (FileNotFoundError, ValueError))
                else (getattr(e, "strerror", None) or str(e)))
        raise SampleError(f"{where}: image file {what}: {path}", "missing-media") from None
    if not stat.S_ISREG(st.st_mode):
        what = ("is a folder, not a file" if stat.S_ISDIR(st.st_mode) else
                "not a regular file (device, FIFO or socket)")
        raise SampleError(f"{where}: image file {what}: {path}", "missing-media")
    cap = caps.get("image", MAX_MEDIA_BYTES["image"])
    if st.st_size > cap:
        raise too_large(f"{where}: {path}", "image", st.st_size, cap)
    if st.st_size == 0:
        raise SampleError(f"{where}: {path}: empty image file", "missing-media")
    return st.st_size


def check_media_file(path: str, kind: str, where: str,
                     max_bytes: Optional[Mapping[str, int]] = None,
                     known_stat: Optional[os.stat_result] = None) -> Tuple[int, Optional[str]]:
    """Check the file at ``path`` as media of ``kind`` without reading it whole.

    ``os.fstat`` gives the size (checked against ``max_bytes[kind]`` first; default
    :data:`~mmit.data.media.MAX_MEDIA_BYTES`), the first bytes give the type; video and audio are
    then probed with PyAV through the open file, point clouds have their ``.npy`` header parsed.
    Images stop after the size check (module docstring); ``known_stat``, an ``os.stat(path)``
    result the caller just took, spares an image that call. Returns ``(size, sniffed ext or None)``.

    Raises :class:`SampleError`: ``missing-media`` (absent, a folder, a device/FIFO, unreadable;
    an empty image), ``media-too-large``, ``undecodable-video|audio`` (also for an empty file),
    ``unsupported-pointcloud``, ``undecodable-pointcloud``; the message names ``where`` and the file.
    """
    caps: Mapping[str, Any] = MAX_MEDIA_BYTES if max_bytes is None else max_bytes
    here = f"{where}: {path}"
    if kind == "image":  # the size is all that is checked here: one stat, no open
        return _image_file_size(path, where, caps, known_stat), None
    try:
        f, size = open_media_file(path)
    except OSError as e:
        what = "not found" if isinstance(e, FileNotFoundError) else (e.strerror or str(e))
        raise SampleError(f"{where}: {kind} file {what}: {path}", "missing-media") from None
    with f:
        cap = caps.get(kind, MAX_MEDIA_BYTES[kind])
        if size > cap:
            raise too_large(here, kind, size, cap)
        if kind == "image":
            if size == 0:
                raise SampleError(f"{here}: empty image file", "missing-media")
            return size, None
        if size == 0:
            raise SampleError(f"{here}: empty {kind} file (0 bytes)", UNDECODABLE[kind])
        try:
            head = f.read(_NPY_HEAD if kind == "pointcloud" else HEAD_BYTES) or b""
        except OSError as e:
            raise SampleError(f"{here}: cannot read {kind} file: {e.strerror or e}",
                              "missing-media") from None
        ext = sniff_ext(head)
        if kind == "pointcloud":
            if ext != "npz":  # an .npz is a zip: checked whole when the shard is built
                npy_header(head, here)
        else:
            f.seek(0)
            if _av_ext(ext, kind, here, size):
                probe_av(f, ext, kind, here, size)
            else:
                check_animation(f, here, size)
    return size, ext
