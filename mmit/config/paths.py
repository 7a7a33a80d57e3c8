"""Config fields that name local files or folders, declared on the field itself.

A field made with :func:`path_field` may hold a path relative to the folder its config lives in: a
checkpoint's ``config.yaml`` names ``llm``, ``vision_tower`` (``mmit import``) or
``qformer_tokenizer`` beside it. :func:`absolutise` resolves every such field of a loaded config
against the checkpoint folder when the relative path exists there, so no code has to list which
fields of which family hold paths.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, List

#: ``dataclasses.field`` metadata key that marks a path field.
PATH_METADATA = "mmit_path"


def path_field(default: Any) -> Any:
    """A dataclass field with ``default`` that holds a hub id, a registry name or a local path
    (resolved against a checkpoint folder by :func:`absolutise`)."""
    return dataclasses.field(default=default, metadata={PATH_METADATA: True})


def path_fields(cfg: Any, prefix: str = "") -> List[tuple]:
    """``(dotted name, holder, attribute)`` of every path field in the dataclass tree ``cfg``."""
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.metadata.get(PATH_METADATA):
            out.append((prefix + f.name, cfg, f.name))
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.extend(path_fields(v, f"{prefix}{f.name}."))
    return out


def absolutise(cfg: Any, base: str | os.PathLike) -> List[str]:
    """Resolve relative path fields of ``cfg`` that exist under ``base`` in place; returns their names."""
    base = Path(base)
    done = []
    for name, holder, attr in path_fields(cfg):
        v = getattr(holder, attr)
        if isinstance(v, str) and v and not os.path.isabs(v) and (base / v).exists():
            setattr(holder, attr, str(base / v))
            done.append(name)
    return done
