"""MultiInstruct reader (format name ``multiinstruct``), its instruction templates and task splits.

MultiInstruct: "MultiInstruct: Improving Multi-Modal Zero-Shot Learning via Instruction Tuning",
Xu, Shen, Huang, ACL 2023, arXiv 2212.10773. Reference code: VT-NLP/MultiInstruct @ 772af24
(``build_dataset.py``, ``instruction_templates.py::build_instruction``, ``process_data.sh``).

Files it reads (DATASETS.md §1): ``train.jsonl`` and ``test.jsonl`` as written by
``build_dataset.py`` (one JSON object per line; a JSON list of the same objects also works)::

    {"unique_id": "VQA_object_presence_10026521", "task_name": "VQA_object_presence",
     "image_path": "./raw_datasets/MSCOCO2014/train2014/COCO_train2014_000000005277.jpg",
     "question": "Are there any couches in the photo?", "target_txt": "no",
     "options": ["no", "yes"], "prompt": "This task asks you ... [Options]: no||||yes",
     "target": "no"}

Fields mapped:

* ``prompt`` → the user turn, with ``<image>\\n`` in front (MultiInstruct's templates say "image"
  in words; the placeholder marks where LLaVA-style models splice the image). ``target`` → the
  assistant turn. ``task_name`` → :attr:`Sample.task`.
* :attr:`Sample.id` is ``"{task_name}/{unique_id}"``: ``unique_id`` alone repeats across tasks
  (``object_description_generate`` and ``descriptive_object_region_select`` share ids).
* ``image_path`` → one image. ``./raw_datasets/...`` and ``raw_datasets/...`` both resolve against
  ``media_root`` (default: the annotation file's folder, i.e. the MultiInstruct checkout that holds
  ``raw_datasets/``); a ``media_root`` that *is* the ``raw_datasets`` folder also works. Absolute
  paths from the authors' machines (``/projects/nlp_lab/...``) are tried as written, then re-rooted:
  the part after ``raw_datasets/``, then ever shorter tails (at least two components) under
  ``media_root`` and ``media_root/raw_datasets`` (``/projects/.../seen_data/wikihow/data/x/
  image/s.jpg`` finds ``raw_datasets/wikihow/data/x/image/s.jpg``). COCO 2014 names also find
  COCO 2017 files (:func:`~mmit.data.media_resolve.coco_name_variants`).
* ``options`` → ``meta["options"]`` (the candidate answers, in the order the prompt lists them, for
  vocabulary ranking; records without ``options`` whose prompt ends in an ``[Options]:`` list,
  the wikihow step-order tasks, get that list and ``meta["options_from_prompt"] = True``).
  ``region`` → ``meta["region"]`` (strings as written) and ``meta["boxes"]``:
  ``[[x1, y1, x2, y2], ...]`` floats in **absolute pixels of the original image**, top-left origin
  (``meta["box_format"] = "xyxy_abs"``); rescale them if the image is resized. Regions inside
  ``meta_data`` (``object_regions``) stay as written there.
* Everything else (``question``, ``text``, ``context``, ``answer``, ``target_txt``,
  ``image_source``, ``meta_data``, ``unique_id``) is kept in :attr:`Sample.meta`, so a sample can
  be re-rendered with each of its task's templates (:func:`rerender`). ``meta["template_id"]`` is
  the index of the template that produced ``prompt`` (None when none matches, e.g. tasks whose
  build step shuffles options into another order); ``meta["split"]`` is ``train`` / ``unseen``
  (:func:`task_split`).

Templates: :func:`instruction_templates` returns each task's expert-written templates (5 for
most tasks; ``region_generation`` has 7, ``visual_object_region`` 6), ported as data into
``multiinstruct_tasks.json`` from ``instruction_templates.py`` (Apache-2.0, the MultiInstruct
authors); :func:`render_instruction` fills one in from a record. The instruction-sensitivity metric
(std/mean of a task's score across its templates, arXiv 2212.10773) needs exactly this.
Rendering follows what ``build_dataset.py`` released, which calls ``build_instruction`` without
``instruction_id``: for ``commonsense_VQA`` (VCR, an unseen task) the question is never rewritten
with region coordinates (``build_instruction``'s ``instruction_id >= 2`` branch is dead in the
released data), so only templates 0 and 1 carry regions, as ``{region_info}``.

Not supported: the ``use_natural`` option styles (``(a) ...``, ``Option 1: ...``) of
``build_instruction``; image-generation tasks (``infilling``, ``image_generation``, ... which
``build_dataset.py`` does not build either); the intermediate per-task files of
``process_data.sh`` (``training_data/<dataset>+<task>/train.jsonl``) are read only when they
already have ``prompt``/``target``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from mmit.data.normalize import (apply_policy, open_annotation, place_image_placeholders, record_extras,
                                 scalar_id)
from mmit.data.media_resolve import MediaRoot, attach_media, deferred, resolve_media_path, strip_dot_slash
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.sources import FORMATS
from mmit.data.sources.llava import iter_json_records
from mmit.data.sources.multiinstruct_templates import (_OPTIONS, _SPLIT, instruction_templates,  # noqa: F401
                                                       match_template, render_instruction, rerender,
                                                       task_split, training_tasks, unseen_tasks)
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]
_USED = ("prompt", "target", "image_path", "task_name")
BOX_FORMAT = "xyxy_abs"


def parse_boxes(region: Any, where: str) -> List[List[float]]:
    """``["x1 y1 x2 y2", ...]`` → ``[[x1, y1, x2, y2], ...]`` floats (absolute pixels, xyxy).

    Raises :class:`SampleError` (``invalid-record``) naming ``where`` for anything else.
    """
    if not isinstance(region, list):
        raise SampleError(f"{where}: 'region' must be a list of 'x1 y1 x2 y2' strings, got "
                          f"{type(region).__name__}", "invalid-record")
    boxes = []
    for r in region:
        try:
            box = [float(x) for x in str(r).split()]
        except ValueError:
            box = []
        if len(box) != 4:
            raise SampleError(f"{where}: region {r!r} is not 'x1 y1 x2 y2'", "invalid-record")
        boxes.append(box)
    return boxes


def image_path_alternatives(path: str, root: str) -> List[str]:
    """Other places the file behind a MultiInstruct ``image_path`` may live (see module doc)."""
    p = strip_dot_slash(path)
    parts = [x for x in p.replace("\\", "/").split("/") if x]
    out: List[str] = []
    if "raw_datasets" in parts:
        i = len(parts) - 1 - parts[::-1].index("raw_datasets")
        out.append("/".join(parts[i:]))
        out.append("/".join(parts[i + 1:]))  # media_root is the raw_datasets folder itself
    if os.path.isabs(p):
        for k in range(len(parts) - 1, 1, -1):
            out.append("/".join(parts[-k:]))
            out.append("/".join(["raw_datasets"] + parts[-k:]))
    seen, uniq = set(), []
    for a in out:
        if a and a not in seen and a != p:
            seen.add(a)
            uniq.append(a)
    return uniq


def _str_field(record: Mapping[str, Any], key: str, where: str) -> str:
    v = record.get(key)
    if not isinstance(v, str):
        raise SampleError(f"{where}: {key!r} must be a string, got "
                          f"{'nothing' if v is None else type(v).__name__}", "invalid-record")
    return v


def multiinstruct_record_to_sample(record: Any, index: int, where: str, media_root: str,
                                   load_bytes: bool = False,
                                   max_pixels: Optional[int] = None) -> Sample:
    """Normalise one MultiInstruct record (module docstring). Raises :class:`SampleError`:
    ``invalid-record`` (not an object, missing/non-string ``prompt``/``target``/``task_name``/
    ``image_path``, bad ``options``/``region``), ``missing-media``, and the media checks of
    :func:`~mmit.data.media_resolve.attach_media` (``media-outside-root``, ...)."""
    if not isinstance(record, dict):
        raise SampleError(f"{where}: record is not a JSON object ({type(record).__name__})",
                          "invalid-record")
    task = _str_field(record, "task_name", where)
    uid = scalar_id(record.get("unique_id", index), where)  # an object id is bad-id
    sid = f"{task}/{uid}"
    where = f"{where} (id {sid!r})"
    prompt = _str_field(record, "prompt", where)
    target = _str_field(record, "target", where)
    image_path = _str_field(record, "image_path", where)
    meta = record_extras(record, _USED)
    if record.get("options") is not None:
        opts = record["options"]
        if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
            raise SampleError(f"{where}: 'options' must be a list of strings", "invalid-record")
    elif _OPTIONS in prompt:
        # wikihow_*_step_order: build_instruction makes ['next', 'previous'] itself and does not
        # store them; the prompt's own "[Options]:" list is the candidate set.
        meta["options"] = prompt.rsplit(_OPTIONS, 1)[1].split(_SPLIT)
        meta["options_from_prompt"] = True
    if record.get("region") is not None:
        meta["boxes"] = parse_boxes(record["region"], where)
        meta["box_format"] = BOX_FORMAT
    meta["split"] = task_split(task)
    options = meta.get("options")  # the record's own list, or the one read from the prompt
    meta["template_id"] = match_template(record if options is record.get("options") else
                                         dict(record, options=options))
    resolved, how = resolve_media_path(image_path, media_root, where,
                                       deferred(image_path_alternatives, image_path, media_root))
    mmeta: Dict[str, Any] = {"original_path": image_path}
    if how:
        mmeta["resolved_by"] = how
    media = [Media(kind="image", path=resolved, meta=mmeta)]
    turns = place_image_placeholders([Turn("user", prompt), Turn("assistant", target)], 1)
    sample = Sample(id=sid, turns=turns, media=media, task=task, source="multiinstruct",
                    meta=meta)
    for m in media:
        attach_media(m, where, media_root, load_bytes, max_pixels,
                     written=m.meta.get("original_path"))
    return sample


def read_multiinstruct(path: PathLike, media_root: Optional[PathLike] = None,
                       missing: str = "skip", stats: Optional[SkipCounter] = None,
                       load_bytes: bool = False, max_pixels: Optional[int] = None, *,
                       allow_absolute: bool = False,
                       max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read a MultiInstruct ``train.jsonl`` / ``test.jsonl`` as validated samples
    (``source="multiinstruct"``).

    Args:
        path: the JSONL file written by ``build_dataset.py``.
        media_root: folder holding ``raw_datasets/`` (or the ``raw_datasets`` folder itself);
            default: the annotation file's folder.
        missing: ``"skip"`` counts each unusable record in ``stats`` by reason
            (``missing-media``, ``invalid-record``, ...); ``"error"`` raises :class:`SampleError`
            naming the file, line and id.
        stats: counter to add skips to (a fresh one when None).
        load_bytes: read each image into ``Media.data``, ``Media.ext`` sniffed from content.
        max_pixels: with ``load_bytes``, also reject images above this many pixels.
        allow_absolute: accept media outside ``media_root`` (absolute paths, ``..``, symlinks
            leading out); by default they are ``media-outside-root`` skips.
        max_media_bytes: per-kind size caps in bytes lowering
            :data:`~mmit.data.media.MAX_MEDIA_BYTES` (``media-too-large`` skips).

    Returns a lazy iterator in file order. Raises ``FileNotFoundError`` (at call time) for a
    missing ``path``, ``ValueError`` for malformed JSON (file and line) or a bad ``missing`` or
    ``max_media_bytes``. The authors' absolute ``image_path`` values are re-rooted under
    ``media_root`` (alternatives); the absolute path itself is read only with ``allow_absolute``.
    """
    path, root = open_annotation(path, media_root, missing, "MultiInstruct")
    root = MediaRoot(root, allow_absolute, max_media_bytes)
    counter = stats if stats is not None else SkipCounter()

    def items() -> Iterator[Tuple[int, Any, str]]:
        for index, record, line in iter_json_records(path):
            yield index, record, f"{path}: record {index}" + (
                f" (line {line})" if line is not None else "")

    def to_sample(index: int, record: Any, where: str) -> Sample:
        return multiinstruct_record_to_sample(record, index, where, root, load_bytes, max_pixels)

    def record_id(index: int, record: Any) -> Any:
        if isinstance(record, dict) and "unique_id" in record:
            return f"{record.get('task_name')}/{record['unique_id']}"
        return index

    return apply_policy(items(), to_sample, missing, counter, record_id)


FORMATS.register("multiinstruct", read_multiinstruct)
