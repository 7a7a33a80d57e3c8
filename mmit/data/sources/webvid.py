"""WebVid caption-CSV reader (format name ``webvid``).

WebVid: "Frozen in Time: A Joint Video and Image Encoder for End-to-End Retrieval", Bain et al.,
arXiv 2104.00650 (m-bain/webvid ``download.py``); used for Video-LLaMA stage 1 (arXiv 2306.02858,
``webvid_datasets.py``) and as VideoChat's video source. Formats: DATASETS.md §7.

Files it reads: ``results_2M_train.csv``, ``results_2M_val.csv``, ``results_10M_{train,val}.csv``,
re-hosted partitions with the same columns, or ``.tsv`` (tab-separated) copies; ``path`` may also
be a folder, whose ``*.csv``/``*.tsv`` files are read in name order (Video-LLaMA's
``WebvidDataset`` reads every CSV of ``anno_dir``). Columns are found **by header name** (copies order them differently)::

    videoid,contentUrl,duration,page_dir,name
    videoid,name,page_idx,page_dir,duration,contentUrl

* ``videoid`` (required) → :attr:`Sample.id`; ``name`` (or ``caption`` / ``text``, required) → the
  caption; ``page_dir`` → the video folder; ``contentUrl`` → ``meta["url"]``; ``duration``
  (ISO-8601 ``PT00H00M17S``) → ``meta["duration"]`` as written and ``meta["duration_s"]`` (float
  seconds); every other column → ``meta`` as strings.
* Video: ``Media(kind="video")`` at ``media_root/<page_dir>/<videoid>.mp4`` (the download layout,
  ``videos/000001_000050/1066674784.mp4``), else ``media_root/<videoid>.mp4``; ``load_bytes`` reads
  the file unchanged. Default ``media_root``: the CSV's folder.
* Turns: ``user`` = ``"<video>"`` (``"<video>\\n" + prompt`` with ``prompt=``), ``assistant`` =
  the caption: a caption pair, as LLaVA's stage-1 captions and Video-LLaMA's stage-1 WebVid pairs.
  ``task = "captioning"``, ``source = "webvid"``.

Skip reasons: ``invalid-record`` (wrong field count, empty ``videoid`` or caption),
``duplicate-id`` (a ``videoid`` an earlier row had, over all files read; the first row is kept),
``malformed-csv`` (an unclosed quote: the field would swallow the next rows; its line is skipped and
the next lines are read as rows), ``field-too-large`` (a field over ``max_field_chars``),
``bad-encoding`` (a row with bytes that are not UTF-8; a file that is not UTF-8 at all is a one-line
``ValueError``): :mod:`mmit.data.record_io`,
``missing-media`` (most WebVid URLs are dead, so many videos are never downloaded),
``media-outside-root`` (the video's real location, symlinks resolved, is outside ``media_root``),
``media-too-large``, ``undecodable-video`` (not a video container with a video stream: checked
with a PyAV probe of the file's header, also without ``load_bytes``).
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterator, List, Optional, Union

from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.sources import FORMATS
from mmit.data.normalize import IdSet, check_missing_policy
from mmit.data.record_csv import MAX_CSV_FIELD_CHARS, iter_csv_dicts, read_csv_header
from mmit.data.record_io import BadRecord
from mmit.data.media_resolve import MediaRoot, resolve_media_path
from mmit.data.sources._media_helpers import VIDEO_PLACEHOLDER, attach_file, report, validated
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]
CAPTION_COLUMNS = ("name", "caption", "text")
_ISO_DURATION = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?"
                           r"(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_iso_duration(text: str) -> Optional[float]:
    """Seconds in an ISO-8601 duration such as ``PT00H00M17S`` (WebVid's ``duration``), or None
    when ``text`` is not one."""
    m = _ISO_DURATION.match(text.strip()) if isinstance(text, str) else None
    if not m or not any(m.groups()):
        return None
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def _csv_files(path: str) -> List[str]:
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith((".csv", ".tsv")))
        if not files:
            raise FileNotFoundError(f"no .csv/.tsv files in WebVid folder {path}")
        return files
    if not os.path.isfile(path):
        raise FileNotFoundError(f"WebVid CSV not found: {path}")
    return [path]


def _delimiter(file: str) -> str:
    return "\t" if file.lower().endswith(".tsv") else ","


def _columns(fieldnames: Optional[List[str]], path: str) -> Dict[str, str]:
    """Map our names (``videoid``, ``caption``, ``page_dir``, ``url``, ``duration``) to header
    names (case and surrounding spaces ignored). Raises ``ValueError`` naming the file."""
    if not fieldnames:
        raise ValueError(f"{path}: empty WebVid CSV (no header line)")
    by_lower = {f.strip().lower(): f for f in fieldnames if f is not None}
    cols: Dict[str, str] = {}
    for ours, names in (("videoid", ("videoid", "video_id")), ("caption", CAPTION_COLUMNS),
                        ("page_dir", ("page_dir",)), ("url", ("contenturl", "url")),
                        ("duration", ("duration",))):
        found = next((by_lower[n] for n in names if n in by_lower), None)
        if found is not None:
            cols[ours] = found
    for need, names in (("videoid", "videoid"), ("caption", "/".join(CAPTION_COLUMNS))):
        if need not in cols:
            raise ValueError(f"{path}: WebVid CSV has no {names!r} column (header: "
                             f"{', '.join(fieldnames)})")
    return cols


def _row_to_sample(row: Dict[str, Optional[str]], cols: Dict[str, str], where: str,
                   media_root: str, load_bytes: bool, prompt: Optional[str]) -> Sample:
    if None in row or any(v is None for v in row.values()):
        raise SampleError(f"{where}: wrong number of fields for the header", "invalid-record")
    vid = row[cols["videoid"]].strip()
    caption = row[cols["caption"]].strip()
    if not vid:
        raise SampleError(f"{where}: empty videoid", "invalid-record")
    where = f"{where} (videoid {vid!r})"
    if not caption:
        raise SampleError(f"{where}: empty caption", "invalid-record")
    page_dir = row[cols["page_dir"]].strip() if "page_dir" in cols else ""
    rel = f"{page_dir}/{vid}.mp4" if page_dir else f"{vid}.mp4"
    media = Media(kind="video", path=os.path.join(media_root, rel))
    meta: Dict[str, object] = {}
    for k, v in row.items():
        if k in (cols["videoid"], cols["caption"]):
            continue
        if k == cols.get("url"):
            meta["url"] = v
        elif k == cols.get("duration"):
            meta["duration"] = v
            secs = parse_iso_duration(v)
            if secs is not None:
                meta["duration_s"] = secs
        else:
            meta[k] = v
    user = VIDEO_PLACEHOLDER + (f"\n{prompt.strip()}" if prompt and prompt.strip() else "")
    sample = validated(Sample(id=vid, turns=[Turn("user", user), Turn("assistant", caption)],
                              media=[media], task="captioning", source="webvid", meta=meta), where)
    media.path, _ = resolve_media_path(rel, media_root, where, alternatives=[f"{vid}.mp4"],
                                       coco=False)
    media.meta["original_path"] = os.path.relpath(media.path, media_root)
    attach_file(media, where, load_bytes, media_root)  # confined, size-capped, probed as video
    return sample


def read_webvid(path: PathLike, media_root: Optional[PathLike] = None, missing: str = "skip",
                stats: Optional[SkipCounter] = None, load_bytes: bool = False, *,
                prompt: Optional[str] = None, allow_absolute: bool = False,
                max_media_bytes: Optional[Dict[str, int]] = None,
                max_field_chars: int = MAX_CSV_FIELD_CHARS) -> Iterator[Sample]:
    """Read WebVid caption CSV(s) as video-caption samples (``source="webvid"``).

    Args:
        path: a CSV/TSV file or a folder of them.
        media_root: the ``videos/`` folder (holding ``<page_dir>/<videoid>.mp4`` or
            ``<videoid>.mp4``). Default: the CSV's folder (for a folder ``path``: that folder).
        missing: ``"skip"`` counts unusable rows in ``stats`` by reason; ``"error"`` raises.
        stats: skip counter (a fresh one when None).
        load_bytes: read each video into ``Media.data`` (bytes unchanged), ``Media.ext`` sniffed.
        prompt: optional instruction text after ``<video>\\n`` in the user turn.
        allow_absolute: accept videos outside ``media_root`` (a ``page_dir`` or ``videoid`` with
            ``..``, symlinks leading out); by default they are ``media-outside-root`` skips.
        max_media_bytes: per-kind size caps in bytes lowering
            :data:`~mmit.data.media.MAX_MEDIA_BYTES` (``media-too-large`` skips).
        max_field_chars: longest CSV field accepted, in characters (default 16 MiB; Python's
            ``csv`` stops at 131,072); a longer one is a ``field-too-large`` skip.

    Raises:
        FileNotFoundError: ``path`` missing (at call time). ValueError: no header, or no
            ``videoid``/caption column (names the file and the header found), a header that
            cannot be read, a file that is not UTF-8.
        SampleError: under ``missing="error"``, naming the file, line and videoid.
    """
    check_missing_policy(missing)
    path = os.fspath(path)
    files = _csv_files(path)
    if media_root is not None:
        root = os.fspath(media_root)
    else:
        root = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    root = MediaRoot(root, allow_absolute, max_media_bytes)
    # header errors surface at call time, not midway through a run
    columns = {file: _columns(read_csv_header(file, _delimiter(file), max_field_chars), file)
               for file in files}
    counter = stats if stats is not None else SkipCounter()

    def gen() -> Iterator[Sample]:
        ids = IdSet()
        for file in files:
            cols = columns[file]
            for line, row in iter_csv_dicts(file, _delimiter(file), max_field_chars=max_field_chars):
                where = f"{file}: line {line}"
                if isinstance(row, BadRecord):
                    e = row.error(f"{file}")
                    if missing == "error":
                        raise e
                    counter.add(e.reason, line, str(e), n=row.lines)
                    continue
                try:
                    sample = _row_to_sample(row, cols, where, root, load_bytes, prompt)
                    ids.check(sample.id, where)
                except SampleError as e:
                    report(e, missing, counter, row.get(cols["videoid"]) or line)
                    continue
                yield sample

    return gen()


FORMATS.register("webvid", read_webvid)
