"""ShareGPT4V reader (format name ``sharegpt4v``): GPT-4V captions, Share-Captioner captions, mix665k.

ShareGPT4V: "ShareGPT4V: Improving Large Multi-Modal Models with Better Captions", Chen et al.,
arXiv 2311.12793. Reference: InternLM/InternLM-XComposer ``projects/ShareGPT4V`` @ 0f70c3e
(``docs/Data.md``); data on HF ``Lin-Chen/ShareGPT4V``.

Files it reads (DATASETS.md §4), each a JSON list in LLaVA's shape
``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``:

* ``sharegpt4v_instruct_gpt4-vision_cap100k.json`` (config ``ShareGPT4V``; ~102k GPT-4V captions,
  one human prompt with ``<image>`` before or after it, one long caption);
* ``share-captioner_coco_lcs_sam_1246k_1107.json`` (config ``ShareGPT4V-PT``; 1.2M captions);
* ``sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json`` (LLaVA-1.5's mix665k with 23k
  captions replaced: multi-turn, text-only ShareGPT records without ``image`` and with ``model``).

Image layout (``docs/Data.md``): ``image`` values are relative to the ``data/`` folder::

    data/coco/train2017  data/sam/images  data/llava/llava_pretrain/images  data/wikiart/images
    data/share_textvqa/images  data/web-celebrity/images  data/web-landmark/images
    data/gqa/images  data/ocr_vqa/images  data/textvqa/train_images  data/vg/VG_100K(_2)

``media_root`` is that ``data/`` folder; by default the annotation file's folder, or its parent
when the JSON sits in ``data/sharegpt4v/`` as the docs lay it out. ``Media.meta["image_root"]`` is
the top folder of the path (``coco``, ``sam``, ``wikiart``, ...; :data:`IMAGE_ROOTS`), so counts per
image source need no path parsing downstream.

Fields mapped: as :mod:`mmit.data.sources.llava` (roles, ``<image>`` moved to the front as LLaVA
trains, text-only records kept, ``model`` and other extras → :attr:`Sample.meta`), with
``source="sharegpt4v"``. Media resolution tries, after the path as written: COCO 2014/2017 names,
and for file names with non-ASCII characters or ``#Uxxxx`` escapes (wikiart) the other spelling and
both Unicode normal forms (NFC/NFD). Extensions lie (``examples/breaking_bad.png`` is WebP):
``Media.ext`` comes from the content under ``load_bytes``.

Not supported: reading images from the SA-1B ``.tar`` packs (extract them; roughly half the SAM
images referenced by the 1246k file are not in the 50 tars the docs name, and are counted as
``missing-media``); token-based truncation of the long captions (a template/collate concern);
the ShareGPT4V-PT ``plain`` pretraining format is left to the conversation template.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from mmit.data.normalize import (apply_policy, check_first_turn, normalize_turns, open_annotation,
                                 place_image_placeholders, record_extras, record_identity)
from mmit.data.media_resolve import MediaRoot, attach_media, deferred, resolve_media_path, strip_dot_slash
from mmit.data.sample import Media, Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.llava import iter_json_records
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]

#: Top-level image folders of ShareGPT4V's ``data/`` layout → the dataset they hold.
IMAGE_ROOTS: Dict[str, str] = {
    "coco": "COCO 2017 (coco/train2017)",
    "sam": "SA-1B (sam/images)",
    "llava": "LAION-CC-SBU-558K (llava/llava_pretrain/images)",
    "wikiart": "WikiArt (wikiart/images)",
    "share_textvqa": "TextVQA subset (share_textvqa/images)",
    "web-celebrity": "web celebrity images (web-celebrity/images)",
    "web-landmark": "web landmark images (web-landmark/images)",
    "gqa": "GQA (gqa/images)",
    "ocr_vqa": "OCR-VQA (ocr_vqa/images)",
    "textvqa": "TextVQA (textvqa/train_images)",
    "vg": "Visual Genome (vg/VG_100K, vg/VG_100K_2)",
}
_USED = ("id", "image", "conversations")
_ESCAPE = re.compile(r"#U([0-9a-fA-F]{4})")


def image_root_of(path: str) -> Optional[str]:
    """The top folder of a ShareGPT4V ``image`` value if it is one of :data:`IMAGE_ROOTS`."""
    head = strip_dot_slash(path).replace("\\", "/").split("/", 1)[0]
    return head if head in IMAGE_ROOTS else None


def name_variants(path: str) -> List[str]:
    """Other spellings of a path whose file name has non-ASCII characters or ``#Uxxxx`` escapes:
    escapes decoded (``#U00e3`` → ``ã``), non-ASCII encoded as ``#Uxxxx``, and NFC/NFD forms."""
    out = []
    decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), path)
    encoded = "".join(c if ord(c) < 128 else f"#U{ord(c):04x}" for c in path)
    for cand in (decoded, encoded, unicodedata.normalize("NFC", decoded),
                 unicodedata.normalize("NFD", decoded)):
        if cand != path and cand not in out:
            out.append(cand)
    return out


def default_media_root(annotation_path: str) -> str:
    """``data/`` for ``data/sharegpt4v/x.json`` (the docs' layout); else the file's folder."""
    folder = os.path.dirname(os.path.abspath(annotation_path))
    if os.path.basename(folder) == "sharegpt4v":
        return os.path.dirname(folder)
    return folder


def sharegpt4v_record_to_sample(record: Any, index: int, where: str, media_root: str,
                                load_bytes: bool = False,
                                max_pixels: Optional[int] = None) -> Sample:
    """Normalise one ShareGPT4V record (module docstring). Raises :class:`SampleError`:
    ``invalid-record``, ``bad-role``, ``no-turns``, ``first-turn-not-user``, ``missing-media``
    ``media-outside-root``, ``media-too-large`` and the checks of
    :func:`~mmit.data.media_resolve.load_media` (``undecodable-image``,
    ``image-too-large``); placeholder and alternation problems surface from
    :meth:`Sample.validate`."""
    sid, where = record_identity(record, index, where)
    if "conversations" not in record:
        raise SampleError(f"{where}: no 'conversations' field", "invalid-record")
    value = record.get("image")
    paths = [] if value is None else (value if isinstance(value, list) else [value])
    if not all(isinstance(p, str) and p.strip() for p in paths) or (value is not None
                                                                    and not paths):
        raise SampleError(f"{where}: 'image' must be a non-empty path or a list of paths, got "
                          f"{value!r}", "invalid-record")
    turns = normalize_turns(record["conversations"], where)
    check_first_turn(turns, where)
    media = []
    for p in paths:
        resolved, how = resolve_media_path(p, media_root, where, deferred(name_variants, p))
        meta: Dict[str, Any] = {"original_path": p, "image_root": image_root_of(p)}
        if how:
            meta["resolved_by"] = how
        media.append(Media(kind="image", path=resolved, meta=meta))
    sample = Sample(id=sid, turns=place_image_placeholders(turns, len(media)), media=media,
                    source="sharegpt4v", meta=record_extras(record, _USED))
    for m in media:
        attach_media(m, where, media_root, load_bytes, max_pixels,
                     written=m.meta.get("original_path"))
    return sample


def read_sharegpt4v(path: PathLike, media_root: Optional[PathLike] = None, missing: str = "skip",
                    stats: Optional[SkipCounter] = None, load_bytes: bool = False,
                    max_pixels: Optional[int] = None, *, allow_absolute: bool = False,
                    max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read a ShareGPT4V JSON (cap100k, share-captioner 1246k or mix665k) as validated samples
    (``source="sharegpt4v"``).

    Args:
        path: the JSON list file (JSONL also works).
        media_root: ShareGPT4V's ``data/`` folder; default :func:`default_media_root`.
        missing: ``"skip"`` counts each unusable record in ``stats`` by reason (``missing-media``
            for the SAM / web-celebrity images the packs lack, ...); ``"error"`` raises
            :class:`SampleError` naming the file, record and id.
        stats: counter to add skips to (a fresh one when None).
        load_bytes: read each image into ``Media.data``; ``Media.ext`` sniffed from content.
        max_pixels: with ``load_bytes``, reject images above this many pixels.
        allow_absolute: accept media outside ``media_root`` (absolute paths, ``..``, symlinks
            leading out); by default they are ``media-outside-root`` skips.
        max_media_bytes: per-kind size caps in bytes lowering
            :data:`~mmit.data.media.MAX_MEDIA_BYTES` (``media-too-large`` skips).

    Returns a lazy iterator in file order. Raises ``FileNotFoundError`` (at call time),
    ``ValueError`` (malformed JSON naming file and line; bad ``missing`` or ``max_media_bytes``).
    """
    path, root = open_annotation(path, media_root, missing, "ShareGPT4V", default_media_root)
    root = MediaRoot(root, allow_absolute, max_media_bytes)
    counter = stats if stats is not None else SkipCounter()

    def items() -> Iterator[Tuple[int, Any, str]]:
        for index, record, line in iter_json_records(path):
            yield index, record, f"{path}: record {index}" + (
                f" (line {line})" if line is not None else "")

    def to_sample(index: int, record: Any, where: str) -> Sample:
        return sharegpt4v_record_to_sample(record, index, where, root, load_bytes, max_pixels)

    def record_id(index: int, record: Any) -> Any:
        return record.get("id", index) if isinstance(record, dict) else index

    return apply_policy(items(), to_sample, missing, counter, record_id)


FORMATS.register("sharegpt4v", read_sharegpt4v)
