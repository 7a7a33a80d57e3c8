"""The local cache of models that mmit builds itself (``tiny-*`` registry members).

Layout: ``mmit_cache_dir() / "tiny" / <name> /`` holds one saved model folder per tiny member,
written by the modelling library's own ``save_pretrained`` (or equivalent) so that it loads back by
path through the same code as a full-size checkpoint. :func:`build_dir_once` makes creation safe
under concurrency (several DataLoader workers, pytest-xdist, two training jobs): each builder writes
into a private temporary folder that is moved into place with one atomic ``os.replace``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

#: File written into every folder made by :func:`build_dir_once`; holds the build ``spec``.
MARKER_NAME = "mmit_build.json"


def mmit_cache_dir() -> Path:
    """Root of mmit's local cache: ``$MMIT_CACHE`` if set (``~`` expanded), else ``~/.cache/mmit``.

    The folder is not created here.
    """
    env = os.environ.get("MMIT_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/mmit").expanduser()


def _read_marker(folder: Path) -> Dict[str, Any] | None:
    try:
        with open(folder / MARKER_NAME, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _share_permissions(folder: Path) -> None:
    """``mkdtemp`` makes a private (0700) folder; give the finished cache entry ordinary permissions
    (0755 folders, 0644 files, less the process umask) so a shared cache stays readable."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o755 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644 & ~umask)


def build_dir_once(final_dir: str | os.PathLike, build: Callable[[Path], None], spec: Dict[str, Any]) -> Path:
    """Return ``final_dir``, first building it with ``build(tmp_dir)`` unless it already holds ``spec``.

    ``spec`` (JSON-serialisable) describes what the folder contains, e.g. the model config and the
    seed; it is written to ``final_dir / MARKER_NAME``. A folder with the same spec is reused as is;
    one with a different or missing spec (an older mmit, an interrupted manual copy) is rebuilt.

    Concurrency: ``build`` runs in a fresh temporary folder beside ``final_dir`` and the result is
    moved into place with ``os.replace``. When two processes race, one rename wins and the other
    discards its copy, so readers never see a half-written folder. Builders must be deterministic.

    Raises whatever ``build`` raises (its temporary folder is removed), and ``OSError`` when the
    cache location is not writable.
    """
    final_dir = Path(final_dir)
    want = json.loads(json.dumps(spec))  # normalise tuples -> lists for the comparison
    if _read_marker(final_dir) == want:
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        build(tmp)
        with open(tmp / MARKER_NAME, "w", encoding="utf-8") as f:
            json.dump(want, f, indent=2, sort_keys=True)
        _share_permissions(tmp)
        if final_dir.exists() and _read_marker(final_dir) != want:  # stale: move it out of the way
            stale = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.stale-", dir=final_dir.parent))
            try:
                os.replace(final_dir, stale / "old")
            except OSError:
                pass  # another process moved it first
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, final_dir)
        except OSError:
            # Another process installed its (identical) copy first; ``os.replace`` refuses to
            # overwrite a non-empty folder.
            if _read_marker(final_dir) != want:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final_dir


def ensure_tiny(what: str, name: str, builders: Dict[str, Callable[[Path], None]], specs: Dict[str, Dict[str, Any]],
                fmt: int) -> Path:
    """``<mmit cache>/tiny/<name>`` for a tiny registry member, built with ``builders[name]`` first if
    absent or stale (:func:`build_dir_once`, spec ``{"format": fmt, "member": name, **specs[name]}``).
    ``what`` names the registry in errors. Raises ``KeyError`` for an unknown name (listing the known
    ones), ``OSError`` if the cache is not writable."""
    if name not in builders:
        raise KeyError(f"no tiny {what} {name!r}; known: {', '.join(sorted(builders))}")
    spec = {"format": fmt, "member": name, **specs[name]}
    return build_dir_once(mmit_cache_dir() / "tiny" / name, builders[name], spec)
