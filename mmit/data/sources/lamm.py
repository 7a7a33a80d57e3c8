"""LAMM reader (format name ``lamm``): 2D and 3D instruction JSON and LAMM-Benchmark meta files.

LAMM: "LAMM: Language-Assisted Multi-Modal Instruction-Tuning Dataset, Framework, and Benchmark",
Yin et al., NeurIPS 2023 Datasets & Benchmarks, arXiv 2306.06687. Reference code: OpenLAMM/LAMM
@ ea57136 (``src/datasets/dataset.py::LAMMDataset``, ``src/ChEF/scenario/LAMM_dataset.py``,
``src/model/LAMM/conversations.py``).

Files it reads (DATASETS.md §2), each a JSON list of records (JSONL also works):

* 2D instructions, ``2D_Instruct/meta_file/{daily_dialogue_49k, detailed_description_49k,
  factual_knowledge_dialogue_42k, vision_task_dialogue_46k, LAMM_instruct_98k, _140k, _186k}.json``::

      {"id": "000000019028", "image": "coco_images/000000019028.jpg",
       "conversations": [{"from": "human", "value": "How is the kitchen ..."},
                         {"from": "gpt", "value": "The kitchen ..."}],
       "task_type": "conversation", "src_image": "coco2017"}

* 3D instructions, ``3D_Instruct/meta_file/LAMM_3dinstruct_10k.json``: ``pcl`` instead of
  ``image`` → one ``Media(kind="pointcloud")`` pointing at an ``.npy`` array of shape ``(N, 3)``
  (xyz) or ``(N, 6)`` (xyz + rgb), plus ``src_dataset`` / ``src_id``.
* Benchmark meta files, ``2D_Benchmark/meta_file/*.json`` and ``3D_Benchmark/meta_file/*.json``
  (``Caption_flickr30k``, ``Classification_CIFAR10``, ``Counting_FSC147``, ``Detection_VOC2012``,
  ``Facial_Classification_CelebA(Hair)``, ``OCR_SVT``, ``VQA_AI2D``, ``VQA_ScanQA_multiplechoice``,
  ...): ``image`` or ``pcl`` (3D paths start with ``./``, stripped), ``query``, optional ``id``,
  and ground truth (``sentences``, ``label``, ``attr``, ``num``, ``object``, ``word_list``,
  ``gt_choice`` + ``gt_choices``, ``gt_joints``).

Fields mapped:

* ``conversations`` (``from``/``value`` or ``role``/``content``) → turns. LAMM's JSON has no
  ``<image>`` token (its model inserts the vision tokens itself), so one ``<image>`` (2D) or
  ``<pointcloud>`` (3D) placeholder is put at the start of the first user turn, LLaVA-style.
* Benchmark records → one user turn holding ``query`` (placeholder in front) and no assistant turn;
  the ground-truth fields go to ``meta["ground_truth"]``; ``gt_choices`` also to
  ``meta["options"]`` and ``gt_choice`` to ``meta["answer_index"]`` (vocabulary ranking).
* :attr:`Sample.task`: ``task_type`` for instructions (default ``"normal"``, as LAMM; values such
  as the misspelt ``commomsenseqa`` are kept verbatim because LAMM keys its system prompts on
  them); for benchmark files, the file name without ``.json`` (``VQA_AI2D``,
  ``Facial_Classification_CelebA(Hair)``). ``meta["benchmark"] = True`` marks benchmark samples.
* :attr:`Sample.id`: ``id`` as a string; records without one (3D, some benchmarks) use their
  0-based index in the file. Other fields (``src_image``, ``src_dataset``, ``src_id``, ...) →
  :attr:`Sample.meta`.
* Media paths resolve against ``media_root``; its default is the folder above ``meta_file/``
  when the annotation file sits in one (``2D_Instruct/``, the folder the image zips extract to),
  else the annotation file's folder. Absolute paths are used as written (as ``LAMMDataset``).

Coordinates inside LAMM text: 2D boxes are normalised ``(x1, y1, x2, y2)`` in [0, 1]; 3D boxes
``(cx, cy, cz, lx, ly, lz)`` in metres; they stay in the text / ground truth as written.

Not supported: LAMM's per-``task_type`` system prompts (``conversations.py``; not in the JSON);
point-cloud formats other than ``.npy``/``.npz`` (PLY is ``unsupported-pointcloud`` under
``load_bytes``);
the zipped image/point-cloud archives themselves (extract them first); a record with both
``image`` and ``pcl`` (``invalid-record``).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, Optional, Tuple, Union

from mmit.data.normalize import (add_media_placeholders, apply_policy, check_first_turn, normalize_turns,
                                 open_annotation, record_extras, record_identity)
from mmit.data.media_resolve import MediaRoot, attach_media, resolve_media_path, strip_dot_slash
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.sources import FORMATS
from mmit.data.sources.llava import iter_json_records
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]

#: Ground-truth fields of LAMM-Benchmark meta files (``ChEF/scenario/LAMM_dataset.py``).
BENCHMARK_GT_FIELDS = ("sentences", "label", "attr", "num", "object", "word_list", "gt_choice",
                       "gt_choices", "gt_joints")
_USED = ("id", "image", "pcl", "conversations", "task_type", "query")


def default_media_root(annotation_path: str) -> str:
    """``.../2D_Instruct`` for ``.../2D_Instruct/meta_file/x.json``; else the file's folder."""
    folder = os.path.dirname(os.path.abspath(annotation_path))
    if os.path.basename(folder) == "meta_file":
        return os.path.dirname(folder)
    return folder


def _media(record: Dict[str, Any], where: str, root: str) -> Media:
    has_img, has_pcl = "image" in record, "pcl" in record
    if has_img and has_pcl:
        raise SampleError(f"{where}: record has both 'image' and 'pcl'", "invalid-record")
    if not (has_img or has_pcl):
        raise SampleError(f"{where}: record has neither 'image' nor 'pcl'", "invalid-record")
    key, kind = ("image", "image") if has_img else ("pcl", "pointcloud")
    written = record[key]
    if not isinstance(written, str) or not written.strip():
        raise SampleError(f"{where}: {key!r} must be a non-empty path, got {written!r}",
                          "invalid-record")
    resolved, how = resolve_media_path(strip_dot_slash(written), root, where)
    meta: Dict[str, Any] = {"original_path": written}
    if how:
        meta["resolved_by"] = how
    return Media(kind=kind, path=resolved, meta=meta)


def lamm_record_to_sample(record: Any, index: int, where: str, media_root: str,
                          benchmark_task: str, load_bytes: bool = False,
                          max_pixels: Optional[int] = None) -> Sample:
    """Normalise one LAMM instruction or benchmark record (module docstring).

    ``benchmark_task`` is the task name used for benchmark records (the file's stem). Raises
    :class:`SampleError`: ``invalid-record``, ``bad-role``, ``no-turns``, ``first-turn-not-user``,
    ``missing-media``, ``media-outside-root``, and the checks of
    :func:`~mmit.data.media_resolve.attach_media`
    (``unsupported-pointcloud``, ``undecodable-pointcloud``, ``undecodable-image``,
    ``image-too-large``).
    """
    sid, where = record_identity(record, index, where)
    meta = record_extras(record, _USED)
    if "conversations" in record:
        turns = normalize_turns(record["conversations"], where)
        check_first_turn(turns, where)
        task = record.get("task_type", "normal")
        if not isinstance(task, str):
            raise SampleError(f"{where}: 'task_type' must be a string", "invalid-record")
    elif "query" in record:
        query = record["query"]
        if not isinstance(query, str):
            raise SampleError(f"{where}: 'query' must be a string", "invalid-record")
        turns = [Turn("user", query)]
        task = benchmark_task
        meta = {k: v for k, v in meta.items() if k not in BENCHMARK_GT_FIELDS}
        meta["ground_truth"] = {k: record[k] for k in BENCHMARK_GT_FIELDS if k in record}
        meta["benchmark"] = True
        if isinstance(record.get("gt_choices"), list):
            meta["options"] = [str(c) for c in record["gt_choices"]]
        if isinstance(record.get("gt_choice"), int) and not isinstance(record["gt_choice"], bool):
            meta["answer_index"] = record["gt_choice"]
    else:
        raise SampleError(f"{where}: record has neither 'conversations' (instruction) nor "
                          f"'query' (benchmark)", "invalid-record")
    media = [_media(record, where, media_root)]
    sample = Sample(id=sid, turns=add_media_placeholders(turns, media), media=media, task=task,
                    source="lamm", meta=meta)
    for m in media:
        attach_media(m, where, media_root, load_bytes, max_pixels,
                     written=m.meta.get("original_path"))
    return sample


def read_lamm(path: PathLike, media_root: Optional[PathLike] = None, missing: str = "skip",
              stats: Optional[SkipCounter] = None, load_bytes: bool = False,
              max_pixels: Optional[int] = None, *, allow_absolute: bool = False,
              max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read a LAMM 2D/3D instruction file or a LAMM-Benchmark meta file (``source="lamm"``).

    Args:
        path: the JSON file (list of records; 2D, 3D and benchmark records may be mixed).
        media_root: folder that ``image`` / ``pcl`` paths resolve against (LAMM's
            ``vision_root_path``); default: see :func:`default_media_root`.
        missing: ``"skip"`` counts each unusable record in ``stats`` by reason;
            ``"error"`` raises :class:`SampleError` naming the file, record and id.
        stats: counter to add skips to (a fresh one when None).
        load_bytes: read media into ``Media.data`` (images sniffed; ``.npy`` headers checked,
            ``Media.meta["shape"]`` / ``["dtype"]`` set).
        max_pixels: with ``load_bytes``, reject images above this many pixels.
        allow_absolute: accept media outside ``media_root`` (absolute paths, ``..``, symlinks
            leading out); by default they are ``media-outside-root`` skips.
        max_media_bytes: per-kind size caps in bytes lowering
            :data:`~mmit.data.media.MAX_MEDIA_BYTES` (``media-too-large`` skips).

    Returns a lazy iterator in file order. Raises ``FileNotFoundError`` (at call time),
    ``ValueError`` (malformed JSON, naming file and line; bad ``missing`` or
    ``max_media_bytes``).
    """
    path, root = open_annotation(path, media_root, missing, "LAMM", default_media_root)
    root = MediaRoot(root, allow_absolute, max_media_bytes)
    counter = stats if stats is not None else SkipCounter()
    bench_task = os.path.splitext(os.path.basename(path))[0]

    def items() -> Iterator[Tuple[int, Any, str]]:
        for index, record, line in iter_json_records(path):
            yield index, record, f"{path}: record {index}" + (
                f" (line {line})" if line is not None else "")

    def to_sample(index: int, record: Any, where: str) -> Sample:
        return lamm_record_to_sample(record, index, where, root, bench_task, load_bytes,
                                     max_pixels)

    def record_id(index: int, record: Any) -> Any:
        return record.get("id", index) if isinstance(record, dict) else index

    return apply_policy(items(), to_sample, missing, counter, record_id)


FORMATS.register("lamm", read_lamm)
