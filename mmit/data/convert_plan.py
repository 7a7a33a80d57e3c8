"""Planning of ``mmit convert`` (:mod:`mmit.data.convert`): the output folder's files, resume
digests and stale shards.

* :func:`task_digest`: the sha256 that decides whether a shard left by an earlier run is reused
  (:func:`plan_shard`: with each sample's JSON, encoded once for the digest and the shard).
* :func:`prepare_output`: create the output folder, refuse another conversion's files, clear this
  tool's files on ``overwrite``, write ``_convert.json``.
* :func:`remove_stale`: delete shard files beyond the new shard count.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmit.data.sample import Sample
from mmit.data.shard_build import SHARD_FORMAT_VERSION, ShardOptions
from mmit.data.sample_encoding import SplitSampleJson, dump_json, media_list_json, sample_json
from mmit.data.shards import TMP_SUFFIX, atomic_write, read_stats

MANIFEST = "_convert.json"
_SHARD_FILE = re.compile(r"^(\d{5,})(\.tar|_stats\.json)$")
_OWNED = re.compile(r"^(\d{5,}\.tar|\d{5,}_stats\.json|_stats\.json|_convert\.json)(\.tmp)?$")


def task_digest(index: int, items: Sequence[Tuple[int, Sample]], options: ShardOptions) -> str:
    """sha256 (hex) of what decides shard ``index``'s bytes: the format version, options and each
    item's position and description (``sample_json``, and the hash of inline media bytes).
    Media files referenced by path are not hashed: a file changed in place is not detected."""
    return plan_shard(index, items, options)[0]


def plan_shard(index: int, items: Sequence[Tuple[int, Sample]], options: ShardOptions
               ) -> Tuple[str, List[Optional[SplitSampleJson]]]:
    """:func:`task_digest` and, per item, its sample's JSON encoded around the media list
    (:class:`~mmit.data.sample_encoding.SplitSampleJson`), which the shard writer reuses: each
    sample is encoded once for both. The digest is the same as encoding each item whole:
    ``sha256`` over ``dump_json([position, sample_json(s), inline hashes])`` per item.

    Returns ``(hex digest, one split per item)``; a split is None for an item whose position is not
    an int or whose id is not a string (the writer then encodes it whole). Raises ``TypeError`` for
    a sample holding a value JSON cannot (validated samples hold none)."""
    h = hashlib.sha256(dump_json([SHARD_FORMAT_VERSION, index, options.fingerprint()]))
    splits: List[Optional[SplitSampleJson]] = []
    for position, s in items:
        inline = [_sha256_hex(m.data) if m.data is not None else None for m in s.media]
        split = SplitSampleJson.of(s) if type(position) is int else None
        if split is None:
            h.update(dump_json([position, sample_json(s), inline]))
        else:
            hashes = (b",".join([b"null"] * len(inline)) if not any(inline)  # no inline media: the usual case
                      else dump_json(inline)[1:-1])
            h.update(b"".join((b"[%d," % position, split.head, media_list_json(s), split.tail,
                               b",[", hashes, b"]]")))
        splits.append(split)
    return h.hexdigest(), splits


#: id(bytes) -> (the bytes object, its sha256): readers hand the same decoded image to many
#: samples (MIMIC-IT's in-context examples); the object is held, so its id cannot be reused.
_SHA_MEMO: "OrderedDict[int, Tuple[bytes, str]]" = OrderedDict()


def _sha256_hex(data: bytes) -> str:
    hit = _SHA_MEMO.get(id(data))
    if hit is not None and hit[0] is data:
        return hit[1]
    digest = hashlib.sha256(data).hexdigest()
    if isinstance(data, bytes) and len(data) <= 1 << 20:  # immutable: the digest stays right
        _SHA_MEMO[id(data)] = (data, digest)
        if len(_SHA_MEMO) > 64:  # at most 64 MiB held
            _SHA_MEMO.popitem(last=False)
    return digest


def forget_inline_hashes() -> None:
    """Drop the bytes :func:`task_digest` remembered (called when a conversion ends)."""
    _SHA_MEMO.clear()


def prepare_output(output: str, manifest: Dict[str, Any], overwrite: bool) -> None:
    """Create ``output``; resume (same manifest), refuse (other manifest) or clear (overwrite)."""
    os.makedirs(output, exist_ok=True)
    ours = sorted(n for n in os.listdir(output) if _OWNED.match(n))
    shards = [n for n in ours if _SHARD_FILE.match(n)]
    old = read_stats(os.path.join(output, MANIFEST))
    if shards and not overwrite and old != manifest:
        if old is None:
            why = "no readable _convert.json"
        else:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            why = "; ".join(f"{k}: {old.get(k)!r} -> {manifest.get(k)!r}" for k in diff)
        raise FileExistsError(f"output folder {output} holds {len(shards)} shard file(s) of "
                              f"another conversion ({why}); use the same options to resume, "
                              "an empty folder, or --overwrite")
    doomed = ours if overwrite else [n for n in ours if n == "_stats.json" or
                                     n.endswith(TMP_SUFFIX)]
    for name in sorted(doomed, key=lambda n: n != "_stats.json"):  # _stats.json goes first
        os.remove(os.path.join(output, name))
    atomic_write(os.path.join(output, MANIFEST), dump_json(manifest))


def remove_stale(output: str, n_shards: int) -> None:
    """Delete shard files numbered ``>= n_shards`` (left by an earlier, longer run)."""
    for name in os.listdir(output):
        m = _SHARD_FILE.match(name)
        if m and int(m.group(1)) >= n_shards:
            os.remove(os.path.join(output, name))


def merge_counts(into: Dict[str, Dict[str, int]], counts: Dict[str, Dict[str, int]]) -> None:
    for group, c in counts.items():
        g = into.setdefault(group, {})
        for k, v in c.items():
            g[k] = g.get(k, 0) + int(v)
