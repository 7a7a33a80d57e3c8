"""The canonical JSON of a :class:`~mmit.data.sample.Sample` in shards and resume digests.

* :func:`dump_json`: canonical JSON bytes (sorted keys, compact, UTF-8) of any value: every ``.json``
  member, ``_stats.json`` and the resume digest (:func:`mmit.data.convert_plan.task_digest`).
* :func:`sample_json`: a sample as the dict :meth:`Sample.to_json` gives (media bytes left out).
* :class:`SplitSampleJson`: a sample's canonical JSON encoded once around its ``media`` list, so that
  the digest (media as read) and the shard's ``.json`` member (media after :func:`~mmit.data.
  shard_build.prepare_media` added sizes and types) each encode only the media list again: the
  same bytes as :func:`dump_json` of :func:`sample_json` (``tests/test_data_shards.py``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, NamedTuple, Optional

from mmit.data.sample import Media, Sample, Turn

_FAST_JSON = ([f.name for f in dataclasses.fields(Sample)] == ["id", "turns", "media", "task",
                                                               "source", "meta"]
              and [f.name for f in dataclasses.fields(Media)] == ["kind", "path", "data", "ext", "meta"]
              and [f.name for f in dataclasses.fields(Turn)] == ["role", "content"])
#: The canonical encoder (no circular-reference check: a third of the time; validated samples nest
#: at most 64 deep, and a cycle raises ``RecursionError``).
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                            check_circular=False)
_META_KEY = b',"meta":'


def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, compact, UTF-8) used for every ``.json`` member. Raises
    ``TypeError`` for a value JSON cannot hold and ``RecursionError`` for a structure holding itself."""
    return _ENCODER.encode(obj).encode("utf-8")


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
        rest = dump_json({"id": sample.id, "turns": [{"role": t.role, "content": t.content}
                                                     for t in sample.turns],
                          "task": sample.task, "source": sample.source, "meta": sample.meta})
        # the id is a JSON string: a quote inside it is escaped, so the first ',"meta":' ends it
        cut = rest.index(_META_KEY)
        return cls(rest[:cut] + b',"media":', rest[cut:])

    def with_media(self, sample: Sample) -> bytes:
        """The canonical JSON of ``sample``, whose fields other than ``media`` must be those this
        split was made from (:meth:`ShardWriter.write <mmit.data.shards.ShardWriter.write>`)."""
        return self.head + dump_json(media_json(sample)) + self.tail
