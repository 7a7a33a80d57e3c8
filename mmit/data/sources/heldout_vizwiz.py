"""VizWiz-VQA reader (format ``heldout-vizwiz``): Gurari et al., arXiv 1802.08218; an InstructBLIP
held-out set (test-dev, VQA accuracy, open-ended generation).

File: ``val.json`` / ``train.json`` (``test.json`` has no answers), a JSON list::

    [{"image": "VizWiz_val_00000000.jpg", "question": "Ask what is this?",
      "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}, ... x10],
      "answer_type": "unanswerable", "answerable": 0}, ...]

Images: ``media_root/<image>`` (default: the annotation folder). Sample: prompt
``Question: {question} Short answer:``, answer turn = the most frequent human answer,
``meta["answers"]`` = the 10 answers (for ``vqa-accuracy``), ``meta`` keeps ``answer_type`` and
``answerable``. Ids: the image stem. Records without answers are counted as ``no-answer`` skips.
"""

from __future__ import annotations

import os
from typing import Dict, Iterator, Optional

from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (check_args, default_root, load_json, media_item,
                                              need, run, vqa_sample)
from mmit.data.stats import SkipCounter


def read_vizwiz(path, media_root=None, missing: str = "skip", stats: Optional[SkipCounter] = None,
                load_bytes: bool = False, *, allow_absolute: bool = False,
                max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read a VizWiz-VQA annotation list as eval samples (see module docstring). Raises
    ``FileNotFoundError``, ``ValueError`` (malformed JSON / not a list), ``SampleError`` under
    ``missing="error"``."""
    path = check_args("heldout-vizwiz", path, missing)
    root = default_root(path, media_root, allow_absolute, max_media_bytes)
    data = load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of VizWiz records")

    def convert(rec, where, index) -> Sample:
        need(rec, ("image", "question"), where)
        answers = []
        if not isinstance(rec.get("answers") or [], list):
            raise SampleError(f"{where}: answers must be a list", "invalid-record")
        for a in rec.get("answers") or []:
            text = a.get("answer") if isinstance(a, dict) else a
            if not isinstance(text, str):
                raise SampleError(f"{where}: bad answer entry {a!r}", "invalid-record")
            answers.append(text)
        media = [media_item("image", rec["image"], root, where, load_bytes)]
        sid = os.path.splitext(os.path.basename(rec["image"]))[0]
        return vqa_sample(sid, rec["question"], answers, media, task="vizwiz",
                          source="heldout-vizwiz", where=where,
                          answer_type=rec.get("answer_type"), answerable=rec.get("answerable"))

    return run(((i, r, f"{path}: record {i}") for i, r in enumerate(data)), convert, missing,
               stats)


FORMATS.register("heldout-vizwiz", read_vizwiz)
