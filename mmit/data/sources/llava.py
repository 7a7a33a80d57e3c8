"""LLaVA-format reader (format name ``llava``).

LLaVA: "Visual Instruction Tuning", Liu et al., arXiv 2304.08485; LLaVA-1.5: "Improved Baselines
with Visual Instruction Tuning", arXiv 2310.03744. Reference code: haotian-liu/LLaVA
``llava/train/train.py`` (``LazySupervisedDataset``, ``preprocess_multimodal``) @ c121f04.

Files it reads (DATASETS.md §5): ``blip_laion_cc_sbu_558k.json`` (stage-1 captions),
``llava_instruct_150k.json`` (stage-2 instructions), ``llava_v1_5_mix665k.json`` (LLaVA-1.5 mix,
including ~40k text-only records), and any file in the same shape (ShareGPT4V, Vision-Flan's
``tasks_web.json``, LAMM 2D). A JSON list of records, or JSONL with one record per line::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus in the image is white and red."}]}

* ``id``: string (int ids, as in some re-hosted copies, become ``str``; leading zeros already lost
  there cannot be restored). Missing → the record's 0-based index. Any other type (an object, a
  list, a float) is a ``bad-id`` skip; an id an earlier record had is a ``duplicate-id`` skip (the
  first record is kept).
* ``image``: optional; a relative path (against ``media_root``) or a list of paths for several images.
* ``conversations``: ``{"from": "human"|"gpt", "value"}`` or ``{"role", "content"}`` turns.
* ``task_name`` (Vision-Flan) becomes :attr:`Sample.task`; all other extra fields go to
  :attr:`Sample.meta`.

Normalisation rules: :mod:`mmit.data.normalize` (roles, ``<image>`` moved to the front, leading
non-user turn rejected) followed by :meth:`Sample.validate` (alternation, placeholder count, empty
answers, encoding). Reading the file: :func:`mmit.data.record_io.iter_json_records` (a record nested
too deep is a ``too-deep`` skip, a JSONL line with bytes that are not UTF-8 a ``bad-encoding`` skip; a
file that is not UTF-8 at all, or not JSON, is a one-line ``ValueError``).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Union

from mmit.data.media_resolve import MediaRoot, attach_media
from mmit.data.normalize import (IdSet, check_first_turn, normalize_turns, open_annotation,
                                 place_image_placeholders, record_extras, record_identity)
from mmit.data.record_io import iter_json_records  # noqa: F401  (re-exported: other readers import it here)
from mmit.data.sample import Media, Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]
_USED = ("id", "image", "conversations", "task_name")


def _image_paths(value: Any, where: str) -> List[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(p, str) and p.strip() for p in items):
        raise SampleError(f"{where}: 'image' must be a non-empty path or a list of paths, got "
                          f"{value!r}", "invalid-record")
    return list(items)


def llava_record_to_sample(record: Any, index: int, where: str, media_root: str,
                           load_bytes: bool = False, source: str = "llava") -> Sample:
    """Normalise one LLaVA record into a validated :class:`Sample` (see module docstring).

    Args:
        record: the parsed JSON value.
        index: its 0-based position in the file (used as id when ``id`` is absent).
        where: prefix for error messages (file and record index).
        media_root: folder that relative image paths are joined to.
        load_bytes: read each image file into ``Media.data`` and sniff ``Media.ext``.

    Every image must lie inside ``media_root`` (a
    :class:`~mmit.data.media_resolve.MediaRoot` may allow absolute paths) and pass
    :func:`~mmit.data.media_resolve.attach_media` (size cap; content when ``load_bytes``).

    Raises:
        SampleError: ``invalid-record`` (not an object, no ``conversations``, bad ``image``),
            ``bad-id``, ``bad-role``, ``no-turns``, ``first-turn-not-user``, ``roles-not-alternating``,
            ``image-count-mismatch``, ``empty-answer``, ``bad-encoding``, ``too-deep``,
            ``special-token-in-text`` (a media placeholder in an answer), the reason of a
            :class:`~mmit.data.record_io.BadRecord`, ``missing-media`` (file absent or unreadable),
            ``media-outside-root``, ``media-too-large``, ``undecodable-image`` (``load_bytes``).
    """
    sid, where = record_identity(record, index, where)
    if "conversations" not in record:
        raise SampleError(f"{where}: no 'conversations' field", "invalid-record")
    paths = _image_paths(record.get("image"), where)
    turns = normalize_turns(record["conversations"], where)
    check_first_turn(turns, where)
    turns = place_image_placeholders(turns, len(paths))
    media = []
    for p in paths:
        resolved = p if os.path.isabs(p) else os.path.join(media_root, p)
        media.append(Media(kind="image", path=resolved, meta={"original_path": p}))
    task = record.get("task_name") if isinstance(record.get("task_name"), str) else None
    sample = Sample(id=sid, turns=turns, media=media, task=task, source=source,
                    meta=record_extras(record, _USED))
    try:
        sample.validate()
    except SampleError as e:
        raise SampleError(f"{where}: {e}", e.reason) from None
    for m in media:
        attach_media(m, where, media_root, load_bytes, written=m.meta["original_path"])
    return sample


def read_llava(path: PathLike, media_root: Optional[PathLike] = None, missing: str = "skip",
               stats: Optional[SkipCounter] = None, load_bytes: bool = False, *,
               allow_absolute: bool = False,
               max_media_bytes: Optional[Dict[str, int]] = None, unique_ids: bool = False) -> Iterator[Sample]:
    """Read a LLaVA-format JSON / JSONL file as normalised, validated samples (``source="llava"``).

    Args:
        path: the annotation file (``llava_v1_5_mix665k.json``, ...).
        media_root: folder that relative ``image`` paths resolve against (LLaVA's
            ``--image_folder``); default: the annotation file's folder. ``Media.path`` holds the
            resolved path, ``Media.meta["original_path"]`` the path as written.
        missing: ``"skip"``: an unusable record (missing image file, malformed record, failed
            validation) is counted in ``stats`` under its reason (``missing-media``,
            ``invalid-record``, ``roles-not-alternating``, ...) and skipped. ``"error"``: raise.
        stats: counter to add skips to (a fresh one is used when None).
        load_bytes: also read each image into ``Media.data`` and set ``Media.ext`` from content.
        allow_absolute: accept images outside ``media_root`` (absolute paths, ``..``, symlinks
            leading out); by default they are ``media-outside-root`` skips.
        max_media_bytes: per-kind size caps in bytes lowering
            :data:`~mmit.data.media.MAX_MEDIA_BYTES` (``media-too-large`` skips).
        unique_ids: refuse a repeated ``id`` (``duplicate-id`` skip). Off by default: LLaVA's files
            use the COCO image id as ``id`` (LLaVA-Instruct-150K and mix665k have ~158k records on
            ~81k images), so repeats are normal there; shard keys include the record's position.

    Returns:
        A lazy iterator of :class:`Sample`, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist (raised at call time, not on first ``next``).
        ValueError: malformed JSON (message names the file and line/column), a file that is
            not UTF-8, bad ``missing``
            or ``max_media_bytes``.
        SampleError: under ``missing="error"``, naming the file, record index and id.
    """
    path, root = open_annotation(path, media_root, missing, "LLaVA")
    root = MediaRoot(root, allow_absolute, max_media_bytes)
    counter = stats if stats is not None else SkipCounter()

    def gen() -> Iterator[Sample]:
        ids = IdSet() if unique_ids else None
        for index, record, line in iter_json_records(path):
            where = f"{path}: record {index}" + (f" (line {line})" if line is not None else "")
            try:
                sample = llava_record_to_sample(record, index, where, root, load_bytes)
                if ids is not None:
                    ids.check(sample.id, where)
            except SampleError as e:
                if missing == "error":
                    raise
                rid = record.get("id", index) if isinstance(record, dict) else index
                counter.add(e.reason, rid, str(e))
                continue
            yield sample

    return gen()


FORMATS.register("llava", read_llava)
