"""iVQA reader (format ``heldout-ivqa``): Yang et al., "Just Ask", arXiv 2012.00451; an
InstructBLIP held-out video QA set (test, iVQA accuracy).

File: one CSV per split (antoyang/just-ask), with a header row. Columns, as we understand the
release (not verified against a real file here): ``video_id, start, end, question, answer1 ..
answer5``; the clip is the YouTube video ``video_id`` cut from ``start`` to ``end`` seconds.

Videos: ``media_root/`` + ``video_pattern`` (default ``{video_id}_{start}_{end}.mp4``; any CSV
column may be named). Sample: ``<video>\\nQuestion: {question} Short answer:``, answer turn =
the most frequent of the five answers, ``meta["answers"]`` = the non-empty answers (score with
``ivqa-accuracy``: min(#matches / 2, 1)); ``meta`` keeps
``start`` / ``end``. Ids: ``"<video_id>-<row index>"``.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional

from mmit.data.record_csv import iter_csv_dicts, read_csv_header
from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (check_args, default_root, media_item, run,
                                              vqa_sample)
from mmit.data.stats import SkipCounter


def read_ivqa(path, media_root=None, missing: str = "skip", stats: Optional[SkipCounter] = None,
              load_bytes: bool = False, *, allow_absolute: bool = False,
              max_media_bytes: Optional[Dict[str, int]] = None,
              video_pattern: str = "{video_id}_{start}_{end}.mp4") -> Iterator[Sample]:
    """Read an iVQA CSV as eval samples (see module docstring). Raises ``FileNotFoundError``,
    ``ValueError`` (no ``video_id``/``question`` column), ``SampleError`` under
    ``missing="error"`` (``invalid-record``, ``no-answer``, ``missing-media``)."""
    path = check_args("heldout-ivqa", path, missing)
    root = default_root(path, media_root, allow_absolute, max_media_bytes)
    header = read_csv_header(path)
    # (line, row or BadRecord): undecodable rows, fields too large, unclosed quotes; run() counts them
    rows = list(iter_csv_dicts(path))
    if rows and not {"video_id", "question"} <= set(header):
        raise ValueError(f"{path}: expected CSV columns video_id, question, answer1..answer5; "
                         f"got {', '.join(header)}")

    def convert(row, where, index) -> Sample:
        if None in row or any(v is None for v in row.values()):
            raise SampleError(f"{where}: wrong number of fields for the header", "invalid-record")
        answers = [row[k].strip() for k in sorted(row) if k and k.startswith("answer")
                   and row[k] and row[k].strip()]
        try:
            rel = video_pattern.format(**row)
        except (KeyError, ValueError) as e:
            raise SampleError(f"{where}: video_pattern {video_pattern!r} needs column {e}",
                              "invalid-record") from None
        media = [media_item("video", rel, root, where, load_bytes)]
        return vqa_sample(f"{row['video_id']}-{index}", row["question"], answers, media,
                          task="ivqa", source="heldout-ivqa", where=where,
                          start=row.get("start"), end=row.get("end"))

    return run(((i, r, f"{path}: line {line}") for i, (line, r) in enumerate(rows)), convert,
               missing, stats)


FORMATS.register("heldout-ivqa", read_ivqa)
