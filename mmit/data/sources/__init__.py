"""Source-format readers: one function per on-disk format, all yielding :class:`Sample` records.

A reader is registered in :data:`FORMATS` under a kebab-case name (``llava``, ...) and follows::

    reader(path, media_root=None, missing="skip", stats: SkipCounter | None = None,
           load_bytes=False) -> Iterator[Sample]

* ``path``: the annotation file; ``media_root``: folder relative media paths resolve against.
* ``missing``: ``"skip"`` counts unusable records in ``stats`` under their reason and goes on;
  ``"error"`` raises :class:`~mmit.data.sample.SampleError` naming the file and record.
* ``load_bytes``: fill ``Media.data`` (and ``Media.ext`` sniffed from content) when True; otherwise
  only ``Media.path`` is set (after checking the file without reading it whole).
* ``allow_absolute=False``, ``max_media_bytes=None`` (keyword): the media policy every reader
  applies through :func:`mmit.data.media_resolve.attach_media`: media confined to ``media_root``
  (symlinks resolved; else ``media-outside-root``) unless ``allow_absolute``; per-kind size caps
  (``media-too-large``); video/audio probed (``undecodable-video`` / ``undecodable-audio``).
  ``mmit convert --allow-absolute-media`` passes ``allow_absolute=True``.

Every module in this package is imported on the first :func:`get_reader` / :func:`available_formats`
call, so a new format only needs a module here that calls ``FORMATS.register(name, fn)``.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Callable, Dict, Iterator, List

from mmit.registry import Registry, UnknownNameError

#: Format name → reader function (see module docstring for the reader signature).
FORMATS: Registry[Callable[..., Iterator]] = Registry("data format")

_import_errors: Dict[str, BaseException] = {}
_loaded = False
_loading = False
_lock = threading.RLock()


def _load_all() -> None:
    """Import every submodule once so that their ``FORMATS.register`` calls run. Thread-safe: other
    threads wait until every module is imported (a re-entrant call from an import returns at once)."""
    global _loaded, _loading
    if _loaded:
        return
    with _lock:
        if _loaded or _loading:
            return
        _loading = True
        try:
            for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
                if info.name.startswith("_"):
                    continue
                try:
                    importlib.import_module(f"{__name__}.{info.name}")
                except Exception as e:  # one broken format must not hide the others
                    _import_errors[info.name] = e
        finally:
            _loading = False
        _loaded = True


def available_formats() -> List[str]:
    """Names of all registered formats, sorted."""
    _load_all()
    return FORMATS.names()


def get_reader(name: str) -> Callable[..., Iterator]:
    """The reader function registered as ``name``.

    Raises :class:`~mmit.registry.UnknownNameError` (a ``KeyError``) listing close matches; if some
    reader module failed to import, the error says which and why.
    """
    _load_all()
    try:
        return FORMATS.get(name)
    except UnknownNameError as e:
        if _import_errors:
            broken = "; ".join(f"mmit.data.sources.{m}: {type(x).__name__}: {x}"
                               for m, x in sorted(_import_errors.items()))
            e.args = (f"{e.args[0]} (modules that failed to import: {broken})",)
        raise
