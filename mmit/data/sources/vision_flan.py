"""Vision-Flan reader (format name ``vision-flan``): release annotations, flattened and raw formats.

Vision-Flan: "Vision-Flan: Scaling Human-Labeled Tasks in Visual Instruction Tuning", Xu et al.,
arXiv 2402.11690. Data: HF ``Vision-Flan/vision-flan_191-task_1k``; website repository
vision-flan/vision-flan.github.io @ c218566 (``tasks_web.json``, ``tasks.json``, ``data.json``,
``format_data.py``).

Files it reads (DATASETS.md §3); the format is recognised per record, so one reader handles all:

(a) Release / LLaVA format: ``annotation_191-task_1k.json`` (186k records) and the website's
    ``tasks_web.json``: a JSON list of ``{"id", "image", "task_name", "conversations"}``::

        {"id": "multiinstruct_ok_vqa_['train', 'val']_162419",
         "image": "./task_imgs/COCO_train2014_000000162419.jpg", "task_name": "ok_vqa",
         "conversations": [{"from": "human", "value": "What activity ...?\\n<image>"},
                           {"from": "gpt", "value": "transportation"}]}

(b) Flattened: ``tasks.json`` = ``{"data": [{"img_path", "prompt", "target", "task_name"}]}``.
(c) Raw instances: ``data.json`` = ``{"data": [[{instance}, ...], ...]}`` (a list of lists; a
    flat list or JSONL of instances also works), each instance
    ``{"instance_id", "img_path", "instruction", "input_text", "options", "raw_output",
    "output", "dataset_name", "task_name"}``.

Fields mapped:

* Turns: (a) ``conversations``; (b) ``prompt`` → user, ``target`` → assistant; (c)
  ``instruction`` (already holds ``input_text`` and the rendered options) → user, ``output`` →
  assistant. ``<image>`` (written at the start or at the end of the prompt) is moved to the front
  as LLaVA trains; records without one get it prepended.
* ``task_name`` → :attr:`Sample.task` (``<DATASET>+<task>`` or a MultiInstruct task name; no task
  count is assumed). ``id`` (a), ``instance_id`` (c), else the record's 0-based position.
* (c) ``options`` → ``meta["options"]`` (candidate answers, for vocabulary ranking) and, when
  ``raw_output`` is one of them, ``meta["answer_index"]``; ``input_text``, ``raw_output``,
  ``dataset_name`` → :attr:`Sample.meta`. Other extra fields → :attr:`Sample.meta`.
* Images: paths are written ``./task_imgs/<file>`` (website (a)), ``./imgs/<file>`` (b, c), while
  the release zip extracts to ``images_191task_1k/<file>``. The path is tried as written under
  ``media_root`` (default: the annotation file's folder), then the file name alone under
  ``media_root``, ``media_root/images_191task_1k``, ``media_root/imgs`` and
  ``media_root/task_imgs`` (``Media.meta["resolved_by"] = "alternative"``).

Not supported: the images that pack several choices into one file (recipe-qa "4 image choices
numbered A through D", spot-the-diff side by side) stay one image, as in the release; the
truncated file names of a few website images (``..._Rottweiler`` without its extension) are not
guessed; ``dataset_bibtex/*.csv`` (licence tables) is not read.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from mmit.data.normalize import (apply_policy, scalar_id, check_first_turn, normalize_turns, open_annotation,
                                 place_image_placeholders, record_extras)
from mmit.data.media_resolve import MediaRoot, attach_media, deferred, resolve_media_path
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.sources import FORMATS
from mmit.data.sources.llava import iter_json_records
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]

#: Folders (under ``media_root``) where images are looked up by file name when the written
#: path does not exist: the release zip's folder and the website's two spellings.
IMAGE_DIRS = ("", "images_191task_1k", "imgs", "task_imgs")


def _alternatives(image: str) -> List[str]:
    """Where else Vision-Flan's ``image`` may be: its file name in each of :data:`IMAGE_DIRS`."""
    name = os.path.basename(image.replace("\\", "/"))
    return [os.path.join(d, name) if d else name for d in IMAGE_DIRS]


def iter_vision_flan_records(path: str) -> Iterator[Tuple[int, Any, str]]:
    """Yield ``(index, record, where)`` over any of the three layouts (module docstring).

    ``{"data": [...]}`` is unwrapped and nested lists (``data.json``) are flattened; ``index``
    counts records over the whole file, ``where`` names the file and the record's position
    (``data[2][11]`` for nested input, ``record 7 (line 8)`` for JSONL). Raises ``ValueError`` for
    malformed JSON, naming the file and line.
    """
    for index, record, line in iter_json_records(path):
        if index == 0 and isinstance(record, dict) and isinstance(record.get("data"), list):
            flat = 0
            for i, item in enumerate(record["data"]):
                if isinstance(item, list):
                    for j, sub in enumerate(item):
                        yield flat, sub, f"{path}: data[{i}][{j}]"
                        flat += 1
                else:
                    yield flat, item, f"{path}: data[{i}]"
                    flat += 1
            continue
        yield index, record, f"{path}: record {index}" + (
            f" (line {line})" if line is not None else "")


def _str(record: Dict[str, Any], key: str, where: str) -> str:
    v = record.get(key)
    if not isinstance(v, str):
        raise SampleError(f"{where}: {key!r} must be a string, got "
                          f"{'nothing' if v is None else type(v).__name__}", "invalid-record")
    return v


def _turns_and_fields(record: Dict[str, Any], where: str
                      ) -> Tuple[List[Turn], str, Tuple[str, ...], str]:
    """Turns, the image path as written, the fields consumed, and the layout name."""
    if "conversations" in record:
        turns = normalize_turns(record["conversations"], where)
        check_first_turn(turns, where)
        return turns, _str(record, "image", where), ("id", "image", "conversations",
                                                     "task_name"), "release"
    if "prompt" in record and "target" in record:
        turns = [Turn("user", _str(record, "prompt", where)),
                 Turn("assistant", _str(record, "target", where))]
        return turns, _str(record, "img_path", where), ("img_path", "prompt", "target",
                                                        "task_name"), "flattened"
    if "instruction" in record and "output" in record:
        turns = [Turn("user", _str(record, "instruction", where)),
                 Turn("assistant", _str(record, "output", where))]
        return turns, _str(record, "img_path", where), ("instance_id", "img_path",
                                                        "instruction", "output",
                                                        "task_name"), "raw"
    raise SampleError(f"{where}: not a Vision-Flan record: expected 'conversations', "
                      f"'prompt'+'target' or 'instruction'+'output' (keys: {sorted(record)})",
                      "invalid-record")


def vision_flan_record_to_sample(record: Any, index: int, where: str, media_root: str,
                                 load_bytes: bool = False,
                                 max_pixels: Optional[int] = None) -> Sample:
    """Normalise one Vision-Flan record of any layout (module docstring). Raises
    :class:`SampleError`: ``invalid-record``, ``bad-role``, ``no-turns``,
    ``first-turn-not-user``, ``missing-media``, ``media-outside-root`` and the checks of
    :func:`~mmit.data.media_resolve.attach_media`."""
    if not isinstance(record, dict):
        raise SampleError(f"{where}: record is not a JSON object ({type(record).__name__})",
                          "invalid-record")
    sid = scalar_id(record.get("id", record.get("instance_id", index)), where)  # else bad-id
    where = f"{where} (id {sid!r})"
    turns, image, used, layout = _turns_and_fields(record, where)
    task = record.get("task_name")
    if not isinstance(task, str):
        raise SampleError(f"{where}: 'task_name' must be a string", "invalid-record")
    meta = record_extras(record, used)
    meta["layout"] = layout
    opts = record.get("options")
    if layout == "raw" and opts is not None:
        if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
            raise SampleError(f"{where}: 'options' must be null or a list of strings",
                              "invalid-record")
        if record.get("raw_output") in opts:
            meta["answer_index"] = opts.index(record["raw_output"])
    resolved, how = resolve_media_path(image, media_root, where, deferred(_alternatives, image))
    mmeta: Dict[str, Any] = {"original_path": image}
    if how:
        mmeta["resolved_by"] = how
    media = [Media(kind="image", path=resolved, meta=mmeta)]
    sample = Sample(id=sid, turns=place_image_placeholders(turns, 1), media=media, task=task,
                    source="vision-flan", meta=meta)
    for m in media:
        attach_media(m, where, media_root, load_bytes, max_pixels,
                     written=m.meta.get("original_path"))
    return sample


def read_vision_flan(path: PathLike, media_root: Optional[PathLike] = None,
                     missing: str = "skip", stats: Optional[SkipCounter] = None,
                     load_bytes: bool = False, max_pixels: Optional[int] = None, *,
                     allow_absolute: bool = False,
                     max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read a Vision-Flan file in any of its three layouts (``source="vision-flan"``).

    Args:
        path: ``annotation_191-task_1k.json`` / ``tasks_web.json``, ``tasks.json`` or
            ``data.json`` (or JSONL of any of their records).
        media_root: the image folder's parent or the image folder itself (see module
            docstring); default: the annotation file's folder.
        missing: ``"skip"`` counts each unusable record in ``stats`` by reason;
            ``"error"`` raises :class:`SampleError` naming the file and record.
        stats: counter to add skips to (a fresh one when None).
        load_bytes: read each image into ``Media.data``; ``Media.ext`` sniffed from content.
        max_pixels: with ``load_bytes``, reject images above this many pixels.
        allow_absolute: accept media outside ``media_root`` (absolute paths, ``..``, symlinks
            leading out); by default they are ``media-outside-root`` skips.
        max_media_bytes: per-kind size caps in bytes lowering
            :data:`~mmit.data.media.MAX_MEDIA_BYTES` (``media-too-large`` skips).

    Returns a lazy iterator in file order. Raises ``FileNotFoundError`` (at call time),
    ``ValueError`` (malformed JSON; bad ``missing`` or ``max_media_bytes``).
    """
    path, root = open_annotation(path, media_root, missing, "Vision-Flan")
    root = MediaRoot(root, allow_absolute, max_media_bytes)
    counter = stats if stats is not None else SkipCounter()

    def to_sample(index: int, record: Any, where: str) -> Sample:
        return vision_flan_record_to_sample(record, index, where, root, load_bytes, max_pixels)

    def record_id(index: int, record: Any) -> Any:
        if isinstance(record, dict):
            return record.get("id", record.get("instance_id", index))
        return index

    return apply_policy(iter_vision_flan_records(path), to_sample, missing, counter, record_id)


FORMATS.register("vision-flan", read_vision_flan)
