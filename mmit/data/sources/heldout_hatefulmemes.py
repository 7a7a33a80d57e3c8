"""Hateful Memes reader (format ``heldout-hatefulmemes``): Kiela et al., arXiv 2005.04790; an
InstructBLIP held-out set (dev/val, ROC-AUC, answer ranking over yes/no).

Files: ``train.jsonl``, ``dev_seen.jsonl``, ``dev_unseen.jsonl``, ``test_seen.jsonl``, ... plus
``img/``; one object per line::

    {"id": 42953, "img": "img/42953.png", "label": 0,
     "text": "its their character not their color that matters"}

``label`` is 1 for hateful (some re-hosts write "0"/"1" strings: accepted); test files have none
(counted as ``no-label`` skips). Images: ``media_root/<img>`` (default: the annotation folder,
where ``img/`` sits). Sample: prompt ``This is an image with: "{text}" written on it. Is it
hateful? Answer:``, ``options = ["no", "yes"]``, ``label`` / answer ``"yes"`` (hateful) or
``"no"``; score with ``roc-auc`` (positive ``"yes"``). Ids: the meme id as a string.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional

from mmit.data.normalize import scalar_id
from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (INSTRUCTBLIP_PROMPTS, check_args, default_root,
                                              eval_sample, iter_jsonl, media_item, need, run)
from mmit.data.stats import SkipCounter

OPTIONS = ["no", "yes"]


def read_hatefulmemes(path, media_root=None, missing: str = "skip",
                      stats: Optional[SkipCounter] = None,
                      load_bytes: bool = False, *, allow_absolute: bool = False,
                      max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read a Hateful Memes jsonl file as eval samples (see module docstring). Raises
    ``FileNotFoundError``, ``ValueError`` (malformed JSON, naming the line), ``SampleError``
    under ``missing="error"`` (``invalid-record``, ``no-label``, ``missing-media``)."""
    path = check_args("heldout-hatefulmemes", path, missing)
    root = default_root(path, media_root, allow_absolute, max_media_bytes)

    def convert(rec, where, rid) -> Sample:
        need(rec, ("id", "img", "text"), where)
        label = rec.get("label")
        if label is None:
            raise SampleError(f"{where}: no label (unlabelled test split)", "no-label")
        if isinstance(label, str) and label.strip() in ("0", "1"):
            label = int(label)
        if isinstance(label, bool) or label not in (0, 1):
            raise SampleError(f"{where}: label must be 0 or 1, got {label!r}", "invalid-record")
        media = [media_item("image", rec["img"], root, where, load_bytes)]
        fields = {"text": str(rec["text"]).strip()}
        gold = OPTIONS[label]
        sid = scalar_id(rec["id"], where)  # an object id is bad-id, not "{'a': 1}"
        return eval_sample(sid, INSTRUCTBLIP_PROMPTS["hatefulmemes"].format(**fields),
                           gold, media, task="hatefulmemes", source="heldout-hatefulmemes",
                           where=where, options=OPTIONS, label=gold, fields=fields)

    def records():
        for index, rec, line in iter_jsonl(path):
            rid = rec.get("id", index) if isinstance(rec, dict) else index
            yield rid, rec, f"{path}: line {line}"

    return run(records(), convert, missing, stats)


FORMATS.register("heldout-hatefulmemes", read_hatefulmemes)
