"""Visual Dialog reader (format ``heldout-visdial``): Das et al., arXiv 1611.08669; an InstructBLIP
held-out set (val, MRR over 100 candidate answers, answer ranking).

File: ``visdial_1.0_val.json``; questions and answers are stored once and referenced by index::

    {"version": "1.0", "split": "val2018",
     "data": {"questions": ["is the photo in color", ...], "answers": ["yes", ...],
              "dialogs": [{"image_id": 185565, "caption": "a man riding a wave on a surfboard",
                           "dialog": [{"question": 23, "answer": 112, "answer_options": [100 ints],
                                       "gt_index": 41}, ... 10 rounds]}]}}

One sample per dialog round (records in = rounds): prompt
``Dialog history: {history}\\n Question: {question} Short answer:`` where ``history`` is the caption
followed by the earlier rounds, ``"{caption}. {q1}? {a1}. {q2}? {a2}."`` (questions get their
``?``, stored without); ``options`` = the round's 100 answer options, ``label`` and answer turn =
the gold option (``gt_index``); ``meta`` keeps ``image_id`` and ``round`` (1-based).
Rounds without ``gt_index`` (test split) are counted as ``no-label`` skips. Images:
``media_root/`` + ``image_pattern`` (default ``VisualDialog_{split}_{image_id:012d}.jpg`` with the
file's ``split``, e.g. ``val2018``). Ids: ``"<image_id>-<round>"``.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional

from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (INSTRUCTBLIP_PROMPTS, check_args, default_root,
                                              eval_sample, load_json, media_item, run)
from mmit.data.stats import SkipCounter


def _q(text: str) -> str:
    text = text.strip()
    return text if text.endswith("?") else text + "?"


def read_visdial(path, media_root=None, missing: str = "skip", stats: Optional[SkipCounter] = None,
                 load_bytes: bool = False, *, allow_absolute: bool = False,
                 max_media_bytes: Optional[Dict[str, int]] = None,
                 image_pattern: str = "VisualDialog_{split}_{image_id:012d}.jpg"
                 ) -> Iterator[Sample]:
    """Read a VisDial 1.0 file as one eval sample per dialog round (see module docstring).

    Raises ``FileNotFoundError``, ``ValueError`` (malformed JSON or layout), ``SampleError`` under
    ``missing="error"`` (``invalid-record``: an index out of range; ``no-label``;
    ``missing-media``).
    """
    path = check_args("heldout-visdial", path, missing)
    root = default_root(path, media_root, allow_absolute, max_media_bytes)
    top = load_json(path)
    data = top.get("data") if isinstance(top, dict) else None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("questions", "answers", "dialogs")):
        raise ValueError(f"{path}: expected {{'data': {{'questions', 'answers', 'dialogs'}}}} "
                         f"(VisDial 1.0 layout)")
    questions, answers, split = data["questions"], data["answers"], top.get("split", "val2018")

    def text(table, idx, where, what):
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(table):
            raise SampleError(f"{where}: {what} index {idx!r} out of range", "invalid-record")
        return str(table[idx]).strip()

    def convert(item, where, rid) -> Sample:
        dialog, r = item
        rnd = dialog["dialog"][r]
        if not isinstance(rnd, dict) or "question" not in rnd:
            raise SampleError(f"{where}: round is not an object with a question", "invalid-record")
        if rnd.get("gt_index") is None or not rnd.get("answer_options"):
            raise SampleError(f"{where}: no gt_index / answer_options (test split?)", "no-label")
        if not isinstance(rnd["answer_options"], list):
            raise SampleError(f"{where}: answer_options must be a list of answer indices",
                              "invalid-record")
        opts = [text(answers, a, where, "answer option") for a in rnd["answer_options"]]
        gt = rnd["gt_index"]
        if isinstance(gt, bool) or not isinstance(gt, int) or not 0 <= gt < len(opts):
            raise SampleError(f"{where}: gt_index {gt!r} out of range", "invalid-record")
        history = [str(dialog.get("caption", "")).strip().rstrip(".") + "."]
        for k, prev in enumerate(dialog["dialog"][:r]):
            if not isinstance(prev, dict):
                raise SampleError(f"{where}: round {k + 1} of the history is not an object",
                                  "invalid-record")
            history.append(f"{_q(text(questions, prev.get('question'), where, 'question'))} "
                           f"{text(answers, prev.get('answer'), where, 'answer')}.")
        fields = {"history": " ".join(history),
                  "question": _q(text(questions, rnd["question"], where, "question"))}
        image_id = dialog.get("image_id")
        try:
            rel = image_pattern.format(split=split, image_id=image_id)
        except (ValueError, TypeError, KeyError) as e:
            raise SampleError(f"{where}: cannot name the image of image_id {image_id!r}: {e}",
                              "invalid-record") from None
        media = [media_item("image", rel, root, where, load_bytes)]
        return eval_sample(f"{image_id}-{r + 1}", INSTRUCTBLIP_PROMPTS["visdial"].format(**fields),
                           opts[gt], media, task="visdial", source="heldout-visdial",
                           where=where, options=opts, label=opts[gt], fields=fields,
                           image_id=image_id, round=r + 1)

    def records():
        for d, dialog in enumerate(data["dialogs"]):
            if not isinstance(dialog, dict) or not isinstance(dialog.get("dialog"), list):
                yield d, None, f"{path}: dialog {d}"
                continue
            for r in range(len(dialog["dialog"])):
                yield f"{dialog.get('image_id')}-{r + 1}", (dialog, r), \
                    f"{path}: dialog {d} (image_id {dialog.get('image_id')!r}) round {r + 1}"

    def convert_or_bad(item, where, rid):
        if item is None:
            raise SampleError(f"{where}: dialog is not an object with a 'dialog' list",
                              "invalid-record")
        return convert(item, where, rid)

    return run(records(), convert_or_bad, missing, stats)


FORMATS.register("heldout-visdial", read_visdial)
