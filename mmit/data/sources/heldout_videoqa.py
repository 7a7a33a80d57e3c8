"""Video QA readers (formats ``heldout-msvd-qa`` and ``heldout-msrvtt-qa``): MSVD-QA and MSRVTT-QA
(Xu et al., ACM MM 2017), InstructBLIP held-out sets (test, top-1 accuracy, answer ranking over
the answer vocabulary).

Files, either layout:

* LAVIS ``qa_{train,val,test}.json``:
  ``[{"video": "vid1234.avi", "question": "what is a man doing?", "answer": "sing",
  "question_id": 0}, ...]``;
* the original release (xudejing/video-question-answering): ``[{"answer": "sing", "id": 0,
  "question": "...", "video_id": 7010}, ...]``, named through ``video_pattern``
  (MSRVTT default ``video{video_id}.mp4``; MSVD has no default: its files are YouTube ids listed
  in ``youtube_mapping.txt``, so pass e.g. ``video_pattern="{video_id}.avi"`` after renaming).

``answer_list``: optional path to the answer vocabulary (a JSON list, or LAVIS's
``train_ans2label.json`` dict answer -> index); it becomes every sample's ``options`` (one shared
list) for ranking. Sample: ``<video>\\nQuestion: {question} Short answer:``, answer turn and
``meta["answers"] = [answer]``. Videos: ``media_root`` (default: the annotation folder).
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional

from mmit.data.normalize import scalar_id
from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (INSTRUCTBLIP_PROMPTS, check_args, default_root,
                                              eval_sample, load_json, media_item, need, run)
from mmit.data.stats import SkipCounter


def load_answer_list(path) -> List[str]:
    """The answer vocabulary from a JSON list or an ``{answer: index}`` dict (sorted by index)."""
    data = load_json(str(path))
    if isinstance(data, dict):
        return [a for a, _ in sorted(data.items(), key=lambda kv: kv[1])]
    if isinstance(data, list) and all(isinstance(a, str) for a in data):
        return list(data)
    raise ValueError(f"{path}: expected a JSON list of answers or an answer -> index dict")


def _reader(fmt: str, task: str, default_pattern: Optional[str]):
    def read(path, media_root=None, missing: str = "skip", stats: Optional[SkipCounter] = None,
             load_bytes: bool = False, *, allow_absolute: bool = False,
             max_media_bytes: Optional[Dict[str, int]] = None, answer_list=None,
             video_pattern: Optional[str] = default_pattern) -> Iterator[Sample]:
        path = check_args(fmt, path, missing)
        root = default_root(path, media_root, allow_absolute, max_media_bytes)
        data = load_json(path)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of question records")
        options = load_answer_list(answer_list) if answer_list is not None else None

        def convert(rec, where, rid) -> Sample:
            need(rec, ("question", "answer"), where)
            video = rec.get("video")
            if video is None:
                if rec.get("video_id") is None or video_pattern is None:
                    raise SampleError(f"{where}: no 'video' file name (pass video_pattern to name "
                                      f"videos from 'video_id')", "invalid-record")
                video = video_pattern.format(video_id=rec["video_id"])
            media = [media_item("video", video, root, where, load_bytes)]
            fields = {"question": str(rec["question"]).strip()}
            answer = str(rec["answer"]).strip()
            sid = scalar_id(rec.get("question_id", rec.get("id", rid)), where)  # else bad-id
            return eval_sample(sid, INSTRUCTBLIP_PROMPTS["vqa"].format(**fields), answer, media,
                               task=task, source=fmt, where=where, options=options,
                               answers=[answer], fields=fields,
                               **({"label": answer} if options is not None else {}))

        return run(((i, r, f"{path}: record {i}") for i, r in enumerate(data)), convert, missing,
                   stats)

    read.__name__ = f"read_{task.replace('-', '_')}"
    read.__doc__ = (f"Read {task} questions as eval samples; see the module docstring. Raises "
                    f"FileNotFoundError, ValueError (malformed JSON / layout / answer list), "
                    f"SampleError under missing='error'.")
    return read


read_msvd_qa = _reader("heldout-msvd-qa", "msvd-qa", None)
read_msrvtt_qa = _reader("heldout-msrvtt-qa", "msrvtt-qa", "video{video_id}.mp4")
FORMATS.register("heldout-msvd-qa", read_msvd_qa)
FORMATS.register("heldout-msrvtt-qa", read_msrvtt_qa)
