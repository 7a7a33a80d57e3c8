"""Confinement of media files to the media root a reader was given (used by
:mod:`mmit.data.media_resolve`, which re-exports the public names).

A media file is used only when its real location (``os.path.realpath``, every symlink resolved) lies
inside the real media root; a ``../`` path, an absolute path elsewhere or a symlink leading out of the
root is a counted skip ``media-outside-root``. ``allow_absolute=True`` (``mmit convert
--allow-absolute-media``) lifts this for annotations that are trusted to name files anywhere.

* :class:`MediaRoot`: the root folder as a ``str`` that carries the reader's media policy and
  remembers the real location of the folders it has seen (one ``lstat`` per file).
* :func:`confine`, :func:`inside_root`, :func:`outside_error`, :func:`media_policy`.
* The memo of the last usable file (:func:`remember_usable` / :func:`known_usable`), so that
  attaching a file just resolved does not check it again.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, Mapping, Optional, Tuple

from mmit.data.media import MAX_MEDIA_BYTES, media_caps
from mmit.data.sample import SampleError


def join_relative(folder: str, name: str) -> str:
    """``os.path.join(folder, name)`` for a ``name`` that is not absolute, as one concatenation
    (``os.path.join`` costs more than the ``stat`` of the file it names). Same result."""
    if not _POSIX:
        return os.path.join(folder, name)
    if not folder or folder.endswith("/"):
        return folder + name
    return folder + "/" + name


_POSIX = os.sep == "/" and os.path.join("a", "b") == "a/b"


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
        return st if self.holds(join_relative(self._real_dir(head), tail)) else None

    def holds(self, real: str) -> bool:
        """Whether the real (symlink-free) path ``real`` is this root's real location or lies below it."""
        return real == self.real or real.startswith(self._inside_prefix)

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
    try:
        if isinstance(root, MediaRoot):
            return root.holds(root.realpath(path))
        base, real = os.path.realpath(root), os.path.realpath(path)
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
    confined_stat(path, root, where, written)
    return path


def confined_stat(path: str, root: str, where: str, written: Optional[str]) -> os.stat_result:
    """:func:`confine`'s checks; returns the file's ``os.stat`` result."""
    st = regular_file_stat(path)
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


def regular_file_stat(path: str) -> Optional[os.stat_result]:
    """``os.stat(path)`` when it is a regular file (symlinks followed), else None: the test of
    ``os.path.isfile``, keeping the stat."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def remember_usable(root: Any, path: str, st: os.stat_result) -> None:
    """Note that ``path`` was just found usable under ``root`` with ``stat`` result ``st``
    (:func:`known_usable` hands it out once)."""
    global _LAST_USABLE
    _LAST_USABLE = (root, path, st)


def known_usable(root: Any, path: str) -> Optional[os.stat_result]:
    """The remembered stat of ``path`` under ``root``, used up by this call: only the attach that
    follows its resolution skips the checks, never a later one."""
    global _LAST_USABLE
    last = _LAST_USABLE  # one read: another thread may replace it, never half of it
    if last[0] is root and last[1] == path:
        _LAST_USABLE = (None, "", None)
        return last[2]
    return None
