"""``mmit convert``: any registered source format → webdataset shards (img2dataset layout).

Output folder::

    _convert.json  00000.tar 00000_stats.json  00001.tar 00001_stats.json  ...  _stats.json

* ``_convert.json`` (written first): the options that decide the output. A re-run with the same
  options RESUMES: every shard whose ``NNNNN_stats.json`` is complete and carries the same digest
  (hash of the shard's record descriptions and options) is kept, everything else is (re)built. A
  re-run with other options stops with ``FileExistsError`` unless ``overwrite=True``.
* ``NNNNN.tar`` is written as ``NNNNN.tar.tmp`` and renamed when complete; its stats file follows
  (``bytes`` and ``members`` measured on the file written, see :class:`~mmit.data.shards.ShardWriter`).
* ``_convert.lock`` exists while a conversion runs (:class:`~mmit.data.distribute.OutputLock`):
  a second conversion into the same folder stops at once naming the holder (pid, host, since);
  the lock of a killed run on this host is taken over with a warning.
* ``_stats.json`` is written last (atomically), so its presence means the run finished; it holds
  ``format``, ``input``, ``records_in``, ``written``, ``skipped`` (reason → count), ``shards``,
  ``counts`` (per task / source / media kind) and satisfies ``records_in == written +
  sum(skipped.values())``. Records dropped by ``sample_rate`` count as ``skipped["not-sampled"]``.

Pipeline: the reader (:data:`mmit.data.sources.FORMATS`) parses records in this process; records
are cut into shards of ``shard_size`` selected records; each shard is ONE call of the pure function
:func:`build_shard` on a :class:`ShardTask` (shard index, ``(input position, Sample)`` items with
media referenced by path or carried inline, :class:`ShardOptions`). Its only effects are the shard
file and its stats file, so a distributor (:mod:`mmit.data.distribute`: inline, process pool or Ray)
can run it anywhere that sees the same paths, and the bytes written do not depend on where: tar
member mtimes, owners, modes and order are fixed.

Media handling (resize, re-encode, point clouds) lives in :mod:`mmit.data.shard_build`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm

from mmit.data.convert_plan import MANIFEST  # noqa: F401  (re-exported: the manifest's name)
from mmit.data.convert_plan import (forget_inline_hashes, merge_counts, prepare_output,
                                    plan_shard, remove_stale)
from mmit.data.distribute import DISTRIBUTORS, OutputLock, get_distributor
from mmit.data.media import MAX_PIXELS
from mmit.data.record_subset import Intake, chunk_records
from mmit.data.shard_build import (REENCODE, SHARD_FORMAT_VERSION, ShardOptions,
                                   ShardResult, ShardTask, build_shard)
from mmit.data.shards import atomic_write, complete_shard_stats, dump_json
from mmit.data.sample import allow_empty_answers as allow_empty_answers_in
from mmit.data.sources import available_formats, get_reader
from mmit.data.stats import SkipCounter, nothing_written, skip_report
from mmit.registry import UnknownNameError

def convert(format: str, input: str, output: str, media_root: Optional[str] = None,
            shard_size: int = 1000, workers: Optional[int] = None, missing: str = "skip",
            max_records: Optional[int] = None, *, sample_rate: float = 1.0, seed: int = 0,
            resize_max_side: Optional[int] = None, reencode: Optional[str] = None,
            quality: int = 95, check: str = "header", overwrite: bool = False,
            max_pixels: int = MAX_PIXELS, distributor: str = "local",
            ray_address: Optional[str] = None, reader_options: Optional[Dict[str, Any]] = None,
            progress: bool = True, allow_empty_answers: bool = False) -> Dict[str, Any]:
    """Convert a source annotation file (+ media) into webdataset shards in ``output``.

    Args:
        format: a :data:`~mmit.data.sources.FORMATS` name (see ``available_formats()``).
        input: the annotation file or folder the reader takes. media_root: folder relative
            media paths resolve against (reader default when None).
        output: folder for the shards (created). A folder holding a run with the same options
            is resumed: complete shards are kept, the rest rebuilt (module docstring).
        shard_size: selected records per shard (>= 1).
        workers: shards built at once (``local``: processes, default 1; ``ray``: tasks in
            flight, default the cluster's CPUs).
        missing: ``"skip"`` counts every unusable record under its reason (``missing-media``,
            ``invalid-record``, ``undecodable-image``, ...); ``"error"`` stops at the first one.
        max_records: read at most this many input records (selected or not), all when None.
        sample_rate: keep each read record with this probability (0..1), decided by a hash of
            its input position and ``seed`` (:func:`mmit.data.record_subset.is_sampled`); the
            rest count as ``skipped["not-sampled"]``.
        resize_max_side: downscale images whose longer side exceeds this (pixels).
        reencode: ``jpeg``/``png``/``webp``: re-encode every image; None keeps original bytes
            (a resized image is written as JPEG if it was a JPEG, else PNG). quality: 1-100.
        check: ``"header"`` (header parse + ``verify()``) or ``"decode"`` (full decode).
        overwrite: delete this tool's files in ``output`` first (others are left alone).
        max_pixels: images above ``width * height`` are skipped as ``image-too-large``.
        distributor: ``local`` or ``ray`` (:mod:`mmit.data.distribute`); ray_address: cluster.
        reader_options: extra keyword arguments for the reader.
        progress: show a tqdm bar (auto-hidden when stderr is not a terminal).
        allow_empty_answers: keep records whose answer is empty or whitespace (default: counted
            ``empty-answer`` skips, :meth:`~mmit.data.sample.Sample.validate`).

    Returns:
        The ``_stats.json`` dict (sizes in bytes, ``seconds`` wall time, ``reused_shards``).

    Raises:
        FileNotFoundError (input missing), FileExistsError (another conversion's files in
        output), :class:`~mmit.data.distribute.OutputLockedError` (a FileExistsError: another
        conversion is running into output, or a foreign host's lock), RuntimeError (a shard
        file changed under its writer),
        ValueError (bad argument, malformed input), UnknownNameError (format), SampleError
        (``missing="error"``), ImportError (``ray`` not installed).
    """
    if missing not in ("skip", "error"):
        raise ValueError(f"missing must be 'skip' or 'error', got {missing!r}")
    if check not in ("header", "decode"):
        raise ValueError(f"check must be 'header' or 'decode', got {check!r}")
    if int(shard_size) < 1 or (workers is not None and int(workers) < 1):
        raise ValueError(f"shard_size and workers must be >= 1 (got {shard_size}, {workers})")
    if max_records is not None and int(max_records) < 0:
        raise ValueError(f"max_records must be >= 0, got {max_records}")
    if not 0.0 <= float(sample_rate) <= 1.0:
        raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
    if resize_max_side is not None and int(resize_max_side) < 1:
        raise ValueError(f"resize_max_side must be >= 1, got {resize_max_side}")
    if reencode is not None and reencode not in REENCODE:
        raise ValueError(f"reencode must be one of {', '.join(REENCODE)}, got {reencode!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if distributor not in DISTRIBUTORS:
        raise ValueError(f"distributor must be one of {', '.join(DISTRIBUTORS)}, got "
                         f"{distributor!r}")
    input, output = os.fspath(input), os.fspath(output)
    if not os.path.exists(input):
        raise FileNotFoundError(f"input not found: {input}")
    if media_root is not None and not os.path.isdir(media_root):
        raise FileNotFoundError(f"media root folder not found: {media_root}")
    reader = get_reader(format)
    opts = ShardOptions(os.path.abspath(output), missing, check, int(max_pixels),
                        None if resize_max_side is None else int(resize_max_side), reencode,
                        int(quality))
    manifest = {"version": SHARD_FORMAT_VERSION, "format": format,
                "input": os.path.abspath(input),
                "media_root": None if media_root is None else os.path.abspath(media_root),
                "reader_options": dict(reader_options or {}), "shard_size": int(shard_size),
                "max_records": max_records, "sample_rate": float(sample_rate), "seed": int(seed),
                **({"allow_empty_answers": True} if allow_empty_answers else {}), **opts.fingerprint()}
    if distributor == "ray":
        from mmit.data.distribute import import_ray

        import_ray()  # ImportError naming the extra before anything is written
    os.makedirs(output, exist_ok=True)
    with OutputLock(output):  # released on return, exceptions and SIGTERM
        return _convert_locked(format, input, output, media_root, reader, opts, manifest,
                               overwrite=overwrite, shard_size=int(shard_size), workers=workers,
                               missing=missing, check=check, max_records=max_records,
                               sample_rate=float(sample_rate), seed=int(seed), reencode=reencode,
                               quality=int(quality), distributor=distributor,
                               ray_address=ray_address, reader_options=reader_options,
                               progress=progress, allow_empty_answers=allow_empty_answers)


def _convert_locked(format: str, input: str, output: str, media_root: Optional[str],
                    reader: Any, opts: ShardOptions, manifest: Dict[str, Any], *,
                    overwrite: bool, shard_size: int, workers: Optional[int], missing: str,
                    check: str, max_records: Optional[int], sample_rate: float, seed: int,
                    reencode: Optional[str], quality: int, distributor: str,
                    ray_address: Optional[str], reader_options: Optional[Dict[str, Any]],
                    progress: bool, allow_empty_answers: bool = False) -> Dict[str, Any]:
    """The body of :func:`convert` (same arguments, validated), run while this process holds
    the output folder's :class:`~mmit.data.distribute.OutputLock`."""
    dist = get_distributor(distributor, workers, ray_address)
    try:
        prepare_output(output, manifest, overwrite)
    except BaseException:
        dist.close()
        raise
    t0 = time.perf_counter()
    intake = Intake(None if max_records is None else int(max_records), float(sample_rate),
                     int(seed))
    results: Dict[int, ShardResult] = {}
    reused: List[int] = []
    bar = tqdm(unit="rec", desc="convert", total=max_records,
               disable=None if progress else True)

    def done(r: ShardResult) -> None:
        results[r.index] = r
        bar.update(r.stats["records_in"])
        bar.set_postfix(shards=len(results), reused=len(reused),
                        written=sum(x.stats["written"] for x in results.values()))

    def tasks() -> Iterator[ShardTask]:
        with allow_empty_answers_in(allow_empty_answers):  # readers validate each sample (empty-answer)
            samples = reader(input, media_root=media_root, missing=missing, stats=intake,
                             **(reader_options or {}))
            for index, chunk in enumerate(chunk_records(samples, intake, int(shard_size))):
                digest, splits = plan_shard(index, chunk, opts)
                old = complete_shard_stats(os.path.join(output, f"{index:05d}.tar"), digest)
                if old is not None:
                    reused.append(index)
                    done(ShardResult(index, old, SkipCounter().merge(old.get("skipped", {}))))
                else:
                    yield ShardTask(index, chunk, opts, digest, splits)

    try:
        for r in dist.map(build_shard, tasks()):
            done(r)
        bar.update(intake.seen - bar.n)  # records the reader skipped outside any shard
    finally:
        dist.close()
        bar.close()
        forget_inline_hashes()
    remove_stale(output, len(results))

    shard_stats = [results[i].stats for i in range(len(results))]
    skipped = SkipCounter()
    for i in range(len(results)):
        skipped.merge(results[i].skipped)
    skipped.merge(intake)
    written = sum(s["written"] for s in shard_stats)
    records_in = intake.seen
    if records_in != written + skipped.total:  # pragma: no cover - would be a bug here
        raise RuntimeError(f"stats invariant broken: records_in={records_in} written={written} "
                           f"skipped={skipped.as_dict()}")
    counts: Dict[str, Dict[str, int]] = {}
    for s in shard_stats:
        merge_counts(counts, s.get("counts", {}))
    result = {
        "format": format, "input": manifest["input"], "media_root": manifest["media_root"],
        "output": os.path.abspath(output), "records_in": records_in, "written": written,
        "skipped": skipped.as_dict(), "shards": len(shard_stats),
        "shard_files": [s["shard"] for s in shard_stats],
        "bytes": sum(s["bytes"] for s in shard_stats),
        "media_bytes": sum(s["media_bytes"] for s in shard_stats),
        "counts": {k: dict(sorted(v.items())) for k, v in sorted(counts.items())},
        "text_only": sum(s.get("text_only", 0) for s in shard_stats),
        "shard_size": int(shard_size), "workers": getattr(dist, "workers", workers),
        "distributor": distributor, "missing": missing, "check": check,
        "max_records": max_records, "sample_rate": float(sample_rate), "seed": int(seed),
        "resize_max_side": opts.resize_max_side, "reencode": reencode, "quality": int(quality),
        "reused_shards": len(reused), "seconds": round(time.perf_counter() - t0, 3),
        "skip_examples": skipped.examples_dict(),
    }
    atomic_write(os.path.join(output, "_stats.json"), dump_json(result))
    return result


# -- command line ------------------------------------------------------------------------------

class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise _ArgError(message)


def _reader_option(text: str) -> Tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """The ``mmit convert`` argument parser (``--format`` help lists the registered formats)."""
    p = _Parser(prog="mmit convert", description="Convert a dataset into webdataset shards "
                "(NNNNN.tar + NNNNN_stats.json, _stats.json last). Re-running with the same "
                "options resumes: complete shards are kept.")
    p.add_argument("--format", required=True,
                   help=f"source format, one of: {', '.join(available_formats())}")
    p.add_argument("--input", required=True, help="annotation file (or folder) of the source")
    p.add_argument("--media-root", default=None, help="folder relative media paths resolve against")
    p.add_argument("--allow-absolute-media", action="store_true",
                   help="read media outside --media-root too (absolute paths, '..', symlinks leading "
                   "out); without it they are counted skips 'media-outside-root'")
    p.add_argument("--allow-empty-answers", action="store_true",
                   help="keep records whose answer is empty or whitespace (default: counted skips 'empty-answer')")
    p.add_argument("--output", required=True, help="output folder for the shards")
    p.add_argument("--shard-size", type=int, default=1000, help="records per shard (default 1000)")
    p.add_argument("--workers", type=int, default=None,
                   help="shards built at once (local: processes, default 1; ray: default all CPUs)")
    p.add_argument("--distributor", choices=DISTRIBUTORS, default="local",
                   help="local process pool (default) or a Ray cluster (pip install 'mmit[ray]')")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address (default $RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--missing", choices=("skip", "error"), default="skip",
                   help="unusable records: count and skip (default) or stop with an error")
    p.add_argument("--max-records", type=int, default=None, help="read at most N input records")
    p.add_argument("--sample-rate", type=float, default=1.0,
                   help="keep each record with this probability (deterministic, see --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample-rate (default 0)")
    p.add_argument("--resize-max-side", type=int, default=None, metavar="N",
                   help="downscale images so the longer side is at most N pixels")
    p.add_argument("--reencode", choices=tuple(REENCODE), default=None,
                   help="re-encode every image in this format (default: keep original bytes)")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality 1-100 (default 95)")
    p.add_argument("--check", choices=("header", "decode"), default="header",
                   help="image check: header parse (fast, default) or full decode")
    p.add_argument("--reader-option", type=_reader_option, action="append", default=[],
                   metavar="KEY=VALUE", help="extra reader argument (VALUE parsed as JSON if it can be)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier conversion in --output instead of resuming it")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: ``mmit convert --format llava --input FILE --media-root DIR --output DIR ...``.

    ``argv`` excludes the program name; a leading ``convert`` is accepted and dropped. Prints a
    one-line summary to stdout and, when records were skipped, the top skip reasons with one
    example each to stderr (:func:`mmit.data.stats.skip_report`); returns 0. Returns 2 with a
    one-line error on stderr for bad arguments and failures, and when no record was written
    (every record skipped, e.g. without ``--media-root``: :func:`~mmit.data.stats.nothing_written`).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["convert"]:
        args_list = args_list[1:]
    try:
        a = build_parser().parse_args(args_list)
        stats = convert(a.format, a.input, a.output, media_root=a.media_root,
                        shard_size=a.shard_size, workers=a.workers, missing=a.missing,
                        max_records=a.max_records, sample_rate=a.sample_rate, seed=a.seed,
                        resize_max_side=a.resize_max_side, reencode=a.reencode,
                        quality=a.quality, check=a.check, overwrite=a.overwrite,
                        distributor=a.distributor, ray_address=a.ray_address,
                        reader_options=dict(a.reader_option, **({"allow_absolute": True} if
                                                                a.allow_absolute_media else {})),
                        progress=not a.no_progress, allow_empty_answers=a.allow_empty_answers)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except (_ArgError, UnknownNameError, OSError, ValueError, ImportError) as e:
        msg = " ".join(str(e.args[0] if isinstance(e, UnknownNameError) else e).split())
        print(f"mmit convert: error: {msg}", file=sys.stderr)
        return 2
    sk = SkipCounter().merge(stats["skipped"])
    reused = f", {stats['reused_shards']} kept from an earlier run" if stats["reused_shards"] else ""
    print(f"converted {stats['records_in']} records: {stats['written']} written, {sk.total} "
          f"skipped ({sk.summary()}) into {stats['shards']} shard(s){reused} in "
          f"{stats['output']} ({stats['bytes'] / 1e6:.1f} MB, {stats['seconds']:.1f} s)")
    for line in skip_report(stats):
        print(line, file=sys.stderr)
    if stats["written"] == 0:
        print(f"mmit convert: error: {nothing_written(stats, a.media_root)}", file=sys.stderr)
        return 2
    return 0
