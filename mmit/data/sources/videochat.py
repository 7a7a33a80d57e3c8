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
    {"video": "videos/dog_barking.mp4", "audio": "videos/dog_barking.mp4", "QA": [...]}
    {"audio": "audio/car.wav", "QA": [{"q": "What sound can you hear?", "a": "A car horn."}]}

A record names at most one of ``image`` / ``video`` and, optionally, an ``audio`` (an mmit
extension for Video-LLaMA's audio branch, arXiv 2306.02858, whose released data ships no audio
annotation: a wav/flac/mp3/... file, or a video file whose audio track is meant, usually the
record's own video). A record with ``audio`` and neither ``image`` nor ``video`` is audio-only.

Mapping:

* ``image`` → ``Media(kind="image")``; ``video`` → ``Media(kind="video")``; ``audio`` →
  ``Media(kind="audio")`` after the image/video item. Each holds the file's bytes untouched
  (``load_bytes=True``); paths resolve against ``media_root`` (default: the annotation
  file's folder), COCO 2014 names (``train2014/COCO_train2014_000000021248.jpg``) also match a
  COCO 2017 copy (:func:`mmit.data.media_resolve.resolve_media_path`; ``meta["resolved_by"]`` then
  says ``coco-name``); ``Media.meta["original_path"]`` keeps the path as written. ``start``/``end``
  (seconds), when the record has them, go to the video's ``meta`` and to the audio's when the
  audio is the video's own file or the record has no video.
* The audio item is not decoded here: a video without an audio track is accepted, and what it
  gives (a skip or silence) is the ``no_audio`` policy of :func:`mmit.data.audio.decode_audio`.
  With ``load_bytes`` its content must be audio or video (an HTML page saved as ``.wav`` is not);
  an audio naming the record's own video shares that video's bytes (the file is read once).
* ``QA`` → alternating ``user`` (``q``) / ``assistant`` (``a``) turns. The first user turn starts
  with ``"<image>\\n"`` or ``"<video>\\n"``, and ``"<audio>\\n"`` for an audio item
  (:func:`mmit.data.normalize.add_media_placeholders`: LLaVA's placement, so every source looks
  alike; a placeholder already written in a question is moved there, or, for ``<video>`` and
  ``<audio>``, kept where it is). That function puts each kind right after the ``<image>``
  placeholders, so an image+audio record reads ``"<image>\\n<audio>\\n..."`` and a video+audio
  one ``"<audio>\\n<video>\\n..."``. VideoChat instead sends the media in a turn of its own,
  ``###Human: <Image></Image>``.
* VideoChat2's per-item task instruction ``i``: the first non-empty one becomes a leading
  ``system`` turn; all of them are kept in ``meta["instructions"]`` when they differ. Other keys
  of QA items (VideoChat2's multiple-choice ``candidates``, ...) go to ``meta["qa_extra"]``, one
  dict per item.
* :attr:`Sample.id`: the record's ``id`` if present, else ``"<index>"``; other fields → ``meta``;
  ``source = "videochat"``; :attr:`Sample.task` = ``task=`` argument (default None).

Skip reasons: ``invalid-record`` (none of ``image``/``video``/``audio``, both ``image`` and
``video``, a media path that is not a non-empty string, bad ``QA`` item), ``no-turns``,
``missing-media`` (any named file absent), ``undecodable-image`` / ``undecodable-video`` /
``undecodable-audio`` (``load_bytes``: content of another kind).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Union

from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.sources import FORMATS
from mmit.data.normalize import add_media_placeholders, open_annotation, record_identity, unique_samples
from mmit.data.media_resolve import MediaRoot, resolve_media_path
from mmit.data.sources._media_helpers import attach_file, report, validated
from mmit.data.sources.llava import iter_json_records
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]
_USED = ("id", "image", "video", "audio", "QA", "start", "end")


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


def _media_path(record: dict, key: str, where: str) -> str:
    rel = record[key]
    if not isinstance(rel, str) or not rel.strip():
        raise SampleError(f"{where}: {key!r} must be a non-empty path, got {rel!r}",
                          "invalid-record")
    return rel


def videochat_record_to_sample(record: Any, index: int, where: str, media_root: str,
                               load_bytes: bool = False, task: Optional[str] = None) -> Sample:
    """Normalise one VideoChat record (see module docstring).

    Every file is confined to ``media_root`` and checked by
    :func:`~mmit.data.sources._media_helpers.attach_file` (an audio item may be audio or a video,
    whose audio track is meant; whether that video has a track is decided when decoding).

    Raises :class:`SampleError`: ``invalid-record``, ``no-turns``, ``missing-media``,
    ``media-outside-root``, ``media-too-large``, ``undecodable-image``, ``undecodable-video``,
    ``undecodable-audio``."""
    sid, where = record_identity(record, index, where)  # not an object, bad-id, unreadable record
    kinds = [k for k in ("image", "video") if k in record]
    if len(kinds) > 1 or (not kinds and "audio" not in record):
        raise SampleError(f"{where}: a record needs exactly one of 'image' or 'video', or an "
                          f"'audio' (found {kinds or 'none of them'})", "invalid-record")
    rels = {k: _media_path(record, k, where) for k in kinds + ["audio"] if k in record}
    turns = _qa_turns(record.get("QA"), where)
    span = {k: record[k] for k in ("start", "end") if k in record}
    media: List[Media] = []
    for kind, rel in rels.items():
        mmeta = {"original_path": rel}
        if kind == "video" or (kind == "audio" and rels.get("video", rel) == rel):
            mmeta.update(span)
        media.append(Media(kind=kind, path=os.path.join(media_root, rel), meta=mmeta))
    turns = add_media_placeholders(turns, media)
    meta = {k: v for k, v in record.items() if k not in _USED}
    instr = [it.get("i") for it in record["QA"] if isinstance(it.get("i"), str)]
    if len(set(instr)) > 1:
        meta["instructions"] = instr
    extra = [{k: v for k, v in it.items() if k not in ("q", "a", "i")} for it in record["QA"]]
    if any(extra):
        meta["qa_extra"] = extra  # e.g. VideoChat2 multiple-choice candidates, per QA item
    sample = validated(Sample(id=sid, turns=turns, media=media, task=task, source="videochat",
                              meta=meta), where)
    for m in media:
        m.path, how = resolve_media_path(m.meta["original_path"], media_root, where)
        if how is not None:
            m.meta["resolved_by"] = how
    for m in media:
        if m.kind == "audio" and media[0].kind == "video" and media[0].path == m.path:
            m.data, m.ext = media[0].data, media[0].ext  # the video's own track: read once
        else:
            attach_file(m, where, load_bytes, media_root)
    return sample


def read_videochat(path: PathLike, media_root: Optional[PathLike] = None, missing: str = "skip",
                   stats: Optional[SkipCounter] = None, load_bytes: bool = False, *,
                   task: Optional[str] = None, allow_absolute: bool = False,
                   max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read a VideoChat instruction JSON / JSONL file as samples (``source="videochat"``).

    Args:
        path: the annotation file (``videochat_instruct_11k.json``, ``minigpt_caption_3k.json``...).
        media_root: folder ``image``/``video``/``audio`` paths resolve against (VideoChat's
            ``data_root``; for ``videochat_instruct_11k`` the WebVid ``videos/`` folder). Default:
            the file's folder.
        missing: ``"skip"`` counts unusable records in ``stats`` by reason; ``"error"`` raises.
        stats: skip counter (a fresh one when None).
        load_bytes: read each image/video/audio file into ``Media.data`` (bytes unchanged) and
            sniff ``Media.ext`` (``jpg``, ``png``, ``mp4``, ``wav``, ...); also checks a video is a
            video and an audio is audio or a video.
        task: value for :attr:`Sample.task` (VideoChat files carry none).
        allow_absolute: accept media outside ``media_root`` (absolute paths, ``..``, symlinks
            leading out); by default they are ``media-outside-root`` skips.
        max_media_bytes: per-kind size caps in bytes lowering
            :data:`~mmit.data.media.MAX_MEDIA_BYTES` (``media-too-large`` skips).

    Raises:
        FileNotFoundError: ``path`` missing (at call time). ValueError: malformed JSON (file, line).
        SampleError: under ``missing="error"``, naming the file, record index and id.
    """
    path, root = open_annotation(path, media_root, missing, "VideoChat")
    root = MediaRoot(root, allow_absolute, max_media_bytes)
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

    return unique_samples(gen(), missing, counter, path)  # a repeated id is a duplicate-id skip


FORMATS.register("videochat", read_videochat)
