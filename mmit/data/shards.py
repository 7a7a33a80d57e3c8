"""Webdataset shards in img2dataset's layout: write (:func:`write_shard`) and read (:func:`iter_shards`).

Layout of an output folder (``mmit convert``)::

    _convert.json  00000.tar  00000_stats.json  00001.tar  00001_stats.json  ...  _stats.json

``NNNNN_stats.json`` is written after its tar is complete and renamed into place, and
``_stats.json`` after every shard: each marks completion (:func:`complete_shard_stats`).

Each sample in a tar is a group of members sharing one key (webdataset splits a member name at the
FIRST dot of its basename: ``<key>.<suffix>``):

* ``<key>.json``: :meth:`Sample.to_json` (turns, media kinds/exts/paths incl.
  ``meta["original_path"]``, task, source, meta), UTF-8, sorted keys.
* ``<key>.0.jpg``, ``<key>.1.mp4``, ``<key>.2.npy``, ...: the media bytes, one member per item in order
  (unmodified unless ``mmit convert`` resizes / re-encodes images); the extension is sniffed from
  content (:func:`mmit.data.media.sniff_ext`), never copied from the source file name.

The key is ``sha1("{source}/{id}/{index}")`` in hex (40 chars): unique per input position, free of dots
and path characters (source file names hold dots, spaces, ``+``, ``#``: DATASETS.md §0, webdataset #288).
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
from collections import Counter
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

from mmit.data.media import sniff_ext
from mmit.data.sample import Sample
from mmit.data.sample_encoding import SplitSampleJson, dump_json, sample_json  # noqa: F401  (re-exported)
from mmit.data.stats import SkipCounter
from mmit.data.tar_members import TarMembers

if TYPE_CHECKING:  # webdataset imports torch (~3 s): it is imported where shards are read
    import webdataset as wds

#: Tar member mtime used for every shard (seconds since epoch): shards are byte-reproducible.
SHARD_MTIME = 0
#: Suffix of files being written (a half-written shard is ``NNNNN.tar.tmp``).
TMP_SUFFIX = ".tmp"
#: Count key for samples whose ``task`` (or ``source``) is None.
NO_TASK = "(none)"


def sample_key(sample: Sample, index: int) -> str:
    """The webdataset ``__key__`` of ``sample`` at input position ``index``: 40 hex chars."""
    return hashlib.sha1(f"{sample.source}/{sample.id}/{index}".encode("utf-8")).hexdigest()


def stats_path(tar_path: Union[str, "os.PathLike[str]"]) -> str:
    """``.../00000.tar`` → ``.../00000_stats.json``."""
    base, _ = os.path.splitext(os.fspath(tar_path))
    return base + "_stats.json"


class ShardWriter:
    """Streaming writer of one shard: ``write(sample, index)`` per sample, then :meth:`finish`.

    Only the sample being written is held in memory (a shard of 1000 large images costs one image
    of RAM). Crash safety: the tar is written as ``NNNNN.tar.tmp``, renamed to ``NNNNN.tar`` by
    :meth:`finish`, which then writes ``NNNNN_stats.json`` (atomically, last): a shard is complete
    exactly when its stats file exists and names the tar's size (:func:`complete_shard_stats`). As a
    context manager, a raising block deletes the partial ``.tmp`` and writes no stats. The ``.tmp``
    is always a new file (an old one is unlinked first), and :meth:`finish` checks that it renames
    that file with exactly the bytes written. The bytes are webdataset ``TarWriter``'s (ustar, its
    member order), written by :class:`mmit.data.tar_members.TarMembers`, one ``writev`` per sample.

    Args:
        tar_path: output ``.tar``; ``*_stats.json`` goes beside it (:func:`stats_path`).
        mtime: member mtime (seconds); fixed so that equal input gives byte-identical tars
            (owner uid/gid 0, names ``mmit``, mode 0444 are fixed too).
    """

    def __init__(self, tar_path: Union[str, "os.PathLike[str]"], mtime: int = SHARD_MTIME):
        self.tar_path = os.fspath(tar_path)
        self.tmp_path = self.tar_path + TMP_SUFFIX
        if os.path.lexists(self.tmp_path):  # left by a killed writer: never write into its inode
            os.remove(self.tmp_path)
        self._file = open(self.tmp_path, "xb")
        self._inode = _inode(os.fstat(self._file.fileno()))
        # the bytes webdataset's TarWriter (ustar, mode 0444, owner mmit) writes, member for member,
        # without its per-member TarInfo work (mmit.data.tar_members)
        self._tw: Optional[TarMembers] = TarMembers(self._file, mtime=mtime, user="mmit",
                                                    group="mmit")
        self._keys: set = set()
        self._finished = False
        self.written = 0
        self.members = 0
        self.size: Optional[int] = None  # bytes of the closed tar, from our own file descriptor
        self._expected: Optional[int] = None  # bytes the tar module wrote
        self.media_bytes = 0
        self.counts: Dict[str, Counter] = {"task": Counter(), "source": Counter(),
                                           "media_kind": Counter()}
        self.text_only = 0

    def write(self, sample: Sample, index: int, split: Optional[SplitSampleJson] = None) -> str:
        """Append ``sample`` (every ``Media.data`` loaded) under key :func:`sample_key`; fills a
        missing ``Media.ext`` from content (``bin`` if unknown). Returns the key. ``split``: the
        sample's JSON around its media list, encoded earlier (for the resume digest) from this
        sample with the same id, turns, task, source and meta; only the media are encoded here.

        Raises ``ValueError`` for a media item without data or a repeated key."""
        key = sample_key(sample, index)
        if key in self._keys:
            raise ValueError(f"{self.tar_path}: duplicate key for sample {sample.id!r} at index "
                             f"{index}")
        obj: Dict[str, Any] = {}
        for j, m in enumerate(sample.media):
            if m.data is None:
                raise ValueError(f"sample {sample.id!r}: media {j} ({m.path}) has no data loaded")
            if not isinstance(m.data, (bytes, bytearray, memoryview)):
                raise ValueError(f"sample {sample.id!r}: media {j} data is "
                                 f"{type(m.data).__name__}, not bytes")
            m.ext = m.ext or sniff_ext(m.data) or "bin"
            obj[f"{j}.{m.ext}"] = m.data
            self.media_bytes += len(m.data)
        obj["json"] = split.with_media(sample) if split is not None else dump_json(sample_json(sample))
        # webdataset's member order: the suffixes sorted as strings
        self._tw.add([(f"{key}.{k}", obj[k]) for k in sorted(obj)])
        self.members += len(obj)
        self._keys.add(key)
        self.written += 1
        self.counts["task"][NO_TASK if sample.task is None else str(sample.task)] += 1
        self.counts["source"][NO_TASK if sample.source is None else str(sample.source)] += 1
        for m in sample.media:
            self.counts["media_kind"][m.kind] += 1
        self.text_only += not sample.media
        return key

    def close(self) -> None:
        """Close the tar file (idempotent); it stays at ``tmp_path`` until :meth:`finish`.

        Records :attr:`size` (the file's size seen through this writer's own descriptor) and the
        size the tar module wrote (its offset plus end blocks and record padding)."""
        if self._tw is not None:
            self._tw.close()
            self._file.flush()
            self.size = os.fstat(self._file.fileno()).st_size
            self._expected = self._tw.offset  # end blocks and record padding included
            self._file.close()
            self._tw = None

    def _ours(self, path: str) -> bool:
        """Whether ``path`` is the file this writer created (same device and inode)."""
        try:
            return _inode(os.stat(path)) == self._inode
        except OSError:
            return False

    def abort(self) -> None:
        """Close and delete the partial ``.tmp`` tar (idempotent; no-op after :meth:`finish`).
        A ``.tmp`` that another writer created meanwhile is left alone."""
        self.close()
        if not self._finished and self._ours(self.tmp_path):
            os.remove(self.tmp_path)

    def finish(self, skipped: Optional[SkipCounter] = None, records_in: Optional[int] = None,
               extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Close the tar, rename it into place and write ``*_stats.json`` (atomically, last).

        Returns the stats dict: ``shard`` (file name), ``records_in`` (default ``written +
        skipped``), ``written``, ``skipped`` (reason → count), ``bytes`` (size of the finished
        tar, measured on this writer's own file), ``members`` (tar members written),
        ``media_bytes``, ``counts`` (``task`` / ``source`` / ``media_kind`` → count; samples
        without task or source count under ``"(none)"``), ``text_only`` (samples without media),
        plus the items of ``extra`` (e.g. the conversion's ``digest``).

        Raises ``RuntimeError`` (and writes no stats) when the file on disk is not exactly what
        this writer wrote: another process wrote into it, replaced or renamed it (two
        conversions into one folder, which :class:`mmit.data.distribute.OutputLock` prevents).
        """
        self.close()
        if self.size != self._expected or not self._ours(self.tmp_path):
            raise RuntimeError(f"{self.tmp_path}: changed by another process while this writer "
                               f"wrote it ({self._expected} bytes written, {self.size} on disk, "
                               "or replaced); is another conversion writing into this folder?")
        os.replace(self.tmp_path, self.tar_path)
        self._finished = True
        # (size, not inode: some network file systems give a renamed file a new inode number)
        if os.path.getsize(self.tar_path) != self.size:
            raise RuntimeError(f"{self.tar_path}: replaced by another process right after it was "
                               "written; is another conversion writing into this folder?")
        skipped = skipped if skipped is not None else SkipCounter()
        stats = {
            "shard": os.path.basename(self.tar_path),
            "records_in": self.written + skipped.total if records_in is None else int(records_in),
            "written": self.written,
            "skipped": skipped.as_dict(),
            "bytes": self.size,
            "members": self.members,
            "media_bytes": self.media_bytes,
            "counts": {k: dict(sorted(c.items())) for k, c in self.counts.items()},
            "text_only": self.text_only,
        }
        stats.update(extra or {})
        atomic_write(stats_path(self.tar_path), dump_json(stats))
        return stats

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.abort()


def _inode(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino


def atomic_write(path: Union[str, "os.PathLike[str]"], data: bytes) -> None:
    """Write ``data`` to ``path`` via ``path + ".tmp"`` and ``os.replace``: readers see either the
    old file or the whole new one, never a prefix."""
    tmp = os.fspath(path) + TMP_SUFFIX
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_stats(path: Union[str, "os.PathLike[str]"]) -> Optional[Dict[str, Any]]:
    """The JSON object in a stats file, or None if it is absent or not a complete JSON object."""
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def complete_shard_stats(tar_path: Union[str, "os.PathLike[str]"],
                         digest: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The stats of a COMPLETE shard at ``tar_path``, else None.

    Complete means: ``*_stats.json`` (written last by :meth:`ShardWriter.finish`) parses, its
    ``bytes`` equals the tar's size, and, when ``digest`` is given, its ``digest`` equals it (so
    a shard built from other records or options is not reused). A tar without stats (killed
    between rename and stats write), a truncated tar or a half-written ``.tmp`` is incomplete.
    """
    stats = read_stats(stats_path(tar_path))
    if stats is None or (digest is not None and stats.get("digest") != digest):
        return None
    try:
        size = os.path.getsize(tar_path)
    except OSError:
        return None
    return stats if stats.get("bytes") == size else None


def write_shard(samples: Iterable[Sample], tar_path: Union[str, "os.PathLike[str]"], *,
                indices: Optional[Iterable[int]] = None, skipped: Optional[SkipCounter] = None,
                records_in: Optional[int] = None, mtime: int = SHARD_MTIME) -> Dict[str, Any]:
    """Write ``samples`` (media bytes loaded) to one uncompressed tar plus its ``*_stats.json``.

    Args:
        samples: samples whose every ``Media.data`` is set (``Media.ext`` sniffed when None).
        tar_path: output ``.tar`` path; the stats file goes beside it (:func:`stats_path`).
        indices: input position of each sample, for :func:`sample_key` (default ``0, 1, ...``).
        skipped: records of this shard dropped before writing (reported in the stats).
        records_in: records this shard was built from (default ``written + skipped.total``).
        mtime: member mtime; fixed so that equal input gives byte-identical tars.

    Returns:
        The stats dict written to ``*_stats.json`` (see :meth:`ShardWriter.finish`).

    Raises:
        ValueError: a media item has no data, or two samples get the same key.
    """
    with ShardWriter(tar_path, mtime=mtime) as w:
        for s, i in zip(samples, itertools.count() if indices is None else indices):
            w.write(s, i)
        return w.finish(skipped, records_in)


def expand_urls(path: Union[str, "os.PathLike[str]", Sequence[Any]]) -> List[str]:
    """Shard list from a folder (all ``*.tar`` in it, sorted), a glob (``out/0000*.tar``, sorted),
    brace notation (``out/{00000..00009}.tar``), a single path/URL, or a list of any of these.

    Raises ``FileNotFoundError`` when a folder or glob matches no tar.
    """
    if isinstance(path, (list, tuple)):
        return [u for p in path for u in expand_urls(p)]
    p = os.fspath(path)
    if os.path.isdir(p):
        urls = sorted(glob.glob(os.path.join(glob.escape(p), "*.tar")))
        if not urls:
            raise FileNotFoundError(f"no *.tar shards in folder {p}")
        return urls
    if "{" in p and ".." in p:
        from webdataset.shardlists import expand_urls as brace_expand
        return list(brace_expand(p))
    if any(c in p for c in "*?["):
        urls = sorted(glob.glob(p))
        if not urls:
            raise FileNotFoundError(f"no shards match {p}")
        return urls
    return [p]


def mix_seed(seed: int, epoch: int) -> int:
    """A 63-bit RNG seed that is a deterministic function of ``(seed, epoch)`` (no ``hash()``)."""
    digest = hashlib.sha256(f"mmit-shards/{int(seed)}/{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def decode_wds_sample(item: Dict[str, Any]) -> Sample:
    """A webdataset sample dict (``__key__``, ``json``, ``0.jpg``, ...) → :class:`Sample` with
    ``Media.data`` attached in order. Raises ``ValueError`` naming shard and key on a missing
    member."""
    where = f"{item.get('__url__')}: key {item.get('__key__')}"
    if "json" not in item:
        raise ValueError(f"{where}: no .json member")
    d = json.loads(item["json"])
    data = []
    for j, m in enumerate(d.get("media", [])):
        name = f"{j}.{m.get('ext') or 'bin'}"
        if name not in item:
            raise ValueError(f"{where}: member {name!r} missing (have {sorted(item)})")
        data.append(item[name])
    return Sample.from_json(d, media_data=data)


def shard_dataset(urls: Union[str, "os.PathLike[str]", Sequence[Any]], *, shuffle_buffer: int = 0,
                  seed: int = 0, epoch: int = 0, resampled: bool = False,
                  split_by_node: bool = True, split_by_worker: bool = True) -> "wds.WebDataset":
    """The ``webdataset.WebDataset`` pipeline behind :func:`iter_shards` (a torch ``IterableDataset``
    yielding :class:`Sample`; give it to a ``DataLoader`` with ``collate_fn``). Same arguments."""
    import webdataset as wds

    shards = expand_urls(urls)
    rng_seed = mix_seed(seed, epoch)
    ds = wds.WebDataset(
        shards,
        resampled=resampled,
        shardshuffle=(False if resampled or shuffle_buffer <= 0 else len(shards)),
        seed=rng_seed,
        nodesplitter=wds.split_by_node if split_by_node else None,
        workersplitter=wds.split_by_worker if split_by_worker else None,
        empty_check=False,
    )
    if resampled:
        # WebDataset(resampled=True) seeds its ResampledShards from pid and time; swap in the same
        # stage in deterministic mode (per-rank/worker seed mixed with ours by webdataset).
        if not isinstance(ds.pipeline[0], wds.ResampledShards):
            raise RuntimeError("unexpected webdataset pipeline layout; cannot seed resampling")
        ds.pipeline[0] = wds.ResampledShards(shards, seed=rng_seed, deterministic=True)
    if shuffle_buffer > 0:
        ds = ds.shuffle(shuffle_buffer, initial=shuffle_buffer, seed=rng_seed)
    return ds.map(decode_wds_sample)


def iter_shards(urls: Union[str, "os.PathLike[str]", Sequence[Any]], *, shuffle_buffer: int = 0,
                seed: int = 0, epoch: int = 0, resampled: bool = False, split_by_node: bool = True,
                split_by_worker: bool = True) -> Iterator[Sample]:
    """Iterate :class:`Sample` records (media bytes attached) from webdataset shards.

    Args:
        urls: folder, glob, brace pattern, path or list (:func:`expand_urls`).
        shuffle_buffer: 0 → shards and samples in stored order. >0 → the shard list is shuffled and
            samples pass through a shuffle buffer of this many samples. Both RNGs are seeded from
            ``(seed, epoch)`` only, so the order is a deterministic function of them.
        seed, epoch: shuffle / resampling seeds; pass a new ``epoch`` each epoch for a new order.
        resampled: draw shards with replacement forever (webdataset's resampled mode, seeded from
            ``(seed, epoch)`` and the rank/worker); the iterator never ends.
        split_by_node: give each torch.distributed rank a disjoint slice of the shard list
            (``wds.split_by_node``; no-op when not distributed).
        split_by_worker: same across DataLoader workers (``wds.split_by_worker``).

    Raises:
        FileNotFoundError: no shards found; ValueError: a sample lacks a member its JSON lists.
    """
    ds = shard_dataset(urls, shuffle_buffer=shuffle_buffer, seed=seed, epoch=epoch,
                       resampled=resampled, split_by_node=split_by_node,
                       split_by_worker=split_by_worker)
    return iter(ds)
