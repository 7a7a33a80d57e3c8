"""Finding, confining and loading the media a record names, for every reader (see
:mod:`mmit.data.normalize` for the text rules).

* :func:`resolve_media_path` / :func:`coco_name_variants`: ``./`` prefixes, format-specific
  alternative layouts, COCO 2014 (``COCO_train2014_000000033471.jpg``) vs 2017
  (``000000033471.jpg``) names.
* Confinement (:func:`confine`, :class:`MediaRoot`, in :mod:`mmit.data.media_root`, re-exported
  here): a media file is used only when its real location (every symlink resolved) lies inside the
  real media root, else it is a counted skip ``media-outside-root``, unless ``allow_absolute``.
* :func:`attach_media`: the one rule every reader applies to a media file: confine it, check its
  size and content (:mod:`mmit.data.media_check`), and read it with ``load_bytes``.
* :func:`load_media`: bytes kept exactly as stored, type sniffed from content (extensions lie),
  content checked against the media kind, optional pixel cap (``image-too-large``); RGBA /
  palette / grayscale images become RGB only when decoded (:func:`mmit.data.media.decode_image`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional, Tuple

from mmit.data.media import (MAX_MEDIA_BYTES, check_image, media_kind,
                             read_media_bytes, sniff_ext)
from mmit.data.media_check import (check_media_bytes, check_media_file, npy_header,  # noqa: F401
                                   npz_points, pointcloud_shape)
from mmit.data.media_root import (MediaRoot, confine, confined_stat, inside_root,  # noqa: F401
                                  join_relative, known_usable, media_policy, outside_error,
                                  regular_file_stat, remember_usable)
from mmit.data.sample import Media, SampleError


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


def deferred(make: Callable[..., Iterable[str]], *args: Any) -> Iterator[str]:
    """``make(*args)``'s alternatives, computed only if :func:`resolve_media_path` asks for them
    (the path as written is usually right)."""
    yield from make(*args)


def resolve_media_path(path: str, root: str, where: str, alternatives: Iterable[str] = (),
                       coco: bool = True, allow_absolute: Optional[bool] = None
                       ) -> Tuple[str, Optional[str]]:
    """Find the file a record's media path points to, inside ``root``.

    Tried in order, first usable file wins: ``path`` itself if absolute, else ``root/path``
    (leading ``./`` removed); then each of ``alternatives`` (absolute, or relative to ``root``;
    readers pass their format's known layouts); then, with ``coco=True``, the COCO 2014/2017
    spellings (:func:`coco_name_variants`) of every candidate so far. A candidate is usable when it
    is a file whose real location is inside ``root`` (:func:`inside_root`), or anywhere with
    ``allow_absolute`` (default: ``root``'s :class:`MediaRoot` policy, else False).

    Returns ``(resolved path, how)`` where ``how`` is None for the path as written,
    ``"alternative"`` or ``"coco-name"``. Costs one ``stat`` and one ``realpath`` when the path is
    right.

    Raises :class:`SampleError` naming ``where``: ``invalid-record`` (not a non-empty string),
    ``media-outside-root`` (no usable candidate, but one existed outside the root: ``../x.jpg``,
    an absolute path elsewhere, a symlink out of the root), else ``missing-media`` (naming the
    path as resolved against ``root``).
    """
    if not isinstance(path, str) or not path.strip():
        raise SampleError(f"{where}: media path must be a non-empty string, got {path!r}",
                          "invalid-record")
    allow = media_policy(root)[0] if allow_absolute is None else allow_absolute

    def full(p: str) -> str:
        p = strip_dot_slash(p)
        return p if os.path.isabs(p) else join_relative(root, p)

    first = full(path)
    if isinstance(root, MediaRoot) and allow_absolute is None:  # the usual case, in one lstat
        st = root.regular_file_inside(first)
        if st is not None:
            remember_usable(root, first, st)
            return first, None
    alts: List[str] = []

    def candidates() -> Iterator[Tuple[str, Optional[str]]]:  # lazily: the first one usually is it
        yield first, None
        for a in alternatives:
            alts.append(full(a))
            yield alts[-1], "alternative"
        if coco:
            for c in [first] + alts:
                for v in coco_name_variants(c):
                    yield v, "coco-name"

    outside = None
    for cand, how in candidates():
        st = regular_file_stat(cand)
        if st is not None:
            inside = None
            if allow or (inside := inside_root(cand, root)):
                if inside or allow_absolute is None:  # what confine() would decide for it
                    remember_usable(root, cand, st)
                return cand, how
            outside = outside or cand
    if outside is not None:
        raise outside_error(where, path, root, outside)
    raise SampleError(f"{where}: media file not found: {first}", "missing-media")


# -- media bytes ------------------------------------------------------------------------------------

_EXT_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "tif": "tiff"}


def load_media(media: Media, where: str, max_pixels: Optional[int] = None,
               max_bytes: Optional[Mapping[str, int]] = None) -> Media:
    """Read ``media.path`` into ``media.data`` and set ``media.ext`` from the content.

    * The file is read only when under its size cap (``max_bytes[kind]``, default
      :data:`~mmit.data.media.MAX_MEDIA_BYTES`; from ``fstat``, before reading):
      ``media-too-large`` otherwise.
    * Extensions lie (``xray.jpg`` is a PNG, ShareGPT4V's ``breaking_bad.png`` is WebP):
      ``ext`` is what :func:`mmit.data.media.sniff_ext` finds in the bytes; when the file name says
      otherwise, ``meta["named_ext"]`` keeps the name's extension.
    * The bytes must be of the declared kind: an ``image`` that is not an image format (an HTML
      error page saved as ``.jpg``, a truncated file) raises ``undecodable-image``; a
      ``pointcloud`` must be a numeric ``.npy`` (or ``.npz``) array of shape ``(N, C)`` with
      ``C >= 3`` (xyz, optionally rgb, ...; ``meta["shape"]`` and ``meta["dtype"]`` are set,
      nothing is unpickled): other formats (PLY, ...) raise ``unsupported-pointcloud``, bad arrays
      ``undecodable-pointcloud`` (the reasons ``mmit convert`` uses); ``video`` / ``audio`` must
      pass the container probe of :func:`mmit.data.media_check.check_media_bytes`
      (``undecodable-video`` / ``undecodable-audio``).
    * ``max_pixels`` (e.g. :data:`mmit.data.media.MAX_PIXELS`): also parse the image header,
      set ``meta["width"]``/``meta["height"]`` and raise ``image-too-large`` above the cap.
      RGBA, palette and grayscale images pass unchanged: the bytes are kept as stored and
      :func:`mmit.data.media.decode_image` turns them into RGB when pixels are needed.

    The path is not confined here: readers call :func:`attach_media`, which confines it first.

    Returns ``media`` (modified in place). Raises :class:`SampleError` naming ``where`` and the
    file: ``missing-media`` (cannot read), ``media-too-large``, ``undecodable-image``,
    ``image-too-large``, ``undecodable-video``, ``undecodable-audio``,
    ``unsupported-pointcloud``, ``undecodable-pointcloud``.
    """
    caps = MAX_MEDIA_BYTES if max_bytes is None else max_bytes
    try:
        data = read_media_bytes(media.path, media.kind, caps.get(media.kind))
    except OSError as e:
        raise SampleError(f"{where}: cannot read {media.kind} file {media.path}: "
                          f"{e.strerror or e}", "missing-media") from None
    except SampleError as e:
        raise SampleError(f"{where}: {e}", e.reason) from None
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
    else:
        check_media_bytes(data, media.kind, f"{where}: {media.path}", caps)
    media.data, media.ext = data, ext
    return media


def attach_media(m: Media, where: str, root: str, load_bytes: bool,
                 max_pixels: Optional[int] = None, written: Optional[str] = None) -> Media:
    """The media rule every reader applies to a file-backed :class:`Media` (``m.path`` set).

    1. Confine: ``m.path`` must be a file whose real location is inside ``root``
       (:func:`confine`; lifted by a :class:`MediaRoot` with ``allow_absolute``).
    2. ``load_bytes``: read it with :func:`load_media` (size cap, content checks, ``max_pixels``).
       Otherwise check it without reading it whole (:func:`~mmit.data.media_check.
       check_media_file`: size cap; video/audio probed; point-cloud header; images by size only,
       their pixels are checked by ``mmit convert`` or the decoder).

    ``written``: the path as the record wrote it (for messages). Caps come from ``root``'s
    policy (:func:`media_policy`). Returns ``m``. Raises :class:`SampleError`:
    ``missing-media``, ``media-outside-root``, ``media-too-large`` and the content reasons of
    :func:`load_media`.
    """
    if not m.path:
        raise SampleError(f"{where}: {m.kind} has no file path", "missing-media")
    known = known_usable(root, m.path)  # just resolved by resolve_media_path: confined already
    if known is None:
        known = confined_stat(m.path, root, where, written)
    caps = media_policy(root)[1]
    if load_bytes:
        return load_media(m, where, max_pixels, caps)
    check_media_file(m.path, m.kind, where, caps, known_stat=known)
    return m
