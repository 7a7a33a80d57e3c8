"""MMC4 reader (format name ``mmc4``): interleaved image-text web documents for the flamingo family.

MMC4: "Multimodal C4: An Open, Billion-scale Corpus of Images Interleaved with Text", Zhu et al.,
arXiv 2304.06939. OpenFlamingo: "OpenFlamingo: An Open-Source Framework for Training Large
Autoregressive Vision-Language Models", Awadalla et al., arXiv 2308.01390; reference code
mlfoundations/open_flamingo ``open_flamingo/train/data.py`` (``preprocess_interleaved``). OBELICS-style
documents converted to the same JSONL shape read the same way.

Input: JSONL, one document per line (``docs_shard_0_v2.jsonl``; also ``.jsonl.gz`` and MMC4's
``.jsonl.zip`` with the JSONL members read in name order)::

    {"url": "https://...", "text_list": ["First sentence.", "Second sentence.", ...],
     "image_info": [{"image_name": "3f2a....jpg", "raw_url": "https://...", "matched_text_index": 1,
                     "matched_sim": 0.31, ("image_base64": "/9j/...")}, ...],
     "similarity_matrix": [[0.12, 0.31, ...], ...], "could_have_url_duplicate": 0}

* ``image_base64`` (OpenFlamingo's shards carry it) is used when present (``Media.path`` None, bytes
  always set); otherwise ``image_name`` is a file under ``media_root`` (absolute names, names that
  leave ``media_root`` with ``..`` and symlinks leading out are ``media-outside-root`` unless
  ``allow_absolute``).
* ``matched_text_index`` / ``matched_sim`` (MMC4's image-to-sentence assignment) say where an image goes;
  an entry without them falls back to its ``similarity_matrix`` row (argmax and its value, as
  OpenFlamingo's ``preprocess_interleaved`` computes).

Rules (OpenFlamingo's): keep images with ``matched_sim >= sim_threshold`` (default 0.24, its
``--mmc4_textsim_threshold``) and, optionally, at least ``min_image_bytes`` bytes (OpenFlamingo drops
images with ``len(bytes) // 1000 <= 10``: pass 11000 to match); of those, at most ``max_images``
(default 6, its ``--mmc4_max_num_images``), taken in document order (matched sentence, then
``image_info`` order; OpenFlamingo takes ``image_info`` order, which MMC4 writes in page order). Each
kept image's ``<image>`` goes right before the sentence it matched; several images on one sentence keep
their ``image_info`` order. Sentences are stripped, blank ones dropped, the rest joined by ``" "``, with
no space next to an ``<image>`` (OpenFlamingo's whitespace cleanup); no ``<|endofchunk|>`` is written:
the flamingo processor adds those (:mod:`mmit.families.flamingo.processor`, document mode).

Output, one :class:`Sample` per document (``source="mmc4"``, ``task="interleaved"``)::

    turns = [Turn("user", ""), Turn("assistant", "Intro.<image>First sentence. Second.<image>Third.")]
    media = the kept images in placeholder order (meta: image_name, matched_text_index, matched_sim, raw_url)
    meta  = {"document": True, "url": ..., "matched_sim": [kept images' sims], other document fields}

``id`` is the record's ``id`` field when it has one, else its 0-based record index in the file.
``similarity_matrix`` (large) is not kept.

Skip reasons (each skipped line counted once, so records in = yielded + skipped): ``malformed-json``
(message names ``file:line``), ``bad-encoding`` (a line that is not UTF-8), ``too-deep`` (nested too
deep for the JSON parser), ``number-too-large`` (an integer of more than 4300 digits), ``bad-id``,
``duplicate-id``, ``invalid-record`` (not an object, bad ``text_list`` / ``image_info``
entry, index out of range), ``no-text`` (no non-blank sentence),
``no-matched-image`` (no image passes the rules), ``missing-media``, ``media-outside-root``,
``media-too-large``, ``bad-base64``, ``undecodable-image``. A damaged ``.gz`` / ``.zip`` (cut short, a
bad CRC) is a one-line ``ValueError`` naming the file and the last line read.

Not replicated from OpenFlamingo: its ``--mmc4_min_num_images``, the random drop of half the
one-image documents, the zero-padding of the image tensor to ``max_num_images`` and truncation at
``max_tokens`` (the processor's ``max_length`` rule replaces it: whole chunks only).
"""

from __future__ import annotations

import gzip
import json
import os
import zipfile
import zlib
from contextlib import contextmanager
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Tuple, Union

from mmit.constants import IMAGE_PLACEHOLDER
from mmit.data.media_base64 import decode_base64
from mmit.data.media_resolve import MediaRoot, resolve_media_path
from mmit.data.normalize import open_annotation, record_extras, record_identity, unique_samples
from mmit.data.record_io import NUMBER_TOO_LARGE
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.sources import FORMATS
from mmit.data.sources._media_helpers import attach_bytes, attach_file, report, validated
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]

#: OpenFlamingo's ``--mmc4_textsim_threshold`` and ``--mmc4_max_num_images`` defaults (arXiv 2308.01390).
DEFAULT_SIM_THRESHOLD = 0.24
DEFAULT_MAX_IMAGES = 6
_USED = ("id", "text_list", "image_info", "similarity_matrix", "url")
_MEDIA_META = ("image_name", "raw_url", "matched_text_index", "matched_sim")


# -- lines -------------------------------------------------------------------------------------------

@contextmanager
def _members(path: str) -> Iterator[List[Tuple[str, BinaryIO]]]:
    """``[(label, binary stream)]``: the file itself, its gzip stream, or the JSONL members of a zip."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if not n.endswith("/") and ".json" in n.lower())
            if not names:
                raise ValueError(f"{path}: zip archive holds no .jsonl member")
            streams = [(f"{path}!{n}", z.open(n)) for n in names]
            try:
                yield streams
            finally:
                for _, s in streams:
                    s.close()
        return
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        yield [(path, f)]


def iter_jsonl_lines(path: str) -> Iterator[Tuple[str, int, Any]]:
    """Yield ``(where, index, record)`` for each non-blank line of a JSONL / ``.gz`` / ``.zip`` file.

    ``where`` is ``file:line`` (``archive!member:line`` inside a zip; lines 1-based); ``index`` counts
    non-blank lines from 0 across members. A line that is not UTF-8 JSON yields a
    :class:`SampleError` (reason ``malformed-json``, naming ``file:line`` and the column) as its record,
    so the caller can count it and go on. Streams: one line in memory at a time.

    Raises ``ValueError`` naming the file (and the last line read) for a damaged archive: a
    truncated or corrupt gzip stream, a zip whose directory or member data is broken.
    """
    last = ["no line read"]
    try:
        yield from _jsonl_lines(path, last)
    except _ARCHIVE_ERRORS as e:
        raise ValueError(f"{path}: unreadable archive (last line read: {last[0]}): "
                         f"{' '.join(str(e).split()) or type(e).__name__}") from None


#: What a damaged .gz / .zip raises while it is read (BadGzipFile is an OSError; a truncated gzip
#: stream raises EOFError; a bad zip BadZipFile, zlib.error, or NotImplementedError / RuntimeError
#: for an unsupported compression method or an encrypted member).
_ARCHIVE_ERRORS = (EOFError, OSError, zipfile.BadZipFile, zlib.error, NotImplementedError,
                   RuntimeError)


def _jsonl_lines(path: str, last: List[str]) -> Iterator[Tuple[str, int, Any]]:
    """The body of :func:`iter_jsonl_lines`; ``last[0]`` is set to each line's ``file:line``."""
    index = 0
    with _members(path) as members:
        for label, stream in members:
            for lineno, raw in enumerate(stream, start=1):
                last[0] = f"{label}:{lineno}"
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if not raw.strip():
                    continue
                where = f"{label}:{lineno}"
                try:
                    record: Any = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    record = SampleError(f"{where}: not UTF-8 at byte {e.start}", "bad-encoding")
                except RecursionError:
                    record = SampleError(f"{where}: nested too deep for the JSON parser", "too-deep")
                except json.JSONDecodeError as e:
                    record = SampleError(f"{where}: malformed JSON at column {e.colno}: {e.msg}",
                                         "malformed-json")
                except ValueError as e:  # an integer longer than int() converts (4300 digits)
                    record = SampleError(f"{where}: {e}", NUMBER_TOO_LARGE)
                yield where, index, record
                index += 1


# -- one document ------------------------------------------------------------------------------------

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _match(info: Dict[str, Any], k: int, record: Dict[str, Any], n_text: int, where: str
           ) -> Tuple[int, float]:
    """``(sentence index, similarity)`` of image entry ``k``: MMC4's ``matched_*`` fields, else the
    argmax of its ``similarity_matrix`` row. Raises ``invalid-record`` when neither is usable."""
    idx, sim = info.get("matched_text_index"), info.get("matched_sim")
    if idx is None and sim is None:
        rows = record.get("similarity_matrix")
        row = rows[k] if isinstance(rows, list) and k < len(rows) else None
        if isinstance(row, list) and row and all(_is_number(v) for v in row):
            idx = max(range(len(row)), key=lambda j: row[j])  # first maximum, as np.argmax
            sim = row[idx]
    if isinstance(idx, bool) or not isinstance(idx, int) or not _is_number(sim):
        raise SampleError(f"{where}: image_info[{k}] needs an integer 'matched_text_index' and a number "
                          f"'matched_sim' (or a similarity_matrix row), got {idx!r}, {sim!r}", "invalid-record")
    if not 0 <= idx < n_text:
        raise SampleError(f"{where}: image_info[{k}] matched_text_index {idx} is outside text_list "
                          f"(0..{n_text - 1})", "invalid-record")
    return idx, float(sim)


def _confined(name: Any, root: str, where: str) -> str:
    """``image_name`` as a path inside ``root``, symlinks resolved
    (:func:`~mmit.data.media_resolve.resolve_media_path`). Raises ``invalid-record`` for a
    non-string name, ``media-outside-root`` for an absolute, ``..``-escaping or symlinked-out name
    (unless ``root`` allows absolute media), ``missing-media`` when absent."""
    if not isinstance(name, str) or not name.strip():
        raise SampleError(f"{where}: 'image_name' must be a non-empty string, got {name!r}", "invalid-record")
    return resolve_media_path(os.path.normpath(name), root, where, coco=False)[0]


def _media(info: Dict[str, Any], k: int, root: str, where: str, load_bytes: bool) -> Media:
    """The :class:`Media` of image entry ``k`` (base64 first, else the file). Raises SampleError:
    ``invalid-record``, ``missing-media``, ``bad-base64``, ``undecodable-image``."""
    meta = {key: info[key] for key in _MEDIA_META if key in info}
    if "image_base64" in info:
        m = Media(kind="image", meta=meta)
        attach_bytes(m, decode_base64(info["image_base64"], f"{where}: image_info[{k}]"), where, root)
        return m
    if "image_name" not in info:
        raise SampleError(f"{where}: image_info[{k}] has neither 'image_name' nor 'image_base64'",
                          "invalid-record")
    m = Media(kind="image", path=_confined(info["image_name"], root, f"{where}: image_info[{k}]"), meta=meta)
    attach_file(m, where, load_bytes, root)
    return m


def _size(m: Media) -> int:
    return len(m.data) if m.data is not None else os.path.getsize(m.path)


def document_text(sentences: List[str], images_at: Dict[int, int]) -> str:
    """Sentences joined by ``" "`` with ``images_at[j]`` ``<image>`` placeholders right before sentence
    ``j`` and no space next to a placeholder; sentences are stripped and blank ones dropped."""
    text = ""
    for j, s in enumerate(sentences):
        s = s.strip()
        n = images_at.get(j, 0)
        if n:
            text += IMAGE_PLACEHOLDER * n + s
        elif s:
            text += (" " if text and not text.endswith(IMAGE_PLACEHOLDER) else "") + s
    return text


def mmc4_record_to_sample(record: Any, index: int, where: str, media_root: str, load_bytes: bool = False,
                          sim_threshold: float = DEFAULT_SIM_THRESHOLD, max_images: int = DEFAULT_MAX_IMAGES,
                          min_image_bytes: int = 0) -> Sample:
    """One MMC4 document as a validated :class:`Sample` (rules and shape: module docstring).

    Args:
        record: the parsed JSON line. index: its 0-based record index (the id when ``id`` is absent).
        where: ``file:line`` for messages. media_root: folder ``image_name`` resolves in.
        load_bytes: read image files into ``Media.data`` (base64 images always carry bytes).
        sim_threshold: minimum ``matched_sim`` (CLIP cosine similarity, unitless). max_images: cap per
            document. min_image_bytes: drop smaller images (0: keep all).

    Raises:
        SampleError: the skip reasons of the module docstring (``malformed-json`` excepted).
    """
    sid, where = record_identity(record, index, where)
    sentences = record.get("text_list")
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise SampleError(f"{where}: 'text_list' must be a list of strings", "invalid-record")
    if not any(s.strip() for s in sentences):
        raise SampleError(f"{where}: document has no text", "no-text")
    infos = record.get("image_info") or []
    if not isinstance(infos, list) or not all(isinstance(i, dict) for i in infos):
        raise SampleError(f"{where}: 'image_info' must be a list of objects", "invalid-record")
    candidates = []
    for k, info in enumerate(infos):
        idx, sim = _match(info, k, record, len(sentences), where)
        if sim >= sim_threshold:
            candidates.append((idx, k, sim))
    kept: List[Tuple[int, float, Media]] = []
    for idx, k, sim in sorted(candidates):
        if len(kept) >= max_images:
            break
        m = _media(infos[k], k, media_root, where, load_bytes)
        if min_image_bytes and _size(m) < min_image_bytes:
            continue
        kept.append((idx, sim, m))
    if not kept:
        raise SampleError(f"{where}: no image with matched_sim >= {sim_threshold}"
                          + (f" and >= {min_image_bytes} bytes" if min_image_bytes else "")
                          + f" among {len(infos)}", "no-matched-image")
    images_at: Dict[int, int] = {}
    for idx, _, _ in kept:
        images_at[idx] = images_at.get(idx, 0) + 1
    meta = {"document": True, "url": record.get("url"), "matched_sim": [sim for _, sim, _ in kept],
            **record_extras(record, _USED)}
    sample = Sample(id=sid, turns=[Turn("user", ""), Turn("assistant", document_text(sentences, images_at))],
                    media=[m for _, _, m in kept], task="interleaved", source="mmc4", meta=meta)
    return validated(sample, where)


def read_mmc4(path: PathLike, media_root: Optional[PathLike] = None, missing: str = "skip",
              stats: Optional[SkipCounter] = None, load_bytes: bool = False, *,
              sim_threshold: float = DEFAULT_SIM_THRESHOLD, max_images: int = DEFAULT_MAX_IMAGES,
              min_image_bytes: int = 0, allow_absolute: bool = False,
              max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read an MMC4 JSONL file (or ``.gz`` / ``.zip``) as one document sample per line (``source="mmc4"``).

    Args:
        path: the documents file. media_root: folder of the image files named by ``image_name``
            (default: the file's folder). missing: ``"skip"`` counts each unusable line in ``stats``
            under its reason; ``"error"`` raises. stats: counter (fresh when None).
        load_bytes: read image files into ``Media.data`` and sniff ``Media.ext``.
        sim_threshold, max_images, min_image_bytes: the image rules (module docstring); pass them to
            ``mmit convert`` as ``--reader-option sim_threshold=0.3``.
        allow_absolute: accept image files outside ``media_root`` (absolute names, ``..``,
            symlinks leading out); by default they are ``media-outside-root`` skips.
        max_media_bytes: per-kind size caps in bytes lowering
            :data:`~mmit.data.media.MAX_MEDIA_BYTES` (``media-too-large`` skips).

    Returns:
        A lazy iterator of samples in file order; each non-blank line is yielded or counted once.

    Raises:
        FileNotFoundError: ``path`` does not exist (at call time). ValueError: bad ``missing``,
        ``max_images < 1``, bad ``max_media_bytes`` or a zip without a JSONL member. SampleError: under ``missing="error"``,
        naming ``file:line``.
    """
    path, root = open_annotation(path, media_root, missing, "MMC4")
    root = MediaRoot(root, allow_absolute, max_media_bytes)
    if int(max_images) < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    counter = stats if stats is not None else SkipCounter()

    def gen() -> Iterator[Sample]:
        for where, index, record in iter_jsonl_lines(path):
            try:
                if isinstance(record, SampleError):
                    raise record
                sample = mmc4_record_to_sample(record, index, where, root, load_bytes, float(sim_threshold),
                                               int(max_images), int(min_image_bytes))
            except SampleError as e:
                rid = record.get("id", index) if isinstance(record, dict) else index
                report(e, missing, counter, rid)
                continue
            yield sample

    return unique_samples(gen(), missing, counter, path)  # a repeated id is a duplicate-id skip


FORMATS.register("mmc4", read_mmc4)
