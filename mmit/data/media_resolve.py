"""Finding, confining and loading the media a record names, for every reader (see
:mod:`mmit.data.normalize` for the text rules).

* :func:`resolve_media_path` / :func:`coco_name_variants`: ``./`` prefixes, format-specific
  alternative layouts, COCO 2014 (``COCO_train2014_000000033471.jpg``) vs 2017
  (``000000033471.jpg``) names.
* Confinement (:func:`confine`, :class:`MediaRoot`): a media file is used only when its real
  location (``os.path.realpath``, every symlink resolved) lies inside the real media root; a
  ``../`` path, an absolute path elsewhere or a symlink leading out of the root is a counted skip
  ``media-outside-root``. ``allow_absolute=True`` (``mmit convert --allow-absolute-media``) lifts
  this for annotations that are trusted to name files anywhere.
* :func:`attach_media`: the one rule every reader applies to a media file: confine it, check its
  size and content (:mod:`mmit.data.media_check`), and read it with ``load_bytes``.
* :func:`load_media`: bytes kept exactly as stored, type sniffed from content (extensions lie),
  content checked against the media kind, optional pixel cap (``image-too-large``); RGBA /
  palette / grayscale images become RGB only when decoded (:func:`mmit.data.media.decode_image`).
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from mmit.data.media import (MAX_MEDIA_BYTES, check_image, media_caps, media_kind,
                             read_media_bytes, sniff_ext)
from mmit.data.media_check import (check_media_bytes, check_media_file, npy_header,  # noqa: F401
                                   npz_points, pointcloud_shape)
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


def join_relative(folder: str, name: str) -> str:
    """``os.path.join(folder, name)`` for a ``name`` that is not absolute, as one concatenation
    (``os.path.join`` costs more than the ``stat`` of the file it names). Same result."""
    if not _POSIX:
        return os.path.join(folder, name)
    if not folder or folder.endswith("/"):
        return folder + name
    return folder + "/" + name


_POSIX = os.sep == "/" and os.path.join("a", "b") == "a/b"


def strip_dot_slash(path: str) -> str:
    """``./raw_datasets/x.jpg`` → ``raw_datasets/x.jpg`` (repeated ``./`` too); others unchanged."""
    while path.startswith("./"):
        path = path[2:]
    return path


#: Folders whose real location one :class:`MediaRoot` remembers (the cache is emptied when full).
_REAL_DIRS_MAX = 65536


class MediaRoot(str):
    """A media root folder that also carries the reader's media policy.

    It is the ``str`` readers already join relative paths to, so it passes through every reader
    function unchanged; :func:`confine`, :func:`resolve_media_path` and :func:`attach_media` read
    ``allow_absolute`` (bool: may media lie outside the root?) and ``max_bytes`` (kind → size
    cap in bytes, :data:`~mmit.data.media.MAX_MEDIA_BYTES` by default) from it. A plain ``str``
    root means the defaults: confined, default caps. ``real`` is the root's ``realpath``.

    Raises ``ValueError`` (from :func:`~mmit.data.media.media_caps`) for a bad cap.
    """

    allow_absolute: bool
    max_bytes: Dict[str, int]
    real: str

    def __new__(cls, root: Any, allow_absolute: bool = False,
                max_media_bytes: Optional[Mapping[str, int]] = None) -> "MediaRoot":
        self = super().__new__(cls, os.fspath(root))
        self.allow_absolute = bool(allow_absolute)
        self.max_bytes = media_caps(max_media_bytes)
        self.real = os.path.realpath(self)
        self._inside_prefix = self.real.rstrip(os.sep) + os.sep
        self._real_dirs: Dict[str, str] = {}
        return self

    def realpath(self, path: str) -> str:
        """``os.path.realpath(path)``, with the real location of folders remembered (for the
        life of this root, i.e. one reader run): a file in a folder seen before costs one
        ``lstat`` instead of one per path component, a file in a new folder one more per new
        folder level. Raises ``ValueError`` for a NUL byte, as ``realpath``."""
        head, tail = os.path.split(path)
        if tail in ("", ".", ".."):
            return os.path.realpath(path)
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return os.path.realpath(path)
        except OSError:
            return os.path.realpath(path)
        return os.path.join(self._real_dir(head), tail)

    def regular_file_inside(self, path: str) -> Optional[os.stat_result]:
        """The ``os.lstat`` of ``path`` when it is a regular file (not a symlink) whose real
        location lies inside this root, else None, in which case nothing is decided: a symlink,
        a missing file or a file outside the root take :func:`resolve_media_path`'s general
        route (and its messages). One ``lstat``: for a file that is not a link it is also its
        ``stat``, and its real location is its folder's (remembered) plus its name."""
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        head, tail = os.path.split(path)
        real = join_relative(self._real_dir(head), tail)
        return st if real == self.real or real.startswith(self._inside_prefix) else None

    def _real_dir(self, folder: str) -> str:
        real = self._real_dirs.get(folder)
        if real is not None:
            return real
        parent, name = os.path.split(folder)
        if not parent or not name or name in (".", "..") or parent == folder:
            return os.path.realpath(folder)  # "" (the current folder: not cached), "/", ".."
        try:
            link = stat.S_ISLNK(os.lstat(folder).st_mode)
        except OSError:
            link = True  # realpath decides (a missing folder is kept as written)
        real = os.path.realpath(folder) if link else os.path.join(self._real_dir(parent), name)
        if len(self._real_dirs) >= _REAL_DIRS_MAX:
            self._real_dirs.clear()
        self._real_dirs[folder] = real
        return real


def media_policy(root: str) -> Tuple[bool, Mapping[str, int]]:
    """``(allow_absolute, max_bytes)`` of ``root``: a :class:`MediaRoot`'s, else the defaults."""
    if isinstance(root, MediaRoot):
        return root.allow_absolute, root.max_bytes
    return False, MAX_MEDIA_BYTES


def inside_root(path: str, root: str) -> bool:
    """Whether the real location of ``path`` (symlinks resolved) is ``root``'s real location or
    lies below it. Pure path work plus ``realpath``'s ``lstat`` calls; nothing is opened."""
    base = root.real if isinstance(root, MediaRoot) else os.path.realpath(root)
    try:
        real = root.realpath(path) if isinstance(root, MediaRoot) else os.path.realpath(path)
    except ValueError:  # a NUL byte in the path: no such file, anywhere
        return False
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def outside_error(where: str, written: str, root: str, path: str) -> SampleError:
    """The ``media-outside-root`` :class:`SampleError` for media path ``written`` (found at
    ``path``) that leaves ``root``."""
    try:
        real = os.path.realpath(path)
    except ValueError:  # a NUL byte
        real = repr(path)
    return SampleError(f"{where}: media path {written!r} leads outside the media root {root} (to "
                       f"{real}); refused unless absolute media are allowed "
                       f"(mmit convert --allow-absolute-media, reader option allow_absolute=True)",
                       "media-outside-root")


def confine(path: str, root: str, where: str, written: Optional[str] = None) -> str:
    """``path`` when it is an existing regular file whose real location is inside ``root``
    (always true when ``root`` is a :class:`MediaRoot` with ``allow_absolute``).

    ``written``: the path as the record wrote it, for the message. Raises :class:`SampleError`
    ``missing-media`` (no such file, or a folder) or ``media-outside-root``.
    """
    _confined_stat(path, root, where, written)
    return path


def _confined_stat(path: str, root: str, where: str, written: Optional[str]) -> os.stat_result:
    """:func:`confine`'s checks; returns the file's ``os.stat`` result."""
    st = _regular_file_stat(path)
    if st is None:
        what = "is a folder, not a file" if os.path.isdir(path) else "not found"
        raise SampleError(f"{where}: media file {what}: {path}", "missing-media")
    if not media_policy(root)[0] and not inside_root(path, root):
        raise outside_error(where, path if written is None else written, root, path)
    return st


#: ``(root, path, os.stat result)`` of the last file :func:`resolve_media_path` found usable (a
#: regular file inside ``root``, or anywhere under ``root``'s own ``allow_absolute`` policy):
#: :func:`attach_media` of that same path and root does not check it again, and the image size
#: check reuses its ``stat`` (three system calls fewer per record).
_LAST_USABLE: Tuple[Any, str, Optional[os.stat_result]] = (None, "", None)


def _regular_file_stat(path: str) -> Optional[os.stat_result]:
    """``os.stat(path)`` when it is a regular file (symlinks followed), else None: the test of
    ``os.path.isfile``, keeping the stat."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _remember_usable(root: Any, path: str, st: os.stat_result) -> None:
    global _LAST_USABLE
    _LAST_USABLE = (root, path, st)


def _known_usable(root: Any, path: str) -> Optional[os.stat_result]:
    """The remembered stat of ``path`` under ``root``, used up by this call: only the attach that
    follows its resolution skips the checks, never a later one."""
    global _LAST_USABLE
    last = _LAST_USABLE  # one read: another thread may replace it, never half of it
    if last[0] is root and last[1] == path:
        _LAST_USABLE = (None, "", None)
        return last[2]
    return None


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
            _remember_usable(root, first, st)
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
        st = _regular_file_stat(cand)
        if st is not None:
            inside = None
            if allow or (inside := inside_root(cand, root)):
                if inside or allow_absolute is None:  # what confine() would decide for it
                    _remember_usable(root, cand, st)
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
    known = _known_usable(root, m.path)  # just resolved by resolve_media_path: confined already
    if known is None:
        known = _confined_stat(m.path, root, where, written)
    caps = media_policy(root)[1]
    if load_bytes:
        return load_media(m, where, max_pixels, caps)
    check_media_file(m.path, m.kind, where, caps, known_stat=known)
    return m
