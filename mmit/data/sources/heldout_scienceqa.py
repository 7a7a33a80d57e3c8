"""ScienceQA reader (format ``heldout-scienceqa``): Lu et al., arXiv 2209.09513; InstructBLIP's
held-out ScienceQA-IMG (test split, questions with an image context, accuracy, answer ranking).

Files (lupantech/ScienceQA ``data/scienceqa/``): ``problems.json``, a dict problem id -> problem::

    {"4": {"question": "Which figure of speech is used in this text?", "choices": ["chiasmus",
           "apostrophe"], "answer": 1, "hint": "Sing, O goddess, ...", "image": "image.png",
           "task": "closed choice", "grade": "grade11", "subject": "language science",
           "topic": "figurative-language", "category": "...", "skill": "...", "lecture": "...",
           "solution": "...", "split": "test"}, ...}

and ``pid_splits.json`` ({"train": [ids], "val": [...], "test": [...], "minitest": ...}).
``answer`` is an index into ``choices``; ``image`` is null for text-only problems. Images live at
``images/<split>/<pid>/<image>`` (LLaVA's ``convert_sqa_to_llava.py`` layout); ``media_root``
defaults to the ``images`` folder beside ``problems.json``.

Sample (InstructBLIP's prompt, confirmed by its authors in LAVIS issue #326):
``Context: {hint} Question: {question} Options: (a) .. (b) ... Answer:``; the ``Context: ...``
part is left out when the hint is empty ("we include the textual context if exists").
``options`` = ``choices``, ``label`` and the answer turn = the gold choice text,
``fields = {question, context, options_lettered}``; ``meta`` keeps ``answer_index``,
``answer_letter`` (``"b"``), ``grade``, ``subject``, ``topic``, ``category``, ``skill``, ``split``
and the problem's ``task`` (``"closed choice"``, ...) as ``question_type``.
"""

from __future__ import annotations

import os
from typing import Dict, Iterator, Optional

from mmit.data.media_resolve import MediaRoot
from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (INSTRUCTBLIP_PROMPTS, check_args, eval_sample,
                                              lettered, load_json, media_item, need, run)
from mmit.data.stats import SkipCounter

_KEEP = ("grade", "subject", "topic", "category", "skill")


def read_scienceqa(path, media_root=None, missing: str = "skip",
                   stats: Optional[SkipCounter] = None, load_bytes: bool = False, *, allow_absolute: bool = False,
                   max_media_bytes: Optional[Dict[str, int]] = None,
                   split: Optional[str] = "test", splits_path=None,
                   image_only: bool = True) -> Iterator[Sample]:
    """Read ScienceQA problems of one split as eval samples (see module docstring).

    Args:
        path: ``problems.json``.
        split: which split to read (``test``, ``val``, ``minitest``, ...); None reads every problem
            in file order.
        splits_path: ``pid_splits.json``; default: beside ``problems.json``. Without that file the
            problems' own ``split`` field selects them.
        image_only: the IMG subset (InstructBLIP): text-only problems are counted as ``no-image``
            skips. False keeps them as text-only samples.

    Records in = the split's problem ids: each is yielded or counted under ``missing-problem`` (id
    listed in the split but absent from ``problems.json``), ``no-image``, ``invalid-record``
    (no question/choices, answer not an index into choices) or ``missing-media``.

    Raises:
        FileNotFoundError, ValueError (malformed JSON; ``split`` not in ``pid_splits.json``);
        ``SampleError`` under ``missing="error"``.
    """
    path = check_args("heldout-scienceqa", path, missing)
    problems = load_json(path)
    if not isinstance(problems, dict):
        raise ValueError(f"{path}: expected a JSON object mapping problem id -> problem")
    root = MediaRoot(os.fspath(media_root) if media_root is not None else os.path.join(
        os.path.dirname(os.path.abspath(path)), "images"), allow_absolute, max_media_bytes)
    if splits_path is None:
        cand = os.path.join(os.path.dirname(os.path.abspath(path)), "pid_splits.json")
        splits_path = cand if os.path.isfile(cand) else None
    if split is None:
        pids = list(problems)
    elif splits_path is not None:
        splits = load_json(os.fspath(splits_path))
        if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
            raise ValueError(f"{splits_path}: expected a JSON object mapping split name -> list "
                             f"of problem ids")
        if split not in splits:
            raise ValueError(f"{splits_path}: no split {split!r} (has: {', '.join(splits)})")
        pids = [str(p) for p in splits[split]]
    else:
        pids = [p for p, prob in problems.items() if isinstance(prob, dict)
                and prob.get("split") == split]

    def convert(prob, where, pid) -> Sample:
        if prob is None:
            raise SampleError(f"{where}: problem id listed in split {split!r} but absent from "
                              f"{path}", "missing-problem")
        need(prob, ("question", "choices", "answer"), where)
        choices = prob["choices"]
        ans = prob["answer"]
        if (not isinstance(choices, list) or not choices or isinstance(ans, bool)
                or not isinstance(ans, int) or not 0 <= ans < len(choices)):
            raise SampleError(f"{where}: answer {ans!r} is not an index into choices {choices!r}",
                              "invalid-record")
        choices = [str(c) for c in choices]
        image = prob.get("image")
        if not image and image_only:
            raise SampleError(f"{where}: text-only problem (image is null; IMG subset only)",
                              "no-image")
        psplit = prob.get("split") or split or ""
        if (image and not isinstance(image, str)) or not isinstance(psplit, str):
            raise SampleError(f"{where}: image {image!r} and split {psplit!r} must be strings",
                              "invalid-record")
        media = ([media_item("image", os.path.join(psplit, pid, image), root, where, load_bytes)]
                 if image else [])
        context = str(prob.get("hint") or "").strip()
        fields = {"question": str(prob["question"]).strip(), "context": context,
                  "options_lettered": lettered(choices)}
        key = "scienceqa" if context else "scienceqa-no-context"
        gold = choices[ans]
        return eval_sample(
            pid, INSTRUCTBLIP_PROMPTS[key].format(**fields), gold, media, task="scienceqa",
            source="heldout-scienceqa", where=where, options=choices, label=gold, fields=fields,
            answer_index=ans, answer_letter=chr(ord("a") + ans), split=psplit,
            question_type=prob.get("task"), **{k: prob[k] for k in _KEEP if k in prob})

    def records():
        for pid in pids:
            yield pid, problems.get(pid), f"{path}: problem {pid!r}"

    return run(records(), convert, missing, stats)


FORMATS.register("heldout-scienceqa", read_scienceqa)
