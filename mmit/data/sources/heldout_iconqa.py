"""IconQA reader (format ``heldout-iconqa``): Lu et al., arXiv 2110.13214; an InstructBLIP
held-out set (test, image-question multiple choice, accuracy, answer ranking).

File: a LAVIS-style annotation list, or a dict problem id -> problem (the original
``problems.json`` shape)::

    [{"image": "test/choose_txt/12/image.png", "question": "How many dots are there?",
      "choices": ["5", "7", "6"], "answer": 2, "question_id": "12", "ques_type": "choose_txt"}]

``answer`` is an index into ``choices`` (a choice string is accepted too). Without ``image`` the
path is ``<pid>/image.png``. Problems whose choices are image files (``choose_img``) are counted as
``image-choices`` skips (the protocol uses the image-question subset); fill-in-the-blank problems
(no ``choices``) become open-ended samples without ``options``. Sample: prompt
``Question: {question} Options: (a) .. (b) ... Short answer:``, ``options`` = choices, ``label``
and answer turn = the gold choice. Images: ``media_root`` (default: the annotation folder).
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional

from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (INSTRUCTBLIP_PROMPTS, check_args, default_root,
                                              eval_sample, lettered, load_json, media_item, need,
                                              run)
from mmit.data.stats import SkipCounter

_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def read_iconqa(path, media_root=None, missing: str = "skip", stats: Optional[SkipCounter] = None,
                load_bytes: bool = False, *, allow_absolute: bool = False,
                max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read IconQA problems as eval samples (see module docstring). Raises ``FileNotFoundError``,
    ``ValueError`` (malformed JSON / layout), ``SampleError`` under ``missing="error"``."""
    path = check_args("heldout-iconqa", path, missing)
    root = default_root(path, media_root, allow_absolute, max_media_bytes)
    data = load_json(path)
    if isinstance(data, dict):
        items = [(str(pid), rec) for pid, rec in data.items()]
    elif isinstance(data, list):
        items = [(str(r.get("question_id", r.get("instance_id", i))) if isinstance(r, dict)
                  else str(i), r) for i, r in enumerate(data)]
    else:
        raise ValueError(f"{path}: expected a list of records or a dict of problems")

    def convert(rec, where, pid) -> Sample:
        need(rec, ("question", "answer"), where)
        choices = rec.get("choices")
        answer = rec["answer"]
        image = rec.get("image") or f"{pid}/image.png"
        fields = {"question": str(rec["question"]).strip()}
        extra = {k: rec[k] for k in ("ques_type", "grade") if k in rec}
        if not choices:
            media = [media_item("image", image, root, where, load_bytes)]
            return eval_sample(pid, INSTRUCTBLIP_PROMPTS["vqa"].format(**fields), str(answer),
                               media, task="iconqa", source="heldout-iconqa", where=where,
                               fields=fields, answers=[str(answer)], **extra)
        if not isinstance(choices, list):
            raise SampleError(f"{where}: choices must be a list, got {type(choices).__name__}",
                              "invalid-record")
        choices = [str(c) for c in choices]
        if all(c.lower().endswith(_IMAGE_EXTS) for c in choices):
            raise SampleError(f"{where}: the choices are images ({choices[0]}, ...)",
                              "image-choices")
        if isinstance(answer, int) and not isinstance(answer, bool):
            if not 0 <= answer < len(choices):
                raise SampleError(f"{where}: answer {answer} is not an index into {choices!r}",
                                  "invalid-record")
            gold = choices[answer]
        elif str(answer) in choices:
            gold = str(answer)
        else:
            raise SampleError(f"{where}: answer {answer!r} is not among the choices {choices!r}",
                              "invalid-record")
        media = [media_item("image", image, root, where, load_bytes)]
        fields["options_lettered"] = lettered(choices)
        return eval_sample(pid, INSTRUCTBLIP_PROMPTS["iconqa"].format(**fields), gold, media,
                           task="iconqa", source="heldout-iconqa", where=where, options=choices,
                           label=gold, fields=fields, **extra)

    return run(((pid, rec, f"{path}: problem {pid!r}") for pid, rec in items), convert, missing,
               stats)


FORMATS.register("heldout-iconqa", read_iconqa)
