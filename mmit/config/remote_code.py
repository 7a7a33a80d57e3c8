"""``trust_remote_code``: custom modelling code runs only when the command line of the run allows it.

A config field named ``trust_remote_code`` (``model.llm.trust_remote_code``, and any component that
gains one) lets transformers import Python files shipped with a model folder or hub repo (its
``auto_map``). A config file is data, so it can never turn that on:

* :func:`mmit.config.schema.load_config` drops every ``trust_remote_code`` key read from a file
  (with a warning naming the file and the keys); only a command-line override sets it
  (``mmit train --model.llm.trust_remote_code=true``);
* :func:`mmit.training.checkpoint.load_model_from_checkpoint` sets every such field of a checkpoint's
  config to its caller's ``trust_remote_code`` (``mmit generate`` / ``mmit eval --trust-remote-code``),
  whatever the saved config says.

The fields are found by name, so a new component's ``trust_remote_code`` field is covered without
listing it here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Tuple

#: The field / key name.
TRUST_FIELD = "trust_remote_code"

_FALSE_WORDS = {"false", "no", "off", "0", "n", ""}


def _asks(v: Any) -> bool:
    """Whether a raw (YAML) value asks for remote code: true, a non-zero number, "yes", ..."""
    if isinstance(v, str):
        return v.strip().lower() not in _FALSE_WORDS
    return bool(v)


def pop_trust_requests(d: Any, prefix: str = "") -> List[str]:
    """Remove every ``trust_remote_code`` key from the raw config ``d`` (nested dicts and lists) in
    place. Returns the dotted names of those whose value asked for remote code (``model.llm.trust_remote_code``),
    in document order; keys set to false are removed silently."""
    asked = []
    if isinstance(d, dict):
        if TRUST_FIELD in d:
            if _asks(d.pop(TRUST_FIELD)):
                asked.append(prefix + TRUST_FIELD)
        for k, v in d.items():
            asked.extend(pop_trust_requests(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            asked.extend(pop_trust_requests(v, f"{prefix}{i}."))
    return asked


def trust_fields(cfg: Any, prefix: str = "") -> List[Tuple[str, Any, str]]:
    """``(dotted name, holder, attribute)`` of every ``trust_remote_code`` field in the dataclass tree
    ``cfg`` (dataclasses nested in fields, lists, tuples and dict values included)."""
    out: List[Tuple[str, Any, str]] = []
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        for f in dataclasses.fields(cfg):
            if f.name == TRUST_FIELD:
                out.append((prefix + f.name, cfg, f.name))
            else:
                out.extend(trust_fields(getattr(cfg, f.name), f"{prefix}{f.name}."))
    elif isinstance(cfg, (list, tuple)):
        for i, v in enumerate(cfg):
            out.extend(trust_fields(v, f"{prefix}{i}."))
    elif isinstance(cfg, dict):
        for k, v in cfg.items():
            out.extend(trust_fields(v, f"{prefix}{k}."))
    return out


def set_trust_remote_code(cfg: Any, value: bool) -> List[str]:
    """Set every ``trust_remote_code`` field of the config ``cfg`` to ``value`` in place. Returns the
    dotted names of the fields that were true before."""
    was = []
    for name, holder, attr in trust_fields(cfg):
        if getattr(holder, attr):
            was.append(name)
        setattr(holder, attr, bool(value))
    return was
