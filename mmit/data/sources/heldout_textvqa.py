"""TextVQA reader (format ``heldout-textvqa``): Singh et al., arXiv 1904.08920; an InstructBLIP
held-out set (val, VQA accuracy, open-ended generation).

File: ``TextVQA_0.5.1_val.json``::

    {"dataset_name": "textvqa", "data": [{"question": "what is the brand of phone?",
      "image_id": "0054c91397f2fe05", "question_id": 0, "answers": ["nokia", ... x10],
      "image_classes": [...], "set_name": "val", ...}, ...]}

Images: ``media_root/<image_id>.jpg`` (the val questions use the ``train_images`` folder: point
``media_root`` there; default: the annotation folder). Prompt: InstructBLIP's
``OCR tokens: {ocr_tokens}. Question: {question} Short answer:`` when the record carries
``ocr_tokens`` (a list, joined with ", "), else ``Question: {question} Short answer:``. Answer
turn = the most frequent answer, ``meta["answers"]`` = all 10. Ids: ``question_id``.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional

from mmit.data.normalize import scalar_id
from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (check_args, default_root, load_json, media_item,
                                              need, run, vqa_sample)
from mmit.data.stats import SkipCounter


def read_textvqa(path, media_root=None, missing: str = "skip", stats: Optional[SkipCounter] = None,
                 load_bytes: bool = False, *, allow_absolute: bool = False,
                 max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read a TextVQA annotation file as eval samples (see module docstring). Raises
    ``FileNotFoundError``, ``ValueError`` (malformed JSON, no ``data`` list), ``SampleError``
    under ``missing="error"``."""
    path = check_args("heldout-textvqa", path, missing)
    root = default_root(path, media_root, allow_absolute, max_media_bytes)
    top = load_json(path)
    data = top.get("data") if isinstance(top, dict) else None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected an object with a 'data' list (TextVQA 0.5.1 layout)")

    def convert(rec, where, index) -> Sample:
        need(rec, ("image_id", "question"), where)
        answers = rec.get("answers") or []
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise SampleError(f"{where}: answers must be strings, got {answers!r}",
                              "invalid-record")
        media = [media_item("image", f"{rec['image_id']}.jpg", root, where, load_bytes)]
        ocr = rec.get("ocr_tokens")
        extra = {}
        if isinstance(ocr, list):
            extra = {"prompt_key": "textvqa", "fields": {"ocr_tokens": ", ".join(map(str, ocr))}}
        sid = scalar_id(rec.get("question_id", index), where)  # an object id is bad-id
        return vqa_sample(sid, rec["question"], list(answers), media, task="textvqa",
                          source="heldout-textvqa", where=where, image_id=rec["image_id"],
                          **extra)

    return run(((r.get("question_id", i) if isinstance(r, dict) else i, r, f"{path}: record {i}")
                for i, r in enumerate(data)), convert, missing, stats)


FORMATS.register("heldout-textvqa", read_textvqa)
