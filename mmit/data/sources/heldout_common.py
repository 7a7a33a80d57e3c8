"""Shared pieces of the held-out evaluation readers (``heldout-*`` formats); registers no format.

**Eval sample convention.** Every held-out reader yields :class:`~mmit.data.sample.Sample` records
shaped the same way, so that eval tasks need not know the dataset:

* ``turns = [Turn("user", "<image>\\n" + prompt), Turn("assistant", reference answer)]``, the prompt
  written as InstructBLIP (arXiv 2305.06500) prompts that dataset; ``<video>\\n`` for video sets;
* ``meta["options"]``: the candidate answers (list[str]) for classification-style / ranked sets;
* ``meta["label"]``: the gold option (one of ``options``);
* ``meta["answers"]``: all acceptable references when there are several (VQA's 10 answers,
  5 captions);
* ``meta["fields"]``: the named prompt fields (``question``, ``context``, ``options_lettered``,
  ...), so a YAML template such as ``"Question: {question} Options: {options_lettered}"`` can
  re-render the prompt;
* ``task``: the dataset name (``vsr``, ``scienceqa``, ...); ``source``: the format name.

Readers follow the signature of :mod:`mmit.data.sources` (``path, media_root=None,
missing="skip", stats=None, load_bytes=False``, plus keyword options of their own, among them
``allow_absolute`` and ``max_media_bytes``: the media policy of :func:`default_root`). Every record
read is either yielded or counted in ``stats`` under a reason: records in = yielded + skipped.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from mmit.data.media_resolve import MediaRoot, attach_media
from mmit.data.normalize import MEDIA_PLACEHOLDERS, IdSet
from mmit.data.record_io import BadRecord, iter_json_records, load_json_document
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.stats import SkipCounter

#: The InstructBLIP zero-shot instructions, one per held-out dataset (``{field}`` names refer to
#: ``meta["fields"]``). ScienceQA's is confirmed by the InstructBLIP authors (LAVIS issue #326);
#: the others follow the paper's appendix table of zero-shot instructions as we read it, and are
#: kept here in one place to be checked against it.
INSTRUCTBLIP_PROMPTS: Dict[str, str] = {
    "caption": "A short image description:",
    "vqa": "Question: {question} Short answer:",
    "textvqa": "OCR tokens: {ocr_tokens}. Question: {question} Short answer:",
    "iconqa": "Question: {question} Options: {options_lettered}. Short answer:",
    "scienceqa": "Context: {context} Question: {question} Options: {options_lettered}. Answer:",
    "scienceqa-no-context": "Question: {question} Options: {options_lettered}. Answer:",
    "hatefulmemes": 'This is an image with: "{text}" written on it. Is it hateful? Answer:',
    "vsr": 'Based on the image, is this statement true or false? "{caption}" Answer:',
    "visdial": "Dialog history: {history}\n Question: {question} Short answer:",
}


def lettered(options: Sequence[str]) -> str:
    """``"(a) x (b) y (c) z"``: options lettered as InstructBLIP writes them for ScienceQA."""
    return " ".join(f"({chr(ord('a') + i)}) {o}" for i, o in enumerate(options))


def check_args(fmt: str, path: Any, missing: str) -> str:
    """Validate the common arguments; returns ``path`` as str. Raises ``ValueError`` for a bad
    ``missing`` and ``FileNotFoundError`` naming the format when ``path`` is absent."""
    if missing not in ("skip", "error"):
        raise ValueError(f"missing must be 'skip' or 'error', got {missing!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{fmt} annotation file not found: {path}")
    return path


def load_json(path: str) -> Any:
    """The JSON document in ``path``. Raises ``ValueError`` naming the file in one line: malformed
    JSON (line, column), nested too deep, not UTF-8
    (:func:`mmit.data.record_io.load_json_document`)."""
    return load_json_document(path)


def iter_jsonl(path: str) -> Iterator[Tuple[int, Any, int]]:
    """``(index, record, line)`` per non-blank line; ``ValueError`` names file and line (malformed
    JSON, a file that is not UTF-8). A line that cannot be read (not UTF-8, nested too deep) is a
    :class:`~mmit.data.record_io.BadRecord`, counted by :func:`run` under its reason."""
    for index, record, line in iter_json_records(path):
        yield index, record, line if line is not None else index + 1


def media_item(kind: str, rel: str, media_root: str, where: str, load_bytes: bool) -> Media:
    """A :class:`Media` for ``media_root/rel`` (an absolute ``rel`` as written), confined to
    ``media_root`` and checked, or read with ``load_bytes``, by
    :func:`~mmit.data.media_resolve.attach_media` (``media_root`` from :func:`default_root`
    carries the reader's ``allow_absolute`` and size caps). Raises ``SampleError`` naming
    ``where``: ``invalid-record`` (no file name), ``missing-media``, ``media-outside-root``,
    ``media-too-large``, ``undecodable-image`` / ``undecodable-video`` (content of another
    kind; videos are probed with PyAV even without ``load_bytes``)."""
    if not isinstance(rel, str) or not rel.strip():
        raise SampleError(f"{where}: no {kind} file name in the record", "invalid-record")
    path = rel if os.path.isabs(rel) else os.path.join(media_root, rel)
    m = Media(kind=kind, path=path, meta={"original_path": rel})
    return attach_media(m, where, media_root, load_bytes, written=rel)


def eval_sample(sid: str, prompt: str, answer: str, media: List[Media], *, task: str, source: str,
                where: str, options: Optional[List[str]] = None, label: Optional[str] = None,
                answers: Optional[List[str]] = None, fields: Optional[Dict[str, Any]] = None,
                **extra: Any) -> Sample:
    """Build a sample following the eval sample convention (module docstring) and validate it.

    ``extra`` keys go into ``meta`` as they are (e.g. ``question_id``, ``image_id``).
    """
    head = "".join(f"{MEDIA_PLACEHOLDERS[m.kind]}\n" for m in media)
    meta: Dict[str, Any] = dict(extra)
    if options is not None:
        meta["options"] = list(options)
    if label is not None:
        meta["label"] = label
    if answers is not None:
        meta["answers"] = list(answers)
    meta["fields"] = dict(fields or {})
    sample = Sample(id=str(sid), turns=[Turn("user", head + prompt), Turn("assistant", answer)],
                    media=media, task=task, source=source, meta=meta)
    try:
        return sample.validate()
    except SampleError as e:
        raise SampleError(f"{where}: {e}", e.reason) from None


def run(records: Iterable[Tuple[Any, Any, str]], convert: Callable[[Any, str, Any], Sample],
        missing: str, stats: Optional[SkipCounter]) -> Iterator[Sample]:
    """Apply ``convert(record, where, record_id)`` to ``(record_id, record, where)`` triples,
    yielding samples and handling ``SampleError`` with the ``missing`` policy (count in ``stats``
    under the error's reason, or raise). A :class:`~mmit.data.record_io.BadRecord` fails with its
    reason; a sample whose id an earlier one had fails as ``duplicate-id`` (the first is kept)."""
    counter = stats if stats is not None else SkipCounter()
    ids = IdSet()
    for rid, record, where in records:
        try:
            if isinstance(record, BadRecord):
                raise record.error(where)
            sample = convert(record, where, rid)
            ids.check(sample.id, where)
        except SampleError as e:
            if missing == "error":
                raise
            counter.add(e.reason, rid, str(e))
            continue
        yield sample


def need(record: Any, keys: Sequence[str], where: str) -> None:
    """Raise ``SampleError`` ``invalid-record`` unless ``record`` is an object with ``keys``."""
    if not isinstance(record, dict):
        raise SampleError(f"{where}: record is not a JSON object ({type(record).__name__})",
                          "invalid-record")
    absent = [k for k in keys if record.get(k) is None]
    if absent:
        raise SampleError(f"{where}: missing field(s) {', '.join(absent)}", "invalid-record")


def majority_answer(answers: Sequence[str]) -> str:
    """The most frequent answer (first seen wins ties): the reference text of VQA-style samples."""
    counts: Dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=lambda a: counts[a])  # dicts keep first-seen order; max keeps first


def vqa_sample(sid: str, question: Any, answers: List[str], media: List[Media], *, task: str,
               source: str, where: str, prompt_key: str = "vqa",
               fields: Optional[Dict[str, Any]] = None, **extra: Any) -> Sample:
    """An open-ended VQA eval sample: InstructBLIP's ``Question: {question} Short answer:`` prompt,
    the majority answer as reference, every human answer in ``meta["answers"]``. Raises
    ``SampleError`` ``invalid-record`` for an empty question and ``no-answer`` without answers."""
    q = str(question or "").strip()
    if not q:
        raise SampleError(f"{where}: empty question", "invalid-record")
    if not answers:
        raise SampleError(f"{where}: no answers (unlabelled test split?)", "no-answer")
    fields = {"question": q, **(fields or {})}
    return eval_sample(sid, INSTRUCTBLIP_PROMPTS[prompt_key].format(**fields),
                       majority_answer(answers), media, task=task, source=source, where=where,
                       answers=answers, fields=fields, **extra)


def default_root(path: str, media_root: Any, allow_absolute: bool = False,
                 max_media_bytes: Optional[Dict[str, int]] = None) -> MediaRoot:
    """``media_root`` (default: the annotation file's folder) as a
    :class:`~mmit.data.media_resolve.MediaRoot` with the reader's media policy:
    ``allow_absolute`` (media outside the root accepted) and ``max_media_bytes`` (per-kind size
    caps). Raises ``ValueError`` for a bad cap."""
    root = os.fspath(media_root) if media_root is not None else os.path.dirname(
        os.path.abspath(path))
    return MediaRoot(root, allow_absolute, max_media_bytes)
