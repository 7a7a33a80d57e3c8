"""VQA v2 reader (format ``heldout-vqav2``): Goyal et al., arXiv 1612.00837. Held-in for
InstructBLIP, but its questions + annotations pair is the layout of many VQA-style eval sets
(OK-VQA uses the same files), so it is read here with the same eval sample convention.

Files: the questions file (``path``) and the annotations file (``annotations``; default: the
questions file name with ``OpenEnded_`` removed and ``questions`` -> ``annotations``, e.g.
``v2_OpenEnded_mscoco_val2014_questions.json`` -> ``v2_mscoco_val2014_annotations.json``)::

    {"data_subtype": "val2014", "questions": [{"image_id": 262148, "question": "Where is he
     looking?", "question_id": 262148000}, ...]}
    {"annotations": [{"question_id": 262148000, "image_id": 262148, "answers": [{"answer":
     "down", "answer_confidence": "yes", "answer_id": 1}, ... x10], "multiple_choice_answer":
     "down", "answer_type": "other", "question_type": "where is"}, ...]}

Images: ``media_root/COCO_<data_subtype>_<image_id:012d>.jpg`` (``image_pattern`` overrides;
default root: the questions file's folder). Sample: ``Question: {question} Short answer:``, answer
turn = ``multiple_choice_answer`` (else the most frequent answer), ``meta["answers"]`` = the 10
answers; ``meta`` keeps ``answer_type`` / ``question_type``. Questions without an annotation (test
splits) are counted as ``no-answer`` skips. Ids: ``question_id``.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterator, Optional

from mmit.data.normalize import scalar_id
from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (check_args, default_root, load_json, media_item,
                                              need, run, vqa_sample)
from mmit.data.stats import SkipCounter


def default_annotations(path: str) -> str:
    """The annotations file VQA ships beside a questions file (see module docstring)."""
    folder, name = os.path.split(path)
    name = re.sub(r"OpenEnded_|MultipleChoice_", "", name).replace("questions", "annotations")
    return os.path.join(folder, name)


def read_vqav2(path, media_root=None, missing: str = "skip", stats: Optional[SkipCounter] = None,
               load_bytes: bool = False, *, allow_absolute: bool = False,
               max_media_bytes: Optional[Dict[str, int]] = None, annotations=None,
               image_pattern: str = "COCO_{data_subtype}_{image_id:012d}.jpg"
               ) -> Iterator[Sample]:
    """Read VQA v2 questions with their annotations as eval samples (see module docstring).

    Raises ``FileNotFoundError`` (either file absent), ``ValueError`` (malformed JSON or layout),
    ``SampleError`` under ``missing="error"``.
    """
    path = check_args("heldout-vqav2", path, missing)
    ann_path = os.fspath(annotations) if annotations is not None else default_annotations(path)
    if not os.path.isfile(ann_path):
        raise FileNotFoundError(f"heldout-vqav2 annotations file not found: {ann_path} (pass "
                                f"annotations=...)")
    root = default_root(path, media_root, allow_absolute, max_media_bytes)
    qs, anns = load_json(path), load_json(ann_path)
    if not isinstance(qs, dict) or not isinstance(qs.get("questions"), list):
        raise ValueError(f"{path}: expected an object with a 'questions' list")
    if not isinstance(anns, dict) or not isinstance(anns.get("annotations"), list):
        raise ValueError(f"{ann_path}: expected an object with an 'annotations' list")
    # ids that are lists or objects (a broken file) match no question
    by_qid = {a.get("question_id"): a for a in anns["annotations"]
              if isinstance(a, dict) and not isinstance(a.get("question_id"), (list, dict))}
    subtype = qs.get("data_subtype", "")

    def convert(q, where, qid) -> Sample:
        need(q, ("question_id", "image_id", "question"), where)
        qid = q["question_id"]
        ann = (None if isinstance(qid, (list, dict)) else by_qid.get(qid)) or {}
        if not isinstance(ann.get("answers") or [], list):
            raise SampleError(f"{where}: the annotation's answers must be a list", "invalid-record")
        answers = [a.get("answer") if isinstance(a, dict) else a
                   for a in ann.get("answers") or []]
        if not all(isinstance(a, str) for a in answers):
            raise SampleError(f"{where}: bad answers in the annotation", "invalid-record")
        try:
            rel = image_pattern.format(data_subtype=subtype, image_id=q["image_id"])
        except (ValueError, TypeError, KeyError) as e:
            raise SampleError(f"{where}: cannot name the image of {q['image_id']!r}: {e}",
                              "invalid-record") from None
        media = [media_item("image", rel, root, where, load_bytes)]
        sid = scalar_id(q["question_id"], where)  # an object id is bad-id
        sample = vqa_sample(sid, q["question"], answers, media, task="vqav2",
                            source="heldout-vqav2", where=where, image_id=q["image_id"],
                            answer_type=ann.get("answer_type"),
                            question_type=ann.get("question_type"))
        mc = ann.get("multiple_choice_answer")
        if isinstance(mc, str) and mc:
            sample.turns[1].content = mc
        return sample

    return run(((q.get("question_id", i) if isinstance(q, dict) else i, q,
                 f"{path}: question {i}") for i, q in enumerate(qs["questions"])), convert,
               missing, stats)


FORMATS.register("heldout-vqav2", read_vqav2)
