"""The configs shipped with mmit, found by name (``--config_path llava/tiny_demo``).

Where they live:

* a source checkout (or an editable install): ``configs/`` beside the ``mmit`` package;
* a wheel (``pip install .`` / ``pip install mmit``): ``mmit/_configs/``, the same tree copied into the
  package at build time (``setup.py``'s ``build_py``).

:func:`resolve_config_path` keeps the path a user gives when it exists, so a local ``configs/...`` (an
edited copy) always wins over the shipped one; only a path that does not exist is looked up by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

_PKG = Path(__file__).resolve().parents[1]  # .../mmit
#: Top-level folders of ``configs/`` that hold something other than training runs.
NOT_RUN_CONFIGS = ("eval", "accelerate")


def shipped_config_roots() -> List[Path]:
    """The folders that hold the shipped configs, most specific first: ``mmit/_configs`` (installed
    wheel) and ``<checkout>/configs`` (source tree); only those that exist."""
    roots = [_PKG / "_configs", _PKG.parent / "configs"]
    return [r for r in roots if r.is_dir()]


def shipped_configs(kind: str = "run") -> List[str]:
    """Names of the shipped configs (``llava/tiny_demo``: the path under ``configs/`` without
    ``.yaml``), sorted. ``kind``: ``run`` (training configs), ``eval`` (``eval/...`` suites and tasks)
    or ``all``."""
    names = set()
    for root in shipped_config_roots():
        for p in root.rglob("*.yaml"):
            rel = p.relative_to(root).with_suffix("").as_posix()
            top = rel.split("/", 1)[0]
            if kind == "all" or (kind == "eval" and top == "eval") or (kind == "run" and top not in NOT_RUN_CONFIGS):
                names.add(rel)
    return sorted(names)


def _shipped_file(name: str) -> Optional[Path]:
    rel = name[len("configs/"):] if name.startswith("configs/") else name
    rel = rel.lstrip("/")
    for root in shipped_config_roots():
        for cand in (root / rel, root / f"{rel}.yaml"):
            if cand.is_file():
                return cand
    return None


def resolve_config_path(name: str | os.PathLike) -> str:
    """The file a ``--config_path`` value names.

    An existing path is returned as given (a local file always wins). Otherwise ``name`` is looked up
    among the shipped configs, with or without ``.yaml`` and with or without a leading ``configs/``:
    ``llava/tiny_demo``, ``llava/tiny_demo.yaml`` and ``configs/llava/tiny_demo.yaml`` all name the
    same file.

    Raises ``FileNotFoundError`` naming ``name``, the close matches among the shipped configs and
    where to find the full list (``mmit train`` without ``--config_path``).
    """
    name = os.fspath(name)
    if os.path.exists(name) or os.path.exists(name + ".yaml") and not name.endswith(".yaml"):
        return name if os.path.exists(name) else name + ".yaml"
    if not os.path.isabs(name):
        found = _shipped_file(name)
        if found is not None:
            return str(found)
    import difflib

    key = name[len("configs/"):] if name.startswith("configs/") else name
    key = key[:-5] if key.endswith(".yaml") else key
    close = difflib.get_close_matches(key, shipped_configs("all"), n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise FileNotFoundError(f"config file not found: {name} (neither a file nor a shipped config name{hint}; "
                            "`mmit train` without --config_path lists the shipped configs)")


def missing_config_message(command: str = "mmit train") -> str:
    """The error for a run without ``--config_path``: the shipped configs, by name."""
    names = shipped_configs("run")
    listing = ", ".join(names) if names else "(none found: give a YAML file)"
    return (f"{command} needs --config_path (a YAML file, or the name of a shipped config); the defaults alone "
            f"are the full-size models, which download from the hub. Shipped configs: {listing}. "
            f"Example: {command} --config_path llava/tiny_demo --data.path=DIR_OR_JSON. "
            f"`{command} --help` lists every field")
