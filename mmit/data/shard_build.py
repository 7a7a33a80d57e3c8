"""One output shard as one pure function call: :func:`build_shard` on a :class:`ShardTask`.

Used by :mod:`mmit.data.convert` (planning, resume, CLI) through a distributor
(:mod:`mmit.data.distribute`: inline, process pool or Ray). The bytes written depend only on the task.

Media handling inside :func:`build_shard` (:func:`prepare_media`):

* images: header check (``check="header"``) or full decode; stored as their ORIGINAL bytes unless
  ``resize_max_side`` (downscale so the longer side is at most N pixels; never upscale) or
  ``reencode`` (``jpeg``/``png``/``webp`` at ``quality``) asks for new pixels; ``meta`` gains
  ``width``/``height`` (and ``original_width``/``original_height``/``original_ext`` when changed).
* video and audio: stored as their bytes, extension sniffed from content.
* point clouds: stored as ``.npy`` (``.npz`` converted); must be a numeric ``[N, C>=3]`` array
  (a ``.npy`` is judged from its header and length, without loading it: the same decision as
  ``np.load``).
* a header check the reader already ran on the same bytes (in-memory images:
  :func:`mmit.data.media_check.remember_image_check`) is not repeated; the pixel cap still is.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from mmit.data.media import (MAX_PIXELS, ImageInfo, check_image, read_media_bytes, sniff_ext,
                             to_rgb)
from mmit.data.media_check import cached_npy_header, image_check_done
from mmit.data.media_resolve import npz_points
from mmit.data.sample import Sample, SampleError
from mmit.data.sample_encoding import SplitSampleJson
from mmit.data.shards import ShardWriter
from mmit.data.stats import SkipCounter

#: Bumped when the bytes written for the same input change; part of every shard digest.
SHARD_FORMAT_VERSION = 2
#: ``reencode`` name → (PIL format, extension).
REENCODE = {"jpeg": ("JPEG", "jpg"), "png": ("PNG", "png"), "webp": ("WEBP", "webp")}


@dataclasses.dataclass(frozen=True)
class ShardOptions:
    """Per-shard options of :func:`build_shard` (all plain values, picklable)."""

    output: str
    missing: str = "skip"
    check: str = "header"
    max_pixels: int = MAX_PIXELS
    resize_max_side: Optional[int] = None
    reencode: Optional[str] = None
    quality: int = 95

    def fingerprint(self) -> Dict[str, Any]:
        """Everything but ``output``: the options that change a shard's bytes."""
        d = dataclasses.asdict(self)
        d.pop("output")
        return d


@dataclasses.dataclass
class ShardTask:
    """Input of one :func:`build_shard` call: shard ``index``, its ``(input position, Sample)``
    ``items``, the ``options`` and the ``digest`` of both (stored in the shard's stats)."""

    index: int
    items: List[Tuple[int, Sample]]
    options: ShardOptions
    digest: str
    #: per item, its JSON around the media list as the digest encoded it (None: encode it whole)
    splits: Optional[List[Optional[SplitSampleJson]]] = None


@dataclasses.dataclass
class ShardResult:
    """Output of :func:`build_shard`: the shard's stats dict and its skips (with examples)."""

    index: int
    stats: Dict[str, Any]
    skipped: SkipCounter


# -- media -----------------------------------------------------------------------------------------

def _fit(width: int, height: int, max_side: Optional[int]) -> Tuple[int, int]:
    """Size after downscaling so that ``max(w, h) <= max_side`` (aspect kept, never upscaled)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def transcode_image(data: bytes, where: str, size: Tuple[int, int], fmt: str, quality: int
                    ) -> bytes:
    """Decode ``data`` to RGB (:func:`mmit.data.media.to_rgb`), resize to ``size`` (bicubic;
    JPEGs are first DCT-downscaled to at least twice the target with ``Image.draft``) and encode
    as ``fmt`` (``JPEG``/``PNG``/``WEBP``; ``quality`` 1-100 for JPEG/WebP). Deterministic for a
    given Pillow build. Raises :class:`SampleError` (``undecodable-image``) naming ``where``."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format == "JPEG" and size != im.size:
                im.draft(None, (size[0] * 2, size[1] * 2))
            im.load()
        im = to_rgb(im)
        if im.size != size:
            im = im.resize(size, Image.Resampling.BICUBIC)
        out = io.BytesIO()
        kw = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}
        im.save(out, format=fmt, **kw)
    except Exception as e:  # OSError (truncated), SyntaxError, ValueError, ...
        raise SampleError(f"{where}: undecodable image: {e}", "undecodable-image") from None
    return out.getvalue()


def _header_check(m: Any, data: bytes, where: str, max_pixels: int) -> ImageInfo:
    """:func:`~mmit.data.media.check_image` (header), or only its pixel cap when the reader
    already ran it on these bytes (:func:`~mmit.data.media_check.image_check_done`)."""
    info = image_check_done(m, data)
    if info is None:
        return check_image(data, where, max_pixels)
    w, h = info.width, info.height
    if w * h > max_pixels:  # check_image's own message
        raise SampleError(f"{where}: image too large: {w}x{h} = {w * h} pixels > cap {max_pixels}",
                          "image-too-large")
    return info


def _prepare_image(m: Any, data: bytes, where: str, o: ShardOptions) -> None:
    info = _header_check(m, data, where, o.max_pixels)
    size = _fit(info.width, info.height, o.resize_max_side)
    if o.reencode is None and size == (info.width, info.height):
        if o.check == "decode":  # (a transcode below decodes anyway)
            check_image(data, where, o.max_pixels, full=True)
        m.data, m.ext = data, sniff_ext(data) or info.ext
        m.meta["width"], m.meta["height"] = info.width, info.height
        return
    name = o.reencode or ("jpeg" if info.ext == "jpg" else "png")
    fmt, ext = REENCODE[name]
    m.data, m.ext = transcode_image(data, where, size, fmt, o.quality), ext
    m.meta.update(width=size[0], height=size[1], original_width=info.width,
                  original_height=info.height, original_ext=sniff_ext(data) or info.ext)


class _Header(NamedTuple):
    """What ``np.load`` would return, as far as :func:`pointcloud_npy` looks at it."""

    shape: Tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _npy_as_np_load_sees_it(data: bytes) -> Optional[_Header]:
    """Shape and dtype of ``.npy`` bytes from the header alone, raising what ``np.load`` raises
    for the cases it refuses (object dtype without pickle, fewer data bytes than the header
    announces), without copying the array. None for header versions other than 1.0 / 2.0
    (``np.load`` itself then)."""
    known = cached_npy_header(data)
    if known is not None:
        shape, _fortran, dtype, offset = known
    else:
        buf = io.BytesIO(data)
        version = np.lib.format.read_magic(buf)
        if version not in ((1, 0), (2, 0)):
            return None
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _fortran, dtype = read(buf)
        offset = buf.tell()
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    need = math.prod(int(x) for x in shape) * dtype.itemsize  # Python ints: no overflow
    if len(data) - offset < need:
        raise ValueError(f"EOF: reading array data, expected {need} bytes got "
                         f"{len(data) - offset}")
    return _Header(tuple(int(x) for x in shape), dtype)


def pointcloud_npy(data: bytes, where: str) -> Tuple[bytes, Tuple[int, ...], str]:
    """A point cloud file's bytes as ``.npy`` bytes, the array shape ``(N, C)`` and its dtype
    string (``<f4``, ...).

    ``.npy`` is kept byte for byte; ``.npz`` (one array, or keys ``points``/``xyz``/``pcl``/
    ``arr_0``) is re-saved as ``.npy``. Nothing is unpickled (``allow_pickle=False``).
    Raises :class:`SampleError`: ``unsupported-pointcloud`` (another format, e.g. PLY) or
    ``undecodable-pointcloud`` (corrupt, object dtype, not ``[N, C>=3]`` numeric).
    """
    ext = sniff_ext(data)
    if ext not in ("npy", "npz"):
        raise SampleError(f"{where}: point cloud is not a .npy/.npz array (content: "
                          f"{ext or 'unknown type'})", "unsupported-pointcloud")
    try:
        arr = _npy_as_np_load_sees_it(data) if ext == "npy" else None
        if arr is None:
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
            arr = np.asarray(npz_points(loaded) if ext == "npz" else loaded)
    except Exception as e:
        raise SampleError(f"{where}: undecodable point cloud ({ext}): {e}",
                          "undecodable-pointcloud") from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 3 or arr.dtype.kind not in "fiu":
        raise SampleError(f"{where}: point cloud must be a numeric [N, C>=3] array, got shape "
                          f"{arr.shape} dtype {arr.dtype}", "undecodable-pointcloud")
    if ext == "npy":
        return data, tuple(arr.shape), arr.dtype.str
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue(), tuple(arr.shape), arr.dtype.str


def prepare_media(sample: Sample, o: ShardOptions) -> None:
    """Load and check every media item of ``sample`` in place (``data``, ``ext``, ``meta``).

    Bytes come from ``Media.data`` when the reader carried them inline, else from ``Media.path``.
    Raises :class:`SampleError` naming the file and sample: ``missing-media`` (unreadable, empty or
    no source), ``undecodable-image``, ``image-too-large``, ``*-pointcloud`` (see above).
    """
    for j, m in enumerate(sample.media):
        where = f"{m.path or 'inline ' + m.kind} (sample {sample.id!r}, media {j})"
        data = m.data
        if data is None:
            if not m.path:
                raise SampleError(f"{where}: media has neither bytes nor a path", "missing-media")
            try:
                data = read_media_bytes(m.path)
            except OSError as e:
                raise SampleError(f"{where}: cannot read media file: {e.strerror or e}",
                                  "missing-media") from None
        if not data:
            raise SampleError(f"{where}: empty media file", "missing-media")
        if m.kind == "image":
            _prepare_image(m, bytes(data), where, o)
        elif m.kind == "pointcloud":
            m.data, shape, dtype = pointcloud_npy(bytes(data), where)
            m.ext, m.meta["shape"], m.meta["dtype"] = "npy", list(shape), dtype
        else:  # video, audio: bytes as they are
            suffix = os.path.splitext(m.path or "")[1][1:].lower()
            m.data = data
            m.ext = sniff_ext(data) or (suffix if suffix.isalnum() and len(suffix) <= 5 else "bin")


def build_shard(task: ShardTask) -> ShardResult:
    """Write shard ``{index:05d}.tar`` + ``_stats.json`` into ``task.options.output``.

    Pure: the files written depend only on ``task`` (and the media bytes it points to), never on
    the process, host, time or worker count. Records whose media fail :func:`prepare_media` are
    counted in the result's ``skipped`` (``missing="skip"``) or raise :class:`SampleError`
    (``missing="error"``; the partial tar is deleted).
    """
    o = task.options
    tar_path = os.path.join(o.output, f"{task.index:05d}.tar")
    skipped = SkipCounter()
    splits = task.splits or [None] * len(task.items)
    with ShardWriter(tar_path) as writer:
        for (position, sample), split in zip(task.items, splits):
            try:
                prepare_media(sample, o)
            except SampleError as e:
                if o.missing == "error":
                    raise
                skipped.add(e.reason, sample.id, str(e))
                continue
            writer.write(sample, position, split)
            for m in sample.media:
                m.data = None  # hold one sample's bytes at a time
        stats = writer.finish(skipped, records_in=len(task.items), extra={"digest": task.digest})
    return ShardResult(task.index, stats, skipped)
