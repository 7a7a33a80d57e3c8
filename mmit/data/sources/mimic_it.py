"""MIMIC-IT reader (format name ``mimic-it``), the instruction data of Otter.

Otter: "Otter: A Multi-Modal Model with In-Context Instruction Tuning", Li et al., arXiv 2305.03726;
MIMIC-IT: "MIMIC-IT: Multi-Modal In-Context Instruction Tuning", arXiv 2306.05425. Reference code:
Luodian/Otter ``pipeline/mimicit_utils/mimicit_dataset.py`` (``MimicitDataset``). Formats:
DATASETS.md §6.

Files read, per task ``XX`` (LA, DC, TVC, VST, SN, SD, CGD, E4D, ...):

* ``XX_instructions.json`` (the ``path`` argument)::

      {"meta": {...}, "data": {"DC_INS_00001": {"instruction": "...", "answer": "...",
                                                "image_ids": ["DC_IMG_v_..._0000", ...],
                                                "rel_ins_ids": ["DC_INS_00002", ...]}, ...}}

  ``data`` is a dict keyed by instruction id. ``image_ids`` may be absent/null (text-only groups).
* the image store, one of: ``XX.json`` = ``{"<image id>": "<base64 JPEG>"}`` (standard or URL-safe
  alphabet); ``XX.parquet`` = one column ``base64`` with the image id as (pandas) index, read with
  pyarrow; or a folder of image files named ``<image id>.<ext>`` or at the relative path the id
  spells (``coco/train2017/000000033471.jpg``), for extracted copies.
* ``XX_train.json`` (optional train config): ``{"DC_INS_00001": ["DC_INS_00002", ...], ...}``, the
  instruction ids to train on, each with its in-context example ids.

Which ids become samples (Otter's rule): the train config's keys in file order when there is one;
otherwise every instruction id, with its ``rel_ins_ids`` as in-context examples (Otter's
``populate_rel_ins``).

How a sample carries its in-context examples (``in_context="turns"``, the default): for each id in
``in_context_ids + [id]`` (Otter's ``process_general`` order) one user turn (``instruction``) and
one assistant turn (``answer``). Every image id not already in the sample is appended to ``media`` and
gets a ``"<image>\\n"`` at the start of the user turn of the chunk that introduces it. So video
tasks whose examples share the same frames (DC, TVC, E4D) carry the frames once, with all their
placeholders in the first chunk (Otter's VIDEO_TEXT / IMAGE_TEXT rule), and in-context tasks with
one image per example (LA in-context, SD) put each image in its own chunk (IMAGE_TEXT_IN_CONTEXT).
``in_context="meta"`` keeps only the queried instruction's turns and images. Either way
``meta["in_context_ids"]`` lists the example ids and ``meta["image_ids"]`` the query's image ids.

* :attr:`Sample.id` = instruction id; :attr:`Sample.task` = the id prefix before ``_INS_``
  (``DC``, ``LACR_T2T``, ...) unless ``task=`` is given; ``source = "mimic-it"``.
* ``Media(kind="image")`` per image (video frames too, in order); ``meta["image_id"]`` holds the
  id; ``path`` is None for base64 stores (the bytes are always in ``data``, since there is no file)
  and the file path for a folder store.
* Instruction/answer text is stripped of surrounding whitespace (Otter's ``pre_question``).

Skip reasons: ``unknown-instruction-id`` (a train/in-context id not in ``data``),
``invalid-record``, ``missing-media`` (image id not in the store: Otter issues #172/#329),
``bad-base64`` (:func:`mmit.data.media_base64.decode_base64`), ``undecodable-image`` (decoded bytes
are not an image).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from mmit.constants import IMAGE_PLACEHOLDER
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.sources import FORMATS
from mmit.data.normalize import check_missing_policy, unique_samples
from mmit.data.record_io import load_json_document
from mmit.data.media_check import image_check_done, remember_image_check
from mmit.data.media_base64 import decode_base64
from mmit.data.media_resolve import MediaRoot
from mmit.data.sources._media_helpers import attach_bytes, attach_file, report, validated
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]
_USED = ("instruction", "answer", "image_ids", "rel_ins_ids")
_INDEX_NAMES = ("__index_level_0__", "image_id", "id", "key", "index")
#: Decoded base64 images an :class:`ImageStore` keeps for reuse (bytes, least recently used out).
DECODED_CACHE_BYTES = 64 << 20


def _load_json(path: str, what: str) -> Any:
    """One-line ``ValueError`` naming the file for malformed, too deep or non-UTF-8 JSON."""
    return load_json_document(path, f"{what} JSON")


class ImageStore:
    """Image id → encoded bytes, over a base64 JSON, a base64 parquet or a folder of files.

    Args:
        location: ``*.json`` (``{id: base64}``), ``*.parquet`` (column ``base64``; the id is the
            pandas index column or a column named ``image_id``/``id``/``key``), or a folder.
        allow_absolute: folder stores: accept files whose real location (symlinks resolved) is
            outside the folder; by default they are ``media-outside-root`` skips.
        max_media_bytes: per-kind size caps in bytes (``media-too-large`` skips), for files and
            decoded base64 alike.

    Raises:
        FileNotFoundError: ``location`` does not exist.
        ValueError: malformed JSON / wrong top-level type / parquet without ``base64`` or id
            column / bad ``max_media_bytes``.
    """

    def __init__(self, location: str, allow_absolute: bool = False,
                 max_media_bytes: Optional[Dict[str, int]] = None):
        self.location = location
        self._decoded: "OrderedDict[str, Tuple[bytes, Optional[str], Any]]" = OrderedDict()
        self._decoded_bytes = 0
        self.kind = "folder" if os.path.isdir(location) else (
            "parquet" if location.lower().endswith(".parquet") else "json")
        self.root = MediaRoot(location if self.kind == "folder" else
                              os.path.dirname(os.path.abspath(location)), allow_absolute,
                              max_media_bytes)
        if self.kind == "folder":
            self._files = {}
            for name in sorted(os.listdir(location)):
                stem = name.rsplit(".", 1)[0] if "." in name else name
                self._files.setdefault(stem, os.path.join(location, name))
        elif not os.path.isfile(location):
            raise FileNotFoundError(f"MIMIC-IT image store not found: {location}")
        elif self.kind == "json":
            data = _load_json(location, "image")
            if not isinstance(data, dict):
                raise ValueError(f"{location}: image JSON must be an object "
                                 f"{{image_id: base64}}, got {type(data).__name__}")
            self._b64 = data
        else:
            self._open_parquet(location)

    def _open_parquet(self, location: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(location)
        except (OSError, pa.lib.ArrowException) as e:  # pyarrow's messages do not name the file
            raise ValueError(f"{location}: unreadable parquet file: "
                             f"{' '.join(str(e).split()) or type(e).__name__}") from None
        names = table.column_names
        if "base64" not in names:
            raise ValueError(f"{location}: MIMIC-IT image parquet needs a 'base64' column "
                             f"(columns: {names})")
        pandas_meta = table.schema.pandas_metadata or {}
        index_cols = [c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)]
        id_col = next((c for c in index_cols + list(_INDEX_NAMES) if c in names and c != "base64"),
                      None)
        if id_col is None:
            raise ValueError(f"{location}: no image-id column (pandas index or one of "
                             f"{_INDEX_NAMES}); columns: {names}")
        self._col = table.column("base64")
        try:
            ids = table.column(id_col).to_pylist()
        except UnicodeDecodeError as e:  # pyarrow does not check UTF-8 when it reads a file
            raise ValueError(f"{location}: image-id column {id_col!r} is not UTF-8: {e}") from None
        self._rows = {str(k): i for i, k in enumerate(ids)}

    def __contains__(self, image_id: str) -> bool:
        if self.kind == "folder":
            if image_id not in self._files:  # ids that are relative paths (coco/train2017/x.jpg)
                rel = os.path.join(self.location, image_id)
                if ".." not in image_id.split("/") and os.path.isfile(rel):
                    self._files[image_id] = rel
            return image_id in self._files
        return image_id in (self._b64 if self.kind == "json" else self._rows)

    def media(self, image_id: str, where: str, load_bytes: bool) -> Media:
        """The :class:`Media` for ``image_id`` (bytes always set for base64 stores).

        Raises :class:`SampleError`: ``missing-media``, ``media-outside-root``,
        ``media-too-large``, ``bad-base64``, ``undecodable-image``."""
        if image_id not in self:
            raise SampleError(f"{where}: image id {image_id!r} not in image store "
                              f"{self.location}", "missing-media")
        if self.kind == "folder":
            m = Media(kind="image", path=self._files[image_id], meta={"image_id": image_id})
            attach_file(m, where, load_bytes, self.root)
            return m
        try:
            text = (self._b64[image_id] if self.kind == "json"
                    else self._col[self._rows[image_id]].as_py())
        except UnicodeDecodeError as e:  # a parquet string cell that is not UTF-8
            raise SampleError(f"{where}: image {image_id!r}: base64 cell is not UTF-8 text: {e}",
                              "bad-base64") from None
        m = Media(kind="image", meta={"image_id": image_id})
        hit = self._decoded.get(image_id)
        if hit is not None:  # decoded and checked for an earlier instruction: the same bytes
            self._decoded.move_to_end(image_id)
            m.data, m.ext = hit[0], hit[1]
            remember_image_check(m, hit[0], hit[2])
            return m
        attach_bytes(m, decode_base64(text, f"{where}: image {image_id!r}"), where, self.root)
        self._keep(image_id, m)
        return m

    def _keep(self, image_id: str, m: Media) -> None:
        """Remember ``m``'s decoded, checked bytes under ``image_id`` (least recently used out
        first, at most :data:`DECODED_CACHE_BYTES` in all): in-context examples and the
        instructions of one image or clip name the same images over and over."""
        size = len(m.data)
        if size > DECODED_CACHE_BYTES // 4:
            return
        self._decoded[image_id] = (m.data, m.ext, image_check_done(m, m.data))
        self._decoded_bytes += size
        while self._decoded_bytes > DECODED_CACHE_BYTES:
            _, old = self._decoded.popitem(last=False)
            self._decoded_bytes -= len(old[0])


def _find_store(instructions: str, media_root: Optional[str]) -> str:
    """The image store for ``XX_instructions.json``: ``XX.parquet``/``XX.json``/``images.*`` in
    ``media_root`` (default: the instruction file's folder), else ``media_root`` as a folder."""
    folder = (media_root if media_root is not None
              else os.path.dirname(os.path.abspath(instructions)))
    if os.path.isfile(folder):
        return folder
    base = os.path.basename(instructions)
    prefix = base[: -len("_instructions.json")] if base.endswith("_instructions.json") else None
    names = ([f"{prefix}.parquet", f"{prefix}.json"] if prefix else []) + ["images.parquet",
                                                                          "images.json"]
    for name in names:
        cand = os.path.join(folder, name)
        if os.path.isfile(cand) and os.path.abspath(cand) != os.path.abspath(instructions):
            return cand
    if media_root is None:
        raise FileNotFoundError(f"no MIMIC-IT image store beside {instructions} (looked for "
                                f"{', '.join(names)}); pass images= or media_root=")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"MIMIC-IT media_root not found: {folder}")
    return folder


def _default_train_config(instructions: str) -> Optional[str]:
    base = os.path.basename(instructions)
    if not base.endswith("_instructions.json"):
        return None
    cand = os.path.join(os.path.dirname(os.path.abspath(instructions)),
                        base[: -len("_instructions.json")] + "_train.json")
    return cand if os.path.isfile(cand) else None


def _train_ids(data: Dict[str, Any], train_config: Optional[str]) -> List[Tuple[str, Any]]:
    """``[(instruction id, in-context ids as written)]`` in Otter's order."""
    if train_config is None:
        return [(k, v.get("rel_ins_ids") if isinstance(v, dict) else None) for k, v in data.items()]
    cfg = _load_json(train_config, "train config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{train_config}: train config must be an object {{instruction_id: "
                         f"[in-context ids]}}, got {type(cfg).__name__}")
    return list(cfg.items())


def _entry(data: Dict[str, Any], iid: Any, where: str) -> Dict[str, Any]:
    if not isinstance(iid, str) or iid not in data:
        raise SampleError(f"{where}: instruction id {iid!r} not in the instruction file",
                          "unknown-instruction-id")
    e = data[iid]
    if not isinstance(e, dict):
        raise SampleError(f"{where}: instruction {iid!r} is not an object", "invalid-record")
    for k in ("instruction", "answer"):
        if not isinstance(e.get(k), str):
            raise SampleError(f"{where}: instruction {iid!r} has no string {k!r}", "invalid-record")
    ids = e.get("image_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise SampleError(f"{where}: instruction {iid!r}: 'image_ids' must be a list of strings",
                          "invalid-record")
    return e


def mimicit_record_to_sample(iid: str, in_context: Any, data: Dict[str, Any], store: ImageStore,
                             where: str, load_bytes: bool = False, mode: str = "turns",
                             task: Optional[str] = None) -> Sample:
    """Build the :class:`Sample` for instruction ``iid`` with in-context ids ``in_context``
    (see module docstring). Raises :class:`SampleError` (reasons in the module docstring)."""
    query = _entry(data, iid, where)
    if in_context is None:
        in_context = []
    if not isinstance(in_context, list):
        raise SampleError(f"{where}: in-context ids must be a list, got {in_context!r}",
                          "invalid-record")
    chunk_ids = (list(in_context) if mode == "turns" else []) + [iid]
    entries = [_entry(data, c, where) for c in chunk_ids[:-1]] + [query]
    turns: List[Turn] = []
    media: List[Media] = []
    seen = set()
    for entry in entries:
        new = [i for i in (entry.get("image_ids") or []) if i not in seen]
        seen.update(new)
        media.extend(store.media(i, where, load_bytes) for i in new)
        prefix = "".join(f"{IMAGE_PLACEHOLDER}\n" for _ in new)
        turns.append(Turn("user", prefix + entry["instruction"].strip()))
        turns.append(Turn("assistant", entry["answer"].strip()))
    meta = {k: v for k, v in query.items() if k not in _USED}
    meta["image_ids"] = list(query.get("image_ids") or [])
    meta["in_context_ids"] = list(in_context)
    if task is None and "_INS_" in iid:
        task = iid.split("_INS_")[0]
    sample = Sample(id=iid, turns=turns, media=media, task=task, source="mimic-it", meta=meta)
    return validated(sample, where)


def read_mimic_it(path: PathLike, media_root: Optional[PathLike] = None, missing: str = "skip",
                  stats: Optional[SkipCounter] = None, load_bytes: bool = False, *,
                  images: Optional[PathLike] = None, train_config: Optional[PathLike] = None,
                  in_context: str = "turns", task: Optional[str] = None,
                  allow_absolute: bool = False,
                  max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read a MIMIC-IT instruction file (+ image store + train config) as samples
    (``source="mimic-it"``; see the module docstring for the mapping).

    Args:
        path: ``XX_instructions.json``.
        media_root: folder holding the image store (``XX.parquet``, ``XX.json``, ``images.parquet``
            or ``images.json``, tried in that order) or, if none is there, the image files
            themselves (``<image id>.<ext>``). Default: the instruction file's folder.
        missing: ``"skip"`` counts unusable records in ``stats`` by reason; ``"error"`` raises.
        stats: skip counter (a fresh one when None).
        load_bytes: read folder-store files into ``Media.data``. Base64 stores always fill
            ``Media.data`` (decoded bytes, exactly as encoded in the store) and ``Media.ext``.
        images: the image store file/folder, overriding the search above.
        train_config: ``XX_train.json``; default ``XX_train.json`` beside ``path`` if it exists,
            else every instruction with its ``rel_ins_ids``.
        in_context: ``"turns"`` (examples become earlier turns, their images media) or ``"meta"``
            (only their ids, in ``meta["in_context_ids"]``).
        task: value for :attr:`Sample.task` (default: the instruction id's prefix).
        allow_absolute, max_media_bytes: the media policy of :class:`ImageStore` (folder files
            must lie inside the store folder unless ``allow_absolute``; size caps).

    Raises:
        FileNotFoundError: instruction file, image store or train config missing (at call time).
        ValueError: malformed JSON, no ``data`` object, bad store or ``missing``/``in_context``.
        SampleError: under ``missing="error"``, naming the file and instruction id.
    """
    check_missing_policy(missing)
    if in_context not in ("turns", "meta"):
        raise ValueError(f"in_context must be 'turns' or 'meta', got {in_context!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MIMIC-IT instruction file not found: {path}")
    root = os.fspath(media_root) if media_root is not None else None
    store_path = os.fspath(images) if images is not None else _find_store(path, root)
    cfg = os.fspath(train_config) if train_config is not None else _default_train_config(path)
    if cfg is not None and not os.path.isfile(cfg):
        raise FileNotFoundError(f"MIMIC-IT train config not found: {cfg}")
    doc = _load_json(path, "instruction")
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise ValueError(f"{path}: MIMIC-IT instruction JSON must be an object with a 'data' "
                         f"object keyed by instruction id")
    data = doc["data"]
    ids = _train_ids(data, cfg)
    store = ImageStore(store_path, allow_absolute, max_media_bytes)
    counter = stats if stats is not None else SkipCounter()

    def gen() -> Iterator[Sample]:
        for iid, ctx in ids:
            where = f"{path}: instruction {iid!r}" + (f" (train config {cfg})" if cfg else "")
            try:
                sample = mimicit_record_to_sample(iid, ctx, data, store, where, load_bytes,
                                                  in_context, task)
            except SampleError as e:
                report(e, missing, counter, iid)
                continue
            yield sample

    return unique_samples(gen(), missing, counter, path)  # a repeated id is a duplicate-id skip


FORMATS.register("mimic-it", read_mimic_it)
