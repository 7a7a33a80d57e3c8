"""The canonical JSON of a :class:`~mmit.data.sample.Sample` in shards and resume digests.

* :func:`dump_json`: canonical JSON bytes (sorted keys, compact, UTF-8) of any value: every ``.json``
  member, ``_stats.json`` and the resume digest (:func:`mmit.data.convert_plan.task_digest`).
* :func:`sample_json`: a sample as the dict :meth:`Sample.to_json` gives (media bytes left out).
* :class:`SplitSampleJson`: a sample's canonical JSON encoded once around its ``media`` list, so that
  the digest (media as read) and the shard's ``.json`` member (media after :func:`~mmit.data.
  shard_build.prepare_media` added sizes and types) each encode only the media list again: the
  same bytes as :func:`dump_json` of :func:`sample_json` (``tests/test_data_shards.py``).
* :func:`media_list_json`: ``dump_json(media_json(sample))``.

The last two encode with orjson (~5x faster than ``json`` on a sample's metadata) where its bytes
are provably those of :func:`dump_json`, and fall back to :func:`dump_json` elsewhere (see
:func:`_plain_meta_json`); ``tests/test_sample_encoding.py`` compares the two on every kind of value.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Dict, List, NamedTuple, Optional

import orjson

from mmit.data.sample import _ORJSON_STRICT, Media, Sample, Turn

_FAST_JSON = ([f.name for f in dataclasses.fields(Sample)] == ["id", "turns", "media", "task",
                                                               "source", "meta"]
              and [f.name for f in dataclasses.fields(Media)] == ["kind", "path", "data", "ext", "meta"]
              and [f.name for f in dataclasses.fields(Turn)] == ["role", "content"])
#: The canonical encoder (no circular-reference check: a third of the time; validated samples nest
#: at most 64 deep, and a cycle raises ``RecursionError``).
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                            check_circular=False)
_META_KEY = b',"meta":'
#: Sorted keys, as :func:`dump_json`; subclasses of str/int/dict/list, dataclasses and dates make
#: orjson raise (json encodes a subclass through its own methods, and refuses the others): those
#: values take the ``json`` route.
_ORJSON_OPTS = orjson.OPT_SORT_KEYS | _ORJSON_STRICT
#: orjson's form of a float with a one-digit negative exponent (``7e-6``; ``json``: ``7e-06``).
_SHORT_EXPONENT = re.compile(rb"e-[6-9](?![0-9])")
_STR_OR_NONE = (str, type(None))


def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, compact, UTF-8) used for every ``.json`` member. Raises
    ``TypeError`` for a value JSON cannot hold and ``RecursionError`` for a structure holding itself."""
    return _ENCODER.encode(obj).encode("utf-8")


def _plain_meta_json(meta: Any) -> Optional[bytes]:
    """orjson's encoding of ``meta`` when it is :func:`dump_json`'s byte for byte, else None.

    The two encoders (``json`` with sorted keys, compact separators, UTF-8; orjson with sorted
    keys) write strings, ints, bools, lists and objects alike. They differ on floats of magnitude
    in [1e-9, 1e-4) (``1e-05`` / ``0.00001``, ``1e-06`` / ``1e-6``) and on NaN and infinities
    (``NaN`` / ``null``): output holding ``null``, ``0.0000`` or a one-digit negative exponent
    (anywhere, strings included) is refused. Values orjson cannot encode (a non-string key, an int
    beyond 64 bits, a lone surrogate, a subclass of a JSON type, nesting past 255) are refused too.
    orjson also encodes ``enum.Enum`` members (as their value) and ``uuid.UUID`` (as a string),
    which ``json`` refuses with ``TypeError``: such metadata is written instead of failing."""
    try:
        out = orjson.dumps(meta, option=_ORJSON_OPTS)
    except TypeError:  # orjson.JSONEncodeError
        return None
    if b"null" in out or b"0.0000" in out or (b"e-" in out and _SHORT_EXPONENT.search(out)):
        return None
    return out


def media_list_json(sample: Sample) -> bytes:
    """``dump_json(media_json(sample))``, through orjson where :func:`_plain_meta_json` accepts each
    media item's ``meta`` and its ``kind``, ``path`` and ``ext`` are strings or None. Raises as
    :func:`dump_json`."""
    items = []
    for m in sample.media:
        meta = _plain_meta_json(m.meta) if _FAST_JSON else None
        if meta is None or type(m.kind) is not str or type(m.path) not in _STR_OR_NONE \
                or type(m.ext) not in _STR_OR_NONE:
            break
        items.append({"ext": m.ext, "kind": m.kind, "meta": orjson.Fragment(meta), "path": m.path})
    else:
        try:
            return orjson.dumps(items)
        except TypeError:  # a lone surrogate in a path: json's own error below
            pass
    return dump_json(media_json(sample))


def media_json(sample: Sample) -> List[Dict[str, Any]]:
    """The ``media`` list of :func:`sample_json`."""
    return [{"kind": m.kind, "path": m.path, "ext": m.ext, "meta": m.meta} for m in sample.media]


def sample_json(sample: Sample) -> Dict[str, Any]:
    """Same value as :meth:`Sample.to_json` without ``dataclasses.asdict``'s deep copies (which cost
    more than the tar write of a small image); falls back to ``to_json`` if the fields change."""
    if not _FAST_JSON:
        return sample.to_json()
    return {"id": sample.id, "turns": [{"role": t.role, "content": t.content} for t in sample.turns],
            "media": media_json(sample), "task": sample.task, "source": sample.source,
            "meta": sample.meta}


class SplitSampleJson(NamedTuple):
    """``head + dump_json(media_json(sample)) + tail == dump_json(sample_json(sample))``: the id
    comes before ``"media"`` in sorted order, ``meta``, ``source``, ``task`` and ``turns`` after."""

    head: bytes
    tail: bytes

    @classmethod
    def of(cls, sample: Sample) -> Optional["SplitSampleJson"]:
        """The split of ``sample``'s JSON, or None when :class:`Sample`'s fields are not the six
        this layout assumes or the id is not a string. Raises as :func:`dump_json`."""
        if not _FAST_JSON or type(sample.id) is not str:
            return None
        turns = sample.turns
        rest = {"id": sample.id, "meta": sample.meta, "source": sample.source, "task": sample.task,
                "turns": [{"content": t.content, "role": t.role} for t in turns]}
        meta = None
        if type(sample.task) in _STR_OR_NONE and type(sample.source) in _STR_OR_NONE and all(
                type(t.role) is str and type(t.content) is str for t in turns):
            meta = _plain_meta_json(sample.meta)
        try:  # every value but the meta is a str or None here: orjson writes them as json does
            encoded = None if meta is None else orjson.dumps(dict(rest, meta=orjson.Fragment(meta)))
        except TypeError:  # a lone surrogate: json's own error below
            encoded = None
        if encoded is None:
            encoded = dump_json(rest)
        # the id is a JSON string: a quote inside it is escaped, so the first ',"meta":' ends it
        cut = encoded.index(_META_KEY)
        return cls(encoded[:cut] + b',"media":', encoded[cut:])

    def with_media(self, sample: Sample) -> bytes:
        """The canonical JSON of ``sample``, whose fields other than ``media`` must be those this
        split was made from (:meth:`ShardWriter.write <mmit.data.shards.ShardWriter.write>`)."""
        return self.head + media_list_json(sample) + self.tail
