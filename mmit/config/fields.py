"""Every field of a run config, with its type, default and comment: ``mmit train --help`` and the
"did you mean" of unknown keys (:mod:`mmit.config.suggest`) read them from here.

The comments are the ``#:`` lines written above each field in the dataclass source (the convention of
:mod:`mmit.config.schema`, :mod:`mmit.config.components` and the families' ``config.py``), so the help
text is written once, beside the field. Help is plain text printed as is (never an argparse format
string, so a ``%`` in a comment is just a character).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Optional

_FIELD_LINE = re.compile(r"^(\s*)([A-Za-z_]\w*)\s*:(?!=)")


@dataclass
class FieldDoc:
    """One leaf field: dotted ``name`` (``train.lr``), ``type`` as written (``Literal['cosine',
    'constant']`` -> ``cosine|constant``), ``default`` (the value in the config given, else the
    dataclass default) and ``doc`` (its comment, one line)."""

    name: str
    type: str
    default: Any
    doc: str


@lru_cache(maxsize=None)
def _class_comments(cls: type) -> Dict[str, str]:
    """``{field: comment}`` from the ``#`` lines directly above each field (and an inline ``# ...``)
    in ``cls``'s own source; empty when the source is not available (a class made at run time)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: Dict[str, str] = {}
    body_indent = None
    pending: List[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").lstrip(":").strip())
            continue
        m = _FIELD_LINE.match(line)
        if m and (body_indent is None or len(m.group(1)) == body_indent):
            body_indent = len(m.group(1))
            inline = ""
            if "#" in line and not line.rstrip().endswith(("'", '"')):
                inline = line.split("#", 1)[1].strip()
            out.setdefault(m.group(2), " ".join(p for p in pending + [inline] if p))
        pending = []
    return out


def field_comment(cls: type, name: str) -> str:
    """The comment of field ``name`` of dataclass ``cls`` (looked up along the MRO), or ``""``."""
    for c in inspect.getmro(cls):
        if name in getattr(c, "__annotations__", {}):
            doc = _class_comments(c).get(name, "")
            if doc:
                return doc
    return ""


def type_name(tp: Any) -> str:
    """A short readable name of a type annotation: ``int``, ``float?`` (Optional), ``a|b`` (Literal),
    ``list[str]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        inner = " or ".join(type_name(a) for a in rest)
        return f"{inner}?" if len(rest) < len(args) else inner
    if origin in (list, tuple, dict, typing.List, typing.Tuple, typing.Dict):
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _hints(cls: type) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: the raw one
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _dataclass_in(tp: Any) -> Optional[type]:
    """``tp`` when it is a dataclass, the dataclass inside ``Optional[...]``, else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def config_fields(cls: type, values: Any = None, prefix: str = "") -> List[FieldDoc]:
    """Every leaf field of the dataclass tree ``cls`` (sections are walked, not listed), in source order.

    Args:
        cls: a dataclass type (``run_config_class("llava")``).
        values: an instance whose values to show instead of the defaults (a loaded config), or None.
        prefix: dotted prefix of the names.
    """
    hints = _hints(cls)
    out: List[FieldDoc] = []
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        value = getattr(values, f.name) if values is not None else _default(f)
        sub = type(value) if dataclasses.is_dataclass(value) else _dataclass_in(tp)
        if sub is not None:
            out.extend(config_fields(sub, value if dataclasses.is_dataclass(value) else None, f"{prefix}{f.name}."))
        else:
            out.append(FieldDoc(prefix + f.name, type_name(tp), value, field_comment(cls, f.name)))
    return out


def section_names(cls: type, prefix: str = "") -> List[str]:
    """Dotted names of the sections (nested dataclasses) of ``cls``: ``model``, ``model.llm``, ..."""
    hints = _hints(cls)
    out: List[str] = []
    for f in dataclasses.fields(cls):
        d = _default(f)
        sub = type(d) if dataclasses.is_dataclass(d) else _dataclass_in(hints.get(f.name, f.type))
        if sub is not None:
            out.append(prefix + f.name)
            out.extend(section_names(sub, f"{prefix}{f.name}."))
    return out


def format_fields(fields: List[FieldDoc], width: int = 100, value_label: str = "default") -> str:
    """The fields as help text: one block per field, ``--name=TYPE  (value_label: V)`` then the comment
    wrapped and indented. Plain text: no ``%`` formatting is applied."""
    blocks = []
    for fd in fields:
        head = f"  --{fd.name}  {fd.type}  ({value_label}: {fd.default!r})"
        doc = textwrap.fill(fd.doc, width=width, initial_indent="      ", subsequent_indent="      ") if fd.doc else ""
        blocks.append(head + ("\n" + doc if doc else ""))
    return "\n".join(blocks)


def find_field(fields: List[FieldDoc], name: str) -> Optional[FieldDoc]:
    """The field called ``name`` (dotted), or None."""
    return next((f for f in fields if f.name == name), None)
