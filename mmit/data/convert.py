"""``mmit convert``: any registered source format → webdataset shards (img2dataset layout).

Output folder::

    00000.tar 00000_stats.json 00001.tar 00001_stats.json ... _stats.json

``_stats.json`` is written last (atomically), so its presence means the run finished; it holds
``format``, ``input``, ``records_in``, ``written``, ``skipped`` (reason → count), ``shards`` (count) and
satisfies ``records_in == written + sum(skipped.values())``.

Pipeline: the reader (:data:`mmit.data.sources.FORMATS`) parses records in the main process and
checks that media files exist; records are cut into shards of ``shard_size`` readable records; each
shard is one call of the pure function :func:`build_shard` ``(shard index, [(input index, Sample)])``,
run inline (``workers=1``) or in a ``ProcessPoolExecutor``. It reads each media file once, sniffs its
type from content, checks images cheaply (:func:`mmit.data.media.check_image`; ``check="decode"``
for a full decode) and stores the ORIGINAL bytes — nothing is re-encoded; each image's
``Media.meta`` gains ``width`` and ``height`` (pixels). Tar member mtimes are
fixed, so the tars are byte-identical for any number of workers.

A shard can hold fewer than ``shard_size`` samples when some of its images are unreadable.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from mmit.data.media import MAX_PIXELS, check_image, read_media_bytes, sniff_ext
from mmit.data.sample import Sample, SampleError
from mmit.data.shards import ShardWriter, dump_json
from mmit.data.sources import get_reader
from mmit.data.stats import SkipCounter
from mmit.registry import UnknownNameError

_SHARD_FILE = re.compile(r"^(\d{5,}\.tar|\d{5,}_stats\.json|_stats\.json)$")


class _LimitReached(Exception):
    pass


class _Budget(SkipCounter):
    """Reader skip counter that also enforces ``max_records`` on records read (kept + skipped)."""

    def __init__(self, limit: Optional[int]):
        super().__init__()
        self.limit, self.kept = limit, 0

    def room(self) -> bool:
        return self.limit is None or self.kept + self.total < self.limit

    def add(self, reason, sample_id=None, message=None, n=1):
        if n and not self.room():
            raise _LimitReached
        super().add(reason, sample_id, message, n)


def _read_media(sample: Sample) -> List[Any]:
    """Bytes of each media file of ``sample``, or the ``OSError`` reading it raised."""
    out: List[Any] = []
    for m in sample.media:
        try:
            out.append(read_media_bytes(m.path))
        except OSError as e:
            out.append(e)
    return out


def _attach_media(sample: Sample, datas: List[Any], check: str, max_pixels: int) -> None:
    """Attach read bytes to ``sample``, sniff each type and check images; raises SampleError."""
    for j, (m, data) in enumerate(zip(sample.media, datas)):
        where = f"{m.path} (sample {sample.id!r}, media {j})"
        if isinstance(data, OSError):
            raise SampleError(f"{where}: cannot read media file: {data.strerror or data}",
                              "missing-media")
        m.data, m.ext = data, sniff_ext(data)
        if m.kind == "image":
            info = check_image(data, where, max_pixels, full=(check == "decode"))
            m.ext = m.ext or info.ext
            m.meta["width"], m.meta["height"] = info.width, info.height
        m.ext = m.ext or "bin"


def build_shard(shard_index: int, items: Sequence[Tuple[int, Sample]], output: str,
                missing: str = "skip", check: str = "header", max_pixels: int = MAX_PIXELS
                ) -> Tuple[Dict[str, Any], SkipCounter]:
    """Write shard ``{shard_index:05d}.tar`` (+ ``_stats.json``) from ``(input index, Sample)`` items
    whose media are referenced by path. Deterministic: same arguments → byte-identical files.

    Returns ``(shard stats dict, SkipCounter of records dropped here)``. Under ``missing="error"``
    an unreadable or undecodable media file raises :class:`SampleError` naming the file.
    """
    tar_path = os.path.join(output, f"{shard_index:05d}.tar")
    skipped = SkipCounter()
    with ShardWriter(tar_path) as writer:
        for index, sample in items:
            try:
                _attach_media(sample, _read_media(sample), check, max_pixels)
            except SampleError as e:
                if missing == "error":
                    raise
                skipped.add(e.reason, sample.id, str(e))
                continue
            writer.write(sample, index)
            for m in sample.media:
                m.data = None  # keep one sample's bytes in memory at a time
        stats = writer.finish(skipped, records_in=len(items))
    return stats, skipped


def _prepare_output(output: str, overwrite: bool) -> None:
    os.makedirs(output, exist_ok=True)
    old = sorted(n for n in os.listdir(output) if _SHARD_FILE.match(n))
    if old and not overwrite:
        raise FileExistsError(f"output folder {output} already holds {len(old)} shard/stats "
                              f"file(s) (e.g. {old[0]}); use an empty folder or --overwrite")
    for name in sorted(old, key=lambda n: n != "_stats.json"):  # _stats.json goes first
        os.remove(os.path.join(output, name))


def convert(format: str, input: str, output: str, media_root: Optional[str] = None,
            shard_size: int = 1000, workers: int = 1, missing: str = "skip",
            max_records: Optional[int] = None, *, check: str = "header", overwrite: bool = False,
            max_pixels: int = MAX_PIXELS, progress: bool = True) -> Dict[str, Any]:
    """Convert a source annotation file (+ media) into webdataset shards in ``output``.

    Args:
        format: a :data:`~mmit.data.sources.FORMATS` name (``llava``, ...).
        input: the annotation file. media_root: folder relative media paths resolve against.
        output: folder for ``NNNNN.tar``, ``NNNNN_stats.json`` and ``_stats.json`` (created).
        shard_size: readable records per shard (>= 1). workers: shard-building processes (>= 1).
        missing: ``"skip"`` counts every unusable record under its reason (``missing-media``,
            ``invalid-record``, ``undecodable-image``, ...); ``"error"`` stops at the first one.
        max_records: read at most this many input records (kept + skipped), or all when None.
        check: ``"header"`` (default; header parse + ``verify()``, misses truncated JPEG data) or
            ``"decode"`` (full pixel decode; several times slower). See ``check_image``.
        overwrite: delete shard/stats files already in ``output`` (others are left alone).
        max_pixels: images above ``width * height`` are skipped as ``image-too-large``.
        progress: show a tqdm bar (auto-hidden when stderr is not a terminal).

    Returns:
        The ``_stats.json`` dict. Sizes in bytes, ``seconds`` wall time.

    Raises:
        FileNotFoundError (input missing), FileExistsError (shards in output), ValueError (bad
        argument, malformed JSON), UnknownNameError (format), SampleError (``missing="error"``).
    """
    if missing not in ("skip", "error"):
        raise ValueError(f"missing must be 'skip' or 'error', got {missing!r}")
    if check not in ("header", "decode"):
        raise ValueError(f"check must be 'header' or 'decode', got {check!r}")
    if int(shard_size) < 1 or int(workers) < 1:
        raise ValueError(f"shard_size and workers must be >= 1 (got {shard_size}, {workers})")
    if max_records is not None and int(max_records) < 0:
        raise ValueError(f"max_records must be >= 0, got {max_records}")
    input, output = os.fspath(input), os.fspath(output)
    if not os.path.isfile(input):
        raise FileNotFoundError(f"input file not found: {input}")
    if media_root is not None and not os.path.isdir(media_root):
        raise FileNotFoundError(f"media root folder not found: {media_root}")
    reader = get_reader(format)
    _prepare_output(output, overwrite)
    t0 = time.perf_counter()
    budget = _Budget(None if max_records is None else int(max_records))
    skipped = SkipCounter()
    shard_stats: List[Dict[str, Any]] = []
    pending: Deque[Future] = collections.deque()
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    bar = tqdm(unit="rec", desc="convert", disable=None if progress else True)
    opts = (output, missing, check, max_pixels)

    def collect(result: Tuple[Dict[str, Any], SkipCounter]) -> None:
        stats, sk = result
        shard_stats.append(stats)
        skipped.merge(sk)
        bar.update(stats["records_in"])
        bar.set_postfix(written=sum(s["written"] for s in shard_stats), skipped=skipped.total)

    def submit(chunk: List[Tuple[int, Sample]]) -> None:
        index = len(shard_stats) + len(pending)
        if pool is None:
            collect(build_shard(index, chunk, *opts))
            return
        while len(pending) >= 2 * workers:  # bound memory; results are collected in shard order
            collect(pending.popleft().result())
        pending.append(pool.submit(build_shard, index, chunk, *opts))

    try:
        chunk: List[Tuple[int, Sample]] = []
        samples = reader(input, media_root=media_root, missing=missing, stats=budget)
        try:
            for sample in samples:
                if not budget.room():
                    break
                chunk.append((budget.kept + budget.total, sample))
                budget.kept += 1
                if len(chunk) == shard_size:
                    submit(chunk)
                    chunk = []
                if not budget.room():
                    break
        except _LimitReached:
            pass
        finally:
            getattr(samples, "close", lambda: None)()
        if chunk:
            submit(chunk)
        while pending:
            collect(pending.popleft().result())
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    skipped.merge(budget)
    written = sum(s["written"] for s in shard_stats)
    records_in = budget.kept + budget.total
    if records_in != written + skipped.total:  # pragma: no cover - would be a bug here
        raise RuntimeError(f"stats invariant broken: records_in={records_in} written={written} "
                           f"skipped={skipped.as_dict()}")
    result = {
        "format": format, "input": os.path.abspath(input),
        "media_root": None if media_root is None else os.path.abspath(media_root),
        "output": os.path.abspath(output), "records_in": records_in, "written": written,
        "skipped": skipped.as_dict(), "shards": len(shard_stats),
        "shard_files": [s["shard"] for s in shard_stats],
        "bytes": sum(s["bytes"] for s in shard_stats),
        "media_bytes": sum(s["media_bytes"] for s in shard_stats),
        "shard_size": int(shard_size), "workers": int(workers), "missing": missing,
        "check": check, "max_records": max_records,
        "seconds": round(time.perf_counter() - t0, 3),
        "skip_examples": skipped.examples_dict(),
    }
    tmp = os.path.join(output, "_stats.json.tmp")
    with open(tmp, "wb") as f:
        f.write(dump_json(result))
    os.replace(tmp, os.path.join(output, "_stats.json"))
    return result


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise _ArgError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``mmit convert`` argument parser."""
    p = _Parser(prog="mmit convert", description="Convert a dataset into webdataset shards "
                "(NNNNN.tar + NNNNN_stats.json, _stats.json last).")
    p.add_argument("--format", required=True, help="source format, e.g. llava")
    p.add_argument("--input", required=True, help="annotation file (JSON list or JSONL)")
    p.add_argument("--media-root", default=None, help="folder relative media paths resolve against")
    p.add_argument("--output", required=True, help="output folder for the shards")
    p.add_argument("--shard-size", type=int, default=1000, help="records per shard (default 1000)")
    p.add_argument("--workers", type=int, default=1, help="parallel shard writers (default 1)")
    p.add_argument("--missing", choices=("skip", "error"), default="skip",
                   help="unusable records: count and skip (default) or stop with an error")
    p.add_argument("--max-records", type=int, default=None, help="read at most N input records")
    p.add_argument("--check", choices=("header", "decode"), default="header",
                   help="image check: header parse (fast, default) or full decode")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --output")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: ``mmit convert --format llava --input FILE --media-root DIR --output DIR ...``.

    ``argv`` excludes the program name; a leading ``convert`` is accepted and dropped. Prints a
    one-line summary to stdout and returns 0; on an error prints one line to stderr and returns 2.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["convert"]:
        args_list = args_list[1:]
    try:
        args = build_parser().parse_args(args_list)
        stats = convert(args.format, args.input, args.output, media_root=args.media_root,
                        shard_size=args.shard_size, workers=args.workers, missing=args.missing,
                        max_records=args.max_records, check=args.check, overwrite=args.overwrite,
                        progress=not args.no_progress)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except (_ArgError, UnknownNameError, OSError, ValueError) as e:
        msg = " ".join(str(e.args[0] if isinstance(e, UnknownNameError) else e).split())
        print(f"mmit convert: error: {msg}", file=sys.stderr)
        return 2
    sk = SkipCounter().merge(stats["skipped"])
    print(f"converted {stats['records_in']} records: {stats['written']} written, {sk.total} "
          f"skipped ({sk.summary()}) into {stats['shards']} shard(s) in {stats['output']} "
          f"({stats['bytes'] / 1e6:.1f} MB, {stats['seconds']:.1f} s)")
    return 0
