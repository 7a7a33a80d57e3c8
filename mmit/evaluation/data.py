"""Eval samples -> prompts: read a task's samples and render each with every instruction template.

Eval sample convention (what ``heldout-*`` readers and the procedural suite write): ``turns`` is
``[user "<image>\\n" + question, assistant reference]``; ``meta["answers"]`` holds all references
(e.g. VQA's 10 answers; default: the assistant turn), ``meta["options"]`` the candidate answers of
a ``rank`` task, ``meta["label"]`` the gold option, and ``meta["fields"]`` named prompt fields that
the task's templates (Python format strings) are rendered with.

Fields available to a template: ``meta["fields"]`` plus, unless the sample defines them,
``question`` (the stored user turn without its media placeholders), ``options``
(``"a, b, c"``) and ``lettered_options`` (``"(a) a (b) b (c) c"``, InstructBLIP's ScienceQA style).

Media: :func:`load_items` decodes each sample's media with ``decode`` (the runner passes the model's
``processor.decode_media``, so a video is decoded as the family reads video, e.g. InstructBLIP's
``num_frames`` frames; default :func:`decode_images`, images only). A sample whose media the family
cannot read is a counted skip by reason (``unsupported-media``, ``undecodable-video``,
``no-audio-track``, ``missing-media``, ...), never a crash under ``missing_media: skip``.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from mmit.constants import MEDIA_PLACEHOLDERS
from mmit.data.media import decode_image, read_media_bytes
from mmit.data.sample import Sample, SampleError, Turn
from mmit.data.stats import SkipCounter
from mmit.evaluation.config import EvalDataConfig, TaskConfig


@dataclass
class EvalItem:
    """One prompt to score: a sample rendered with one template.

    ``turns`` ends with the user turn (the prompt); ``template`` is the template index (0 when the
    task has none and the stored user turn is used); ``images`` holds the sample's decoded media in
    media (placeholder) order, as ``processor.decode_media`` returns them: RGB PIL images,
    :class:`~mmit.data.video.DecodedVideo` (videos), 1-D float32 waveform tensors (audio); the name is
    kept from when eval read images only. ``reference`` str or list[str]; ``candidates`` list[str]
    for ``rank``.
    ``shots``: in-context demonstrations in ``turns`` (user/assistant exchanges before the query,
    their images first in ``images``); ``demonstrations`` their sample ids, in prompt order
    (:mod:`mmit.evaluation.incontext`).
    """

    task: str
    sample_id: str
    template: int
    turns: List[Turn]
    images: List[Any] = field(default_factory=list)
    reference: Any = ""
    candidates: Optional[List[str]] = None
    label: Any = None
    shots: int = 0
    demonstrations: List[str] = field(default_factory=list)

    @property
    def prompt(self) -> str:
        """The text of the last user turn (what the templates render)."""
        return self.turns[-1].content


def iter_data_samples(d: EvalDataConfig, stats: SkipCounter, where: str, key: str = "data") -> Iterator[Sample]:
    """The samples of data section ``d`` in stored order (shards unshuffled, or a registered source
    reader). Raises ``FileNotFoundError`` naming ``where`` and ``key`` for a missing annotation file."""
    if d.format == "shards":
        from mmit.data.shards import iter_shards

        return iter_shards(d.path, shuffle_buffer=0, split_by_node=False, split_by_worker=False)
    from mmit.data.sources import get_reader

    if not os.path.exists(d.path):
        raise FileNotFoundError(f"{where}: {key}.path not found: {d.path}")
    reader = get_reader(d.format)
    return reader(d.path, media_root=d.media_root, missing=d.missing_media, stats=stats,
                  allow_absolute=d.allow_absolute_media)


def iter_task_samples(task: TaskConfig, stats: SkipCounter, path: str = "") -> Iterator[Sample]:
    """The task's samples in stored order (shards unshuffled, or a registered source reader)."""
    return iter_data_samples(task.data, stats, path or task.name)


def prompt_fields(sample: Sample, user: str) -> Dict[str, Any]:
    """The fields a template is rendered with (module docstring)."""
    question = user
    for ph in MEDIA_PLACEHOLDERS.values():
        question = question.replace(ph, "")
    fields: Dict[str, Any] = {"question": question.strip()}
    options = sample.meta.get("options")
    if options:
        fields["options"] = ", ".join(str(o) for o in options)
        fields["lettered_options"] = " ".join(f"({string.ascii_lowercase[i % 26]}) {o}"
                                              for i, o in enumerate(options))
    fields.update(sample.meta.get("fields") or {})
    return fields


def render_template(template: str, fields: Dict[str, Any], n_images: Union[int, Dict[str, int]], where: str) -> str:
    """``template.format(**fields)``, with ``<image>\\n`` put first for each image it lacks.

    ``n_images``: the number of images, or a dict kind -> count (``{"video": 1}``): each kind's
    missing placeholders are put first, in :data:`~mmit.constants.MEDIA_PLACEHOLDERS` order.
    Raises ``ValueError`` naming ``where`` and the known fields for a missing field."""
    try:
        text = template.format(**fields)
    except KeyError as e:
        raise ValueError(f"{where}: template {template!r} uses field {e.args[0]!r}, the sample has "
                         f"{sorted(fields)}") from None
    counts = {"image": n_images} if isinstance(n_images, int) else n_images
    head = ""
    for kind, ph in MEDIA_PLACEHOLDERS.items():
        missing = int(counts.get(kind, 0)) - text.count(ph)
        if missing > 0:
            head += f"{ph}\n" * missing
    return head + text


def source_template_prompts(sample: Sample) -> List[str]:
    """The user turn of ``sample`` rendered with each instruction template of its task, as its
    reader defines them (``multiinstruct``: :func:`mmit.data.sources.multiinstruct.rerender`)."""
    from mmit.data.sources.multiinstruct import instruction_templates, rerender

    try:
        n = len(instruction_templates(sample.task))
        return [next(u.content for u in rerender(sample, t).turns if u.role == "user") for t in range(n)]
    except (KeyError, ValueError) as e:
        raise SampleError(f"sample {sample.id!r}: cannot re-render task {sample.task!r} with its templates: {e}",
                          "template-error") from None


def decode_images(sample: Sample) -> List[Any]:
    """The sample's images, decoded to RGB PIL images in media order. Raises :class:`SampleError`
    (``unsupported-media``, ``missing-media``, or the decoder's reason) naming the sample."""
    images = []
    for j, m in enumerate(sample.media):
        if m.kind != "image":
            raise SampleError(f"sample {sample.id!r}: media kind {m.kind!r} is not supported by eval",
                              "unsupported-media")
        try:
            data = m.data if m.data is not None else read_media_bytes(m.path)
        except OSError as e:
            raise SampleError(f"sample {sample.id!r}: cannot read {m.path}: {e}", "missing-media") from None
        images.append(decode_image(data, f"sample {sample.id!r} ({m.path or f'media {j}'})"))
    return images


def split_answer(sample: Sample) -> Tuple[List[Turn], Any]:
    """``(turns up to the final user turn, reference)``: a final assistant turn is the reference
    unless ``meta["answers"]`` gives them (a list). Raises :class:`SampleError` (``no-prompt``)."""
    turns = list(sample.turns)
    answers = sample.meta.get("answers")
    if turns[-1].role == "assistant":
        reference = answers if answers else turns[-1].content
        turns = turns[:-1]
    else:
        reference = answers if answers else ""
    if not turns or turns[-1].role != "user":
        raise SampleError(f"sample {sample.id!r}: no user turn to prompt with", "no-prompt")
    if isinstance(reference, (list, tuple)):
        reference = [str(r) for r in reference]
    return turns, reference


def prompt_texts(task: TaskConfig, sample: Sample, turns: List[Turn], where: str) -> List[str]:
    """The final user turn of ``turns`` rendered with each of the task's templates (the stored turn
    when there are none; the reader's own with ``source_templates``), template order."""
    user = turns[-1].content
    if task.source_templates:
        return source_template_prompts(sample)
    fields = prompt_fields(sample, user) if task.templates else {}
    counts = {kind: user.count(ph) for kind, ph in MEDIA_PLACEHOLDERS.items()}
    return [user if tpl is None else render_template(tpl, fields, counts, f"{where} sample {sample.id!r}")
            for tpl in (task.templates or [None])]


#: ``sample -> decoded media list`` (a processor's ``decode_media``; :func:`decode_images`).
Decoder = Callable[[Sample], List[Any]]


def sample_items(task: TaskConfig, sample: Sample, where: str, decode: Optional[Decoder] = None) -> List[EvalItem]:
    """All :class:`EvalItem` of one sample (one per template), its media decoded once by ``decode``
    (default :func:`decode_images`) and shared by the items. Raises :class:`SampleError`."""
    sample.validate()
    turns, reference = split_answer(sample)
    if task.output == "rank":
        candidates = list(task.rank.candidates) or [str(o) for o in sample.meta.get("options") or []]
        if not candidates:
            raise SampleError(f"sample {sample.id!r}: task {task.name!r} ranks candidates but neither "
                              "rank.candidates nor meta['options'] gives any", "no-candidates")
    else:
        candidates = None
    images = (decode or decode_images)(sample)
    texts = prompt_texts(task, sample, turns, where)
    return [EvalItem(task=task.name, sample_id=str(sample.id), template=t, turns=turns[:-1] + [Turn("user", text)],
                     images=images, reference=reference, candidates=candidates, label=sample.meta.get("label"))
            for t, text in enumerate(texts)]


def load_items(task: TaskConfig, max_samples: Optional[int] = None, where: str = "",
               decode: Optional[Decoder] = None) -> Tuple[List[EvalItem], int, SkipCounter]:
    """Read up to ``max_samples`` samples of ``task`` and render them.

    ``decode``: ``sample -> list`` of decoded media (module docstring; the runner passes
    ``processor.decode_media``); default :func:`decode_images` (images only).

    Returns ``(items, samples used, skips)``: items are grouped by sample, templates in order.
    Unusable samples (bad records, media the decoder cannot read: ``unsupported-media``,
    ``undecodable-video``, ``no-audio-track``, ...) are counted in ``skips`` by reason under
    ``data.missing_media: skip`` and raise under ``error``; samples read = samples used +
    ``skips.total`` (the reader's own skips included).
    """
    stats = SkipCounter()
    items: List[EvalItem] = []
    n = 0
    limit = max_samples
    it = iter_task_samples(task, stats, where)
    keep = set(task.data.tasks)
    for sample in it:
        if limit is not None and n >= limit:
            break
        if keep and sample.task not in keep:
            continue
        try:
            items.extend(sample_items(task, sample, where or task.name, decode))
            n += 1
        except SampleError as e:
            if task.data.missing_media == "error":
                raise
            stats.add(e.reason, sample.id, str(e))
    getattr(it, "close", lambda: None)()
    return items, n, stats


__all__ = ["EvalItem", "load_items", "sample_items", "prompt_fields", "render_template", "split_answer",
           "prompt_texts", "decode_images", "iter_data_samples"]
