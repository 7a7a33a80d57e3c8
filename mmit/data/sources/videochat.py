"""VideoChat instruction-data reader (format name ``videochat``).

VideoChat: "VideoChat: Chat-Centric Video Understanding", Li et al., arXiv 2305.06355. Reference
code: OpenGVLab/Ask-Anything ``video_chat/dataset/it_dataset.py`` (``ITImgTrainDataset`` /
``ITVidTrainDataset``) @ 4dd8210; the same files feed Video-LLaMA (arXiv 2306.02858,
``video_instruct_dataset.py``). Formats: DATASETS.md §7.

Files it reads: ``videochat_instruct_11k.json`` (video), ``minigpt_caption_3k.json`` and
``llava_complex_reasoning_2k.json`` (image), and any file of the same shape — a JSON list (or JSONL)
of records::

    {"video": "<page_dir>/<videoid>.mp4", "QA": [{"q": "...", "a": "..."}, ...], "start": 3.5}
    {"image": "train2014/COCO_train2014_000000021248.jpg", "QA": [{"q": "...", "a": "..."}]}

Mapping:

* ``image`` → ``Media(kind="image")``; ``video`` → ``Media(kind="video")`` holding the file's bytes
  untouched (``load_bytes=True``); paths resolve against ``media_root`` (default: the annotation
  file's folder), COCO 2014 names (``train2014/COCO_train2014_000000021248.jpg``) also match a
  COCO 2017 copy (:func:`mmit.data.media_resolve.resolve_media_path`; ``meta["resolved_by"]`` then
  says ``coco-name``); ``Media.meta["original_path"]`` keeps the path as written, and a video's
  ``meta`` keeps ``start``/``end`` (seconds) when the record has them.
* ``QA`` → alternating ``user`` (``q``) / ``assistant`` (``a``) turns. The first user turn starts
  with ``"<image>\\n"`` or ``"<video>\\n"`` (:func:`mmit.data.normalize.add_media_placeholders`:
  LLaVA's placement, so every source looks alike; a placeholder already written in a question is
  moved there, or, for ``<video>``, kept where it is). VideoChat instead sends the media in a turn
  of its own, ``###Human: <Image></Image>``.
* VideoChat2's per-item task instruction ``i``: the first non-empty one becomes a leading
  ``system`` turn; all of them are kept in ``meta["instructions"]`` when they differ. Other keys
  of QA items (VideoChat2's multiple-choice ``candidates``, ...) go to ``meta["qa_extra"]``, one
  dict per item.
* :attr:`Sample.id`: the record's ``id`` if present, else ``"<index>"``; other fields → ``meta``;
  ``source = "videochat"``; :attr:`Sample.task` = ``task=`` argument (default None).

Skip reasons: ``invalid-record`` (no ``image``/``video`` or both, bad ``QA`` item), ``no-turns``,
``missing-media``, ``undecodable-image`` / ``undecodable-video`` (``load_bytes``: content of
another kind).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, List, Optional, Union

from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.sources import FORMATS
from mmit.data.normalize import add_media_placeholders, open_annotation
from mmit.data.media_resolve import resolve_media_path
from mmit.data.sources._media_helpers import attach_file, report, validated
from mmit.data.sources.llava import iter_json_records
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]
_USED = ("id", "image", "video", "QA", "start", "end")


def _qa_turns(qa: Any, where: str) -> List[Turn]:
    if not isinstance(qa, list):
        raise SampleError(f"{where}: 'QA' must be a list, got {type(qa).__name__}",
                          "invalid-record")
    if not qa:
        raise SampleError(f"{where}: empty 'QA'", "no-turns")
    turns: List[Turn] = []
    for i, item in enumerate(qa):
        if not isinstance(item, dict) or not isinstance(item.get("q"), str) \
                or not isinstance(item.get("a"), str):
            raise SampleError(f"{where}: QA item {i} must be an object with string 'q' and 'a'",
                              "invalid-record")
        turns += [Turn("user", item["q"].strip()), Turn("assistant", item["a"].strip())]
    instructions = [it.get("i") for it in qa if isinstance(it.get("i"), str) and it["i"].strip()]
    if instructions:
        turns.insert(0, Turn("system", instructions[0].strip()))
    return turns


def videochat_record_to_sample(record: Any, index: int, where: str, media_root: str,
                               load_bytes: bool = False, task: Optional[str] = None) -> Sample:
    """Normalise one VideoChat record (see module docstring).

    Raises :class:`SampleError`: ``invalid-record``, ``no-turns``, ``missing-media``,
    ``undecodable-image``, ``undecodable-video``."""
    if not isinstance(record, dict):
        raise SampleError(f"{where}: record is not a JSON object ({type(record).__name__})",
                          "invalid-record")
    sid = str(record.get("id", index))
    where = f"{where} (id {sid!r})"
    kinds = [k for k in ("image", "video") if k in record]
    if len(kinds) != 1:
        raise SampleError(f"{where}: a record needs exactly one of 'image' or 'video' "
                          f"(found {kinds or 'neither'})", "invalid-record")
    kind = kinds[0]
    rel = record[kind]
    if not isinstance(rel, str) or not rel.strip():
        raise SampleError(f"{where}: {kind!r} must be a non-empty path, got {rel!r}",
                          "invalid-record")
    turns = _qa_turns(record.get("QA"), where)
    mmeta = {"original_path": rel}
    for k in ("start", "end"):
        if k in record:
            mmeta[k] = record[k]
    media = Media(kind=kind, path=os.path.join(media_root, rel), meta=mmeta)
    turns = add_media_placeholders(turns, [media])
    meta = {k: v for k, v in record.items() if k not in _USED}
    instr = [it.get("i") for it in record["QA"] if isinstance(it.get("i"), str)]
    if len(set(instr)) > 1:
        meta["instructions"] = instr
    extra = [{k: v for k, v in it.items() if k not in ("q", "a", "i")} for it in record["QA"]]
    if any(extra):
        meta["qa_extra"] = extra  # e.g. VideoChat2 multiple-choice candidates, per QA item
    sample = validated(Sample(id=sid, turns=turns, media=[media], task=task, source="videochat",
                              meta=meta), where)
    media.path, how = resolve_media_path(rel, media_root, where)
    if how is not None:
        media.meta["resolved_by"] = how
    if load_bytes:
        attach_file(media, where, load_bytes)
    return sample


def read_videochat(path: PathLike, media_root: Optional[PathLike] = None, missing: str = "skip",
                   stats: Optional[SkipCounter] = None, load_bytes: bool = False, *,
                   task: Optional[str] = None) -> Iterator[Sample]:
    """Read a VideoChat instruction JSON / JSONL file as samples (``source="videochat"``).

    Args:
        path: the annotation file (``videochat_instruct_11k.json``, ``minigpt_caption_3k.json``...).
        media_root: folder ``image``/``video`` paths resolve against (VideoChat's ``data_root``;
            for ``videochat_instruct_11k`` the WebVid ``videos/`` folder). Default: the file's
            folder.
        missing: ``"skip"`` counts unusable records in ``stats`` by reason; ``"error"`` raises.
        stats: skip counter (a fresh one when None).
        load_bytes: read each image/video file into ``Media.data`` (bytes unchanged) and sniff
            ``Media.ext`` (``jpg``, ``png``, ``mp4``, ...); also checks a video is a video.
        task: value for :attr:`Sample.task` (VideoChat files carry none).

    Raises:
        FileNotFoundError: ``path`` missing (at call time). ValueError: malformed JSON (file, line).
        SampleError: under ``missing="error"``, naming the file, record index and id.
    """
    path, root = open_annotation(path, media_root, missing, "VideoChat")
    counter = stats if stats is not None else SkipCounter()

    def gen() -> Iterator[Sample]:
        for index, record, line in iter_json_records(path):
            where = f"{path}: record {index}" + (f" (line {line})" if line is not None else "")
            try:
                sample = videochat_record_to_sample(record, index, where, root, load_bytes, task)
            except SampleError as e:
                rid = record.get("id", index) if isinstance(record, dict) else index
                report(e, missing, counter, rid)
                continue
            yield sample

    return gen()


FORMATS.register("videochat", read_videochat)
