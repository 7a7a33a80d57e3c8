"""Finding and loading the media a record names, for every reader (see :mod:`mmit.data.normalize`
for the text rules).

* :func:`decode_base64`: standard and URL-safe alphabets, missing padding, data URIs.
* :func:`resolve_media_path` / :func:`coco_name_variants`: ``./`` prefixes, format-specific
  alternative layouts, COCO 2014 (``COCO_train2014_000000033471.jpg``) vs 2017
  (``000000033471.jpg``) names.
* :func:`load_media`: bytes kept exactly as stored, type sniffed from content (extensions lie),
  content checked against the media kind, optional pixel cap (``image-too-large``); RGBA /
  palette / grayscale images become RGB only when decoded (:func:`mmit.data.media.decode_image`).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from typing import Any, Iterable, List, Optional, Tuple

import numpy as np

from mmit.data.media import check_image, media_kind, read_media_bytes, sniff_ext
from mmit.data.sample import Media, SampleError


# -- base64 ------------------------------------------------------------------------------------------

_B64_DATA_URI = re.compile(r"^data:[^,;]*(?:;[^,;]*)*;base64,", re.I)
_B64_URLSAFE = bytes.maketrans(b"-_", b"+/")
_B64_WS = b" \t\r\n\f\v"  # deleted by bytes.translate (a C loop; a regex over MBs of payload is 5x slower)


def decode_base64(text: Any, where: str) -> bytes:
    """Decode base64 media as found in instruction JSON (MIMIC-IT's image JSON, data URIs, ...).

    Accepts the standard (``+/``) and the URL-safe (``-_``, RFC 4648 §5) alphabets, missing ``=``
    padding, embedded whitespace/newlines, a ``data:image/png;base64,`` prefix and ``bytes`` input.
    Returns the decoded bytes.

    Raises :class:`SampleError` (reason ``bad-base64``) naming ``where`` for non-string input, an
    empty payload, characters outside both alphabets or an impossible length.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("ascii", errors="replace")
    if not isinstance(text, str):
        raise SampleError(f"{where}: base64 media must be a string, got {type(text).__name__}",
                          "bad-base64")
    # non-ASCII characters become "?", which the strict decode below rejects
    body = _B64_DATA_URI.sub("", text.strip(), count=1).encode("ascii", errors="replace")
    body = body.translate(_B64_URLSAFE, _B64_WS)
    if not body:
        raise SampleError(f"{where}: empty base64 payload", "bad-base64")
    body = body.rstrip(b"=")
    if len(body) % 4 == 1:
        raise SampleError(f"{where}: base64 payload has an impossible length ({len(body)} "
                          f"characters without padding)", "bad-base64")
    try:
        return base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise SampleError(f"{where}: invalid base64: {e}", "bad-base64") from None


# -- media paths -------------------------------------------------------------------------------------

_COCO2014 = re.compile(r"^COCO_(train|val|test)2014_(\d{12})\.(jpg|jpeg|png)$", re.I)
_COCO2017 = re.compile(r"^(\d{12})\.(jpg|jpeg|png)$", re.I)
_COCO_DIRS = {"train2014": ("train2017",), "val2014": ("val2017", "train2017"),
              "train2017": ("train2014", "val2014"), "val2017": ("val2014",),
              "test2014": ("test2017",), "test2017": ("test2014",)}


def coco_name_variants(path: str) -> List[str]:
    """Other spellings of the same COCO image path in the other release (2014 ↔ 2017).

    COCO 2014 names files ``COCO_train2014_000000033471.jpg`` under ``train2014/``; COCO 2017
    names the same image ``000000033471.jpg`` under ``train2017/`` (2017 train = 2014 train + most
    of 2014 val; 2017 val ⊂ 2014 val). LLaVA/ShareGPT4V write 2017 names, MultiInstruct and
    VideoChat 2014 names (DATASETS.md §0). Variants keep the folder and, when the parent folder is a
    split folder (``train2014``, ``val2017``, ...), also try the other release's split folders.
    Returns ``[]`` for non-COCO names. Pure string work: nothing is read from disk.
    """
    head, name = os.path.split(path)
    parent, split_dir = os.path.split(head)
    out: List[str] = []
    m14 = _COCO2014.match(name)
    if m14:
        split, num, ext = m14.groups()
        new = f"{num}.{ext}"
        out.append(os.path.join(head, new))
        for d in _COCO_DIRS.get(split_dir, ()):
            out.append(os.path.join(parent, d, new))
        return out
    m17 = _COCO2017.match(name)
    if m17:
        num, ext = m17.groups()
        dirs = _COCO_DIRS.get(split_dir)
        if dirs:
            for d in dirs:
                out.append(os.path.join(parent, d, f"COCO_{d[:-4]}2014_{num}.{ext}"))
            if split_dir.endswith("2014"):  # 2017-style name inside a 2014 folder
                out.insert(0, os.path.join(head, f"COCO_{split_dir[:-4]}2014_{num}.{ext}"))
        else:
            out += [os.path.join(head, f"COCO_{s}2014_{num}.{ext}") for s in ("train", "val")]
    return out


def strip_dot_slash(path: str) -> str:
    """``./raw_datasets/x.jpg`` → ``raw_datasets/x.jpg`` (repeated ``./`` too); others unchanged."""
    while path.startswith("./"):
        path = path[2:]
    return path


def resolve_media_path(path: str, root: str, where: str, alternatives: Iterable[str] = (),
                       coco: bool = True) -> Tuple[str, Optional[str]]:
    """Find the file a record's media path points to.

    Tried in order, first existing file wins: ``path`` itself if absolute, else ``root/path``
    (leading ``./`` removed); then each of ``alternatives`` (absolute, or relative to ``root``;
    readers pass their format's known layouts); then, with ``coco=True``, the COCO 2014/2017
    spellings (:func:`coco_name_variants`) of every candidate so far.

    Returns ``(resolved path, how)`` where ``how`` is None for the path as written,
    ``"alternative"`` or ``"coco-name"``. Costs one ``stat`` when the path is right.

    Raises :class:`SampleError` (reason ``missing-media``) naming ``where`` and the path as
    resolved against ``root``.
    """
    if not isinstance(path, str) or not path.strip():
        raise SampleError(f"{where}: media path must be a non-empty string, got {path!r}",
                          "invalid-record")

    def full(p: str) -> str:
        p = strip_dot_slash(p)
        return p if os.path.isabs(p) else os.path.join(root, p)

    first = full(path)
    if os.path.isfile(first):
        return first, None
    alts = [full(a) for a in alternatives]
    for a in alts:
        if os.path.isfile(a):
            return a, "alternative"
    if coco:
        for c in [first] + alts:
            for v in coco_name_variants(c):
                if os.path.isfile(v):
                    return v, "coco-name"
    raise SampleError(f"{where}: media file not found: {first}", "missing-media")


# -- media bytes ------------------------------------------------------------------------------------

_EXT_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "tif": "tiff"}


def load_media(media: Media, where: str, max_pixels: Optional[int] = None) -> Media:
    """Read ``media.path`` into ``media.data`` and set ``media.ext`` from the content.

    * Extensions lie (``xray.jpg`` is a PNG, ShareGPT4V's ``breaking_bad.png`` is WebP):
      ``ext`` is what :func:`mmit.data.media.sniff_ext` finds in the bytes; when the file name says
      otherwise, ``meta["named_ext"]`` keeps the name's extension.
    * The bytes must be of the declared kind: an ``image`` that is not an image format (an HTML
      error page saved as ``.jpg``, a truncated file) raises ``undecodable-image``; a
      ``pointcloud`` must be a numeric ``.npy`` (or ``.npz``) array of shape ``(N, C)`` with
      ``C >= 3`` (xyz, optionally rgb, ...; ``meta["shape"]`` and ``meta["dtype"]`` are set,
      nothing is unpickled): other formats (PLY, ...) raise ``unsupported-pointcloud``, bad arrays
      ``undecodable-pointcloud`` (the reasons ``mmit convert`` uses).
    * ``max_pixels`` (e.g. :data:`mmit.data.media.MAX_PIXELS`): also parse the image header,
      set ``meta["width"]``/``meta["height"]`` and raise ``image-too-large`` above the cap.
      RGBA, palette and grayscale images pass unchanged: the bytes are kept as stored and
      :func:`mmit.data.media.decode_image` turns them into RGB when pixels are needed.

    Returns ``media`` (modified in place). Raises :class:`SampleError` naming ``where`` and the
    file: ``missing-media`` (cannot read), ``undecodable-image``, ``image-too-large``,
    ``unsupported-pointcloud``, ``undecodable-pointcloud``.
    """
    try:
        data = read_media_bytes(media.path)
    except OSError as e:
        raise SampleError(f"{where}: cannot read {media.kind} file {media.path}: "
                          f"{e.strerror or e}", "missing-media") from None
    ext = sniff_ext(data)
    named = os.path.splitext(media.path or "")[1].lower().lstrip(".")
    named = _EXT_ALIASES.get(named, named)
    if named and ext and named != ext:
        media.meta["named_ext"] = named
    if media.kind == "image":
        if media_kind(ext) != "image":
            raise SampleError(f"{where}: {media.path} is not an image (content: "
                              f"{ext or 'unknown'}, {len(data)} bytes)", "undecodable-image")
        if max_pixels is not None:
            info = check_image(data, f"{where}: {media.path}", max_pixels)
            media.meta["width"], media.meta["height"] = info.width, info.height
    elif media.kind == "pointcloud":
        shape, dtype = pointcloud_shape(data, f"{where}: {media.path}")
        media.meta["shape"], media.meta["dtype"] = list(shape), dtype
    media.data, media.ext = data, ext
    return media


def _check_cloud(shape: Tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if dtype.hasobject or dtype.kind not in "fiu":
        raise SampleError(f"{where}: point cloud must be a numeric array, got dtype {dtype} "
                          f"(objects are never unpickled)", "undecodable-pointcloud")
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 3:
        raise SampleError(f"{where}: point cloud must have shape (N, C>=3) (xyz[rgb...]), got "
                          f"{tuple(shape)}", "undecodable-pointcloud")


def npy_header(data: bytes, where: str) -> Tuple[Tuple[int, ...], str]:
    """Shape and dtype of a ``.npy`` point cloud from its header (no data parsed, no pickle).

    Returns ``(shape, dtype string)``. Raises :class:`SampleError`: ``unsupported-pointcloud``
    when the bytes are not ``.npy``; ``undecodable-pointcloud`` for a corrupt header, a
    non-numeric dtype (Python objects) or a shape other than ``(N, C)`` with ``N >= 1``,
    ``C >= 3``.
    """
    if sniff_ext(data) != "npy":
        raise SampleError(f"{where}: point cloud is not a .npy array (content: "
                          f"{sniff_ext(data) or 'unknown'})", "unsupported-pointcloud")
    buf = io.BytesIO(data)
    try:
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
