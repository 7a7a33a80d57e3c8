"""GQA reader (format ``heldout-gqa``): Hudson & Manning, arXiv 1902.09506; an InstructBLIP
held-out set (test-dev balanced, accuracy, open-ended generation).

Files, either layout:

* original ``testdev_balanced_questions.json``: a dict question id -> ``{"question", "imageId",
  "answer", "fullAnswer", "types", "semantic", "isBalanced", ...}``; image ``<imageId>.jpg``;
* LAVIS's list ``[{"image": "n161313.jpg", "question": ..., "answer": ..., "question_id": ...}]``.

Images: ``media_root`` (GQA's ``images/`` folder; default: the annotation folder). Sample: prompt
``Question: {question} Short answer:``, answer turn and ``meta["answers"] = [answer]`` (one
answer: ``vqa-accuracy`` scores it as normalised exact match); ``meta`` keeps ``fullAnswer`` and
``types`` when present. Ids: the question id.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional

from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (check_args, default_root, load_json, media_item,
                                              need, run, vqa_sample)
from mmit.data.stats import SkipCounter


def read_gqa(path, media_root=None, missing: str = "skip", stats: Optional[SkipCounter] = None,
             load_bytes: bool = False, *, allow_absolute: bool = False,
             max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read GQA questions (original dict or LAVIS list) as eval samples (see module docstring).
    Raises ``FileNotFoundError``, ``ValueError`` (malformed JSON), ``SampleError`` under
    ``missing="error"``."""
    path = check_args("heldout-gqa", path, missing)
    root = default_root(path, media_root, allow_absolute, max_media_bytes)
    data = load_json(path)
    if isinstance(data, dict):
        items = [(str(qid), rec) for qid, rec in data.items()]
    elif isinstance(data, list):
        items = [(str(r.get("question_id", i)) if isinstance(r, dict) else str(i), r)
                 for i, r in enumerate(data)]
    else:
        raise ValueError(f"{path}: expected a dict of questions or a list of records")

    def convert(rec, where, qid) -> Sample:
        need(rec, ("question",), where)
        image = rec.get("image") or (f"{rec['imageId']}.jpg" if rec.get("imageId") else None)
        if image is None:
            raise SampleError(f"{where}: no 'imageId' / 'image'", "invalid-record")
        answer = rec.get("answer")
        answers = [str(answer)] if answer is not None else []
        media = [media_item("image", image, root, where, load_bytes)]
        extra = {k: rec[k] for k in ("fullAnswer", "types", "imageId") if k in rec}
        return vqa_sample(qid, rec["question"], answers, media, task="gqa",
                          source="heldout-gqa", where=where, **extra)

    return run(((qid, rec, f"{path}: question {qid!r}") for qid, rec in items), convert, missing,
               stats)


FORMATS.register("heldout-gqa", read_gqa)
