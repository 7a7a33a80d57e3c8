"""VSR reader (format ``heldout-vsr``): Visual Spatial Reasoning, Liu et al., arXiv 2205.00363;
an InstructBLIP held-out set (test split, accuracy, answer ranking).

File: ``data/splits/{random,zeroshot}/{train,dev,test}.jsonl`` of cambridgeltl/visual-spatial-reasoning,
one object per line::

    {"image": "000000451431.jpg", "image_link": "http://images.cocodataset.org/train2017/...",
     "caption": "The person is inside the refrigerator.", "label": 1, "relation": "inside",
     "annotator_id": 29, "vote_true_validator_id": "[2, 9]", "vote_false_validator_id": "[3]", ...}

Images are COCO 2017 files named by ``image`` (train and val mixed in one folder: ``media_root``).
The validator id lists are strings holding list literals; they are parsed into lists of ints.

Sample: prompt ``Based on the image, is this statement true or false? "{caption}" Answer:``,
``options = ["false", "true"]`` (so ``label`` 0/1 indexes them), ``label`` / answer ``"true"`` or
``"false"``; ``meta`` keeps ``relation``, ``image_link`` and the parsed validator ids;
``fields = {caption, relation}``. Ids are ``"<image stem>-<line index>"``.
"""

from __future__ import annotations

import ast
import os
from typing import Any, Dict, Iterator, Optional

from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (INSTRUCTBLIP_PROMPTS, check_args, default_root,
                                              eval_sample, iter_jsonl, media_item, need, run)
from mmit.data.stats import SkipCounter

OPTIONS = ["false", "true"]


def _ids(value: Any, where: str, key: str) -> list:
    if isinstance(value, list):
        return value
    if value is None:
        return []
    try:
        parsed = ast.literal_eval(value) if isinstance(value, str) else None
    except (ValueError, SyntaxError):
        parsed = None
    if not isinstance(parsed, list):
        raise SampleError(f"{where}: {key} is not a list literal: {value!r}", "invalid-record")
    return parsed


def read_vsr(path, media_root=None, missing: str = "skip", stats: Optional[SkipCounter] = None,
             load_bytes: bool = False, *, allow_absolute: bool = False,
             max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read a VSR split file as eval samples (see module docstring).

    Raises ``FileNotFoundError`` (file absent), ``ValueError`` (malformed JSON, naming the line);
    per record ``SampleError`` under ``missing="error"`` (``invalid-record``: no caption/image or a
    label other than 0/1; ``missing-media``), else those records are counted in ``stats``.
    """
    path = check_args("heldout-vsr", path, missing)
    root = default_root(path, media_root, allow_absolute, max_media_bytes)

    def convert(rec, where, index) -> Sample:
        need(rec, ("image", "caption", "label"), where)
        label = rec["label"]
        if isinstance(label, str) and label.strip() in ("0", "1"):
            label = int(label)
        if isinstance(label, bool) or label not in (0, 1):
            raise SampleError(f"{where}: label must be 0 or 1, got {label!r}", "invalid-record")
        caption = str(rec["caption"]).strip()
        media = [media_item("image", rec["image"], root, where, load_bytes)]
        gold = OPTIONS[label]
        fields = {"caption": caption, "relation": rec.get("relation")}
        stem = os.path.splitext(os.path.basename(rec["image"]))[0]
        return eval_sample(
            f"{stem}-{index}", INSTRUCTBLIP_PROMPTS["vsr"].format(**fields), gold,
            media, task="vsr", source="heldout-vsr", where=where, options=OPTIONS, label=gold,
            fields=fields, relation=rec.get("relation"), image_link=rec.get("image_link"),
            vote_true_validator_id=_ids(rec.get("vote_true_validator_id"), where,
                                        "vote_true_validator_id"),
            vote_false_validator_id=_ids(rec.get("vote_false_validator_id"), where,
                                         "vote_false_validator_id"))

    def records():
        for index, rec, line in iter_jsonl(path):
            yield index, rec, f"{path}: line {line}: record {index}"

    return run(records(), convert, missing, stats)


FORMATS.register("heldout-vsr", read_vsr)
