"""Reading config YAML as data: PyYAML's safe loader, no Python tags, ``!include`` only where allowed.

Configs are data and never code. Every config file is read with :func:`read_yaml`: the document is
composed into nodes with ``yaml.SafeLoader``, every node's tag is checked before anything is
constructed, and only the YAML core tags the safe constructor knows (``!!str``, ``!!int``, ``!!map``,
``!!binary``, ``!!timestamp``, ...) are accepted. Python tags (``!!python/object:...``,
``!!python/name:...``) and custom tags are refused with a ``ValueError`` naming the file, the line and
column, and the tag.

``!include FILE`` (a path relative to the including file, as draccus reads it) is accepted only when
the caller allows it: in a user's own config passed with ``--config_path``, never in a config read from
a checkpoint (:func:`mmit.config.schema.load_checkpoint_config`). An included file is vetted with the
same rules; a cycle or more than :data:`MAX_INCLUDE_DEPTH` levels is an error.

Errors never echo file contents: a parse error names file, line and column and PyYAML's description
of the problem with any quoted text in it left out; a refused ``!include`` names the tag, not its target.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional, Tuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: The one custom tag mmit knows: ``!include FILE`` (user configs only).
INCLUDE_TAG = "!include"
#: Nesting limit for ``!include`` chains.
MAX_INCLUDE_DEPTH = 8
#: Tags the safe constructor builds (the YAML core schema plus ``binary``, ``timestamp``, ``omap``, ...)
#: and the merge key ``<<`` (resolved by the safe constructor before building).
SAFE_TAGS = frozenset([*(t for t in yaml.SafeLoader.yaml_constructors if t is not None),
                       "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"])

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _scrub(problem: str) -> str:
    """PyYAML's problem text without the document's words: quoted fragments are kept only when they
    are token names (``'<stream end>'``) or a single character (``','``, ``'\\t'``); others
    (alias and anchor names, scalars) become ``...``."""
    def keep(m: "re.Match") -> str:
        inner = m.group(0)[1:-1]
        token = inner.startswith("<") and inner.endswith(">") and len(inner) <= 20
        return m.group(0) if token or len(inner) <= 2 else "..."

    return _QUOTED.sub(keep, problem)


def _where(mark) -> str:
    """``file:line:column`` (1-based) of a PyYAML mark."""
    return f"{mark.name}:{mark.line + 1}:{mark.column + 1}"


def _short(tag: str) -> str:
    """A tag as written (``!!python/object:x`` rather than ``tag:yaml.org,2002:python/object:x``),
    cut to 80 characters."""
    if tag.startswith("tag:yaml.org,2002:"):
        tag = "!!" + tag[len("tag:yaml.org,2002:"):]
    return tag if len(tag) <= 80 else tag[:77] + "..."


def _describe(e: yaml.YAMLError, path: str) -> str:
    """A one-line description of a PyYAML error without the document's text: the position
    (``file:line:column``) and the problem (:func:`_scrub`); no snippet of the line."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = _where(mark) if mark is not None else str(path)
    if isinstance(e, yaml.reader.ReaderError):
        return f"{path}: not readable as YAML text (a non-UTF-8 byte or a control character at offset {e.position})"
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or type(e).__name__
    return f"{where}: invalid YAML: {_scrub(str(problem))}"


def _refuse(node: Node, allow_include: bool, what: str) -> ValueError:
    tag = _short(node.tag)
    if node.tag == INCLUDE_TAG:
        why = (f"{INCLUDE_TAG} is refused in {what} (configs read from checkpoints are data and cannot "
               "read other files)" if not allow_include else
               f"{INCLUDE_TAG} must be a mapping value or a list item naming a file")
    else:
        why = (f"the YAML tag {tag!r} is refused in {what}: configs are data (only plain YAML values; "
               "no Python objects or custom tags)")
    return ValueError(f"{_where(node.start_mark)}: {why}")


def _compose(stream, path: str) -> Optional[Node]:
    """The root node of the one document in ``stream`` (None when empty), tags not yet checked."""
    loader = None
    try:
        loader = yaml.SafeLoader(stream)  # reads the first chunk: may raise ReaderError
        return loader.get_single_node()
    except yaml.YAMLError as e:
        raise ValueError(_describe(e, path)) from None
    except RecursionError:
        raise ValueError(f"{path}: YAML nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _include(node: Node, path: str, chain: Tuple[str, ...], what: str) -> Node:
    """The vetted root node of the file an ``!include`` node names (relative to ``path``'s folder)."""
    if not isinstance(node, ScalarNode) or not node.value:
        raise _refuse(node, True, what)
    target = os.path.normpath(os.path.join(os.path.dirname(path), node.value))
    real = os.path.realpath(target)
    if real in chain:
        raise ValueError(f"{_where(node.start_mark)}: {INCLUDE_TAG} cycle (the file includes itself)")
    if len(chain) > MAX_INCLUDE_DEPTH:
        raise ValueError(f"{_where(node.start_mark)}: {INCLUDE_TAG} nested more than {MAX_INCLUDE_DEPTH} deep")
    if not os.path.isfile(target):
        raise FileNotFoundError(f"{_where(node.start_mark)}: {INCLUDE_TAG} names a file that does not exist: {target}")
    root = _read_nodes(target, True, chain + (real,), what)
    # an empty included file is null
    return root if root is not None else ScalarNode("tag:yaml.org,2002:null", "", node.start_mark, node.end_mark)


def _vet(root: Node, path: str, allow_include: bool, chain: Tuple[str, ...], what: str) -> Node:
    """Check every tag under ``root`` (iteratively: no recursion limit); with ``allow_include``,
    replace each ``!include`` value node by the included file's root node. Returns the (new) root."""
    if allow_include and root.tag == INCLUDE_TAG:
        return _include(root, path, chain, what)
    seen = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in seen:  # an anchor used by aliases: the same node object
            continue
        seen.add(id(n))
        if n.tag not in SAFE_TAGS:
            raise _refuse(n, allow_include, what)
        if isinstance(n, SequenceNode):
            for i, c in enumerate(n.value):
                if allow_include and c.tag == INCLUDE_TAG:
                    n.value[i] = _include(c, path, chain, what)
                else:
                    stack.append(c)
        elif isinstance(n, MappingNode):
            for i, (k, v) in enumerate(n.value):
                stack.append(k)
                if allow_include and v.tag == INCLUDE_TAG:
                    n.value[i] = (k, _include(v, path, chain, what))
                else:
                    stack.append(v)
    return root


def _read_nodes(path: str, allow_include: bool, chain: Tuple[str, ...], what: str) -> Optional[Node]:
    with open(path, "rb") as f:
        root = _compose(f, path)
    return None if root is None else _vet(root, path, allow_include, chain, what)


def read_yaml(path: str | os.PathLike, *, allow_include: bool, what: str = "this config") -> Any:
    """The data of the YAML file at ``path``, read as plain values only (module docstring).

    Args:
        path: the file.
        allow_include: accept ``!include FILE`` (a user's own config); False refuses it (a config read
            from a checkpoint or any other folder that is data).
        what: how errors call the file's kind (``"a checkpoint config"``).

    Returns the document (None for an empty file): dicts, lists, strings, numbers, booleans, None,
    and the safe core types (``bytes`` from ``!!binary``, ``datetime`` from timestamps, ``set``).

    Raises ``ValueError`` naming the file, line and column for a YAML syntax error, a Python or custom
    tag, a refused ``!include`` (naming the tag, never its target or any file's content), an include
    cycle or nesting too deep; ``FileNotFoundError`` for a missing file or a missing include target.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    root = _read_nodes(path, allow_include, (os.path.realpath(path),), what)
    if root is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root)
    except yaml.YAMLError as e:  # e.g. a merge key (<<) on a value that is not a mapping
        raise ValueError(_describe(e, path)) from None
    except RecursionError:
        raise ValueError(f"{path}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def parse_yaml_value(text: str, name: str = "value") -> Any:
    """A command-line value read as YAML the way draccus reads it (``4`` -> 4, ``true`` -> True,
    ``[a, b]`` -> a list, ``""`` -> ``""``), with the safe core tags only: no ``!include``, no Python
    tags. Raises ``ValueError`` naming ``name`` (e.g. ``--train.lr``) for a syntax error or a tag."""
    if text == "":
        return text
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None:
            return None
        try:
            _vet(root, name, False, (), "a command-line value")
        except ValueError as e:  # drop the position inside the value
            raise ValueError(f"{name}: {str(e).split(': ', 1)[-1]}") from None
        return loader.construct_document(root)
    except yaml.YAMLError as e:
        problem = ("a non-UTF-8 byte or a control character" if isinstance(e, yaml.reader.ReaderError)
                   else getattr(e, "problem", None) or type(e).__name__)
        raise ValueError(f"{name}: invalid YAML value: {_scrub(str(problem))}") from None
    except RecursionError:
        raise ValueError(f"{name}: YAML value nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
