"""k-shot in-context evaluation: draw demonstrations for each eval sample and put them in its prompt.

As OpenFlamingo reports its benchmarks (arXiv 2308.01390, §3: k = 0, 4, 8, 16, 32 demonstrations
drawn at random per query from a pool of held-in examples, the query never among them), a task
with ``shots: [0, 4, 8]`` is scored once per k. For k > 0 every eval item gets k demonstrations:

* **drawn** from :class:`DemonstrationPool` (the task's ``demonstrations`` data section, default
  its own ``data`` read in full) with a ``random.Random`` seeded by (task name, sample id, k,
  ``shot_seed``): the same sample gets the same demonstrations for every template, in every run
  and on every machine (one Python version: ``random.sample``), and another seed draws others.
  Pool samples with the query's id are never drawn. The draw depends on the pool's order and size.
* **rendered** with the query's instruction template (template index t of the query -> template t
  of each demonstration, filled from the demonstration's own fields), followed by the
  demonstration's reference answer as an assistant turn (its final assistant turn, else
  ``meta["answers"][0]``). A demonstration keeps its earlier non-system turns; system turns are
  dropped, the query's own system turn stays first.
* **placed** before the query: ``turns = [query system] + demo_1 + ... + demo_k + [query]``,
  ``images = demo_1 images + ... + demo_k images + query images`` (placeholder order).

The family's processor renders the turns as it renders any conversation (``processor.prompt``):
Flamingo/Otter as ``<image>User:q GPT:<answer>a<|endofchunk|>`` chunks, LLaVA through its chat
template, InstructBLIP as the concatenated text behind all images' query tokens. ``rank``
candidates stay the query's and are tokenized after the whole in-context prompt.

A query whose drawn demonstration cannot be used (unreadable image, a template index the
demonstration's reader lacks) is skipped for that k under the pool's ``missing_media: skip``
(reason ``demonstration-<reason>``; raises under ``error``), so per k: samples read = ``n`` + skips.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import OrderedDict
from typing import Any, Dict, List, Sequence, Tuple

from mmit.data.sample import Sample, SampleError, Turn
from mmit.data.stats import SkipCounter
from mmit.evaluation.config import EvalDataConfig, TaskConfig
from mmit.evaluation.data import EvalItem, decode_images, iter_data_samples, prompt_texts, split_answer

#: Decoded demonstration images kept in memory (samples, least recently used dropped first).
IMAGE_CACHE_SAMPLES = 256


def draw_seed(task: str, sample_id: str, k: int, seed: int) -> int:
    """The 64-bit RNG seed of one draw: sha256 of ``[task, sample_id, k, seed]`` (JSON), first 8 bytes."""
    blob = json.dumps([str(task), str(sample_id), int(k), int(seed)]).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def demonstration_answer(sample: Sample) -> str:
    """The answer a demonstration shows: its final assistant turn, else ``meta["answers"][0]``.
    Raises :class:`SampleError` (``no-answer``) when it has neither or it is empty."""
    if sample.turns and sample.turns[-1].role == "assistant":
        answer = sample.turns[-1].content.strip()
    else:
        answers = sample.meta.get("answers") or []
        answer = str(answers[0]).strip() if answers else ""
    if not answer:
        raise SampleError(f"sample {sample.id!r}: a demonstration needs an answer", "no-answer")
    return answer


class DemonstrationPool:
    """The samples demonstrations are drawn from, in stored order (media stay undecoded until drawn).

    Args:
        task: the task whose templates render the demonstrations and whose name / ``shot_seed`` seed
            the draw.
        samples: usable pool samples (checked by :meth:`load`).
        where: the task file, for error messages.
        source: ``"data"`` (the task's own data) or ``"demonstrations"`` (its own section).
        missing_media: ``skip`` or ``error``: what a drawn demonstration that cannot be used does.
        stats: pool samples left out when reading, by reason.
    """

    def __init__(self, task: TaskConfig, samples: Sequence[Sample], where: str, source: str = "data",
                 missing_media: str = "skip", stats: SkipCounter = None):
        self.task, self.samples, self.where, self.source = task, list(samples), where, source
        self.missing_media = missing_media
        self.stats = stats if stats is not None else SkipCounter()
        self.ids = [str(s.id) for s in self.samples]
        self._positions: Dict[str, List[int]] = {}
        for i, sid in enumerate(self.ids):
            self._positions.setdefault(sid, []).append(i)
        self._images: "OrderedDict[int, List[Any]]" = OrderedDict()

    @classmethod
    def load(cls, task: TaskConfig, where: str) -> "DemonstrationPool":
        """Read the pool of ``task``: ``task.demonstrations``, else ``task.data`` in full (not capped
        by ``max_samples``), filtered by the section's ``tasks``. Samples without a user turn or an
        answer, failing ``Sample.validate`` or holding non-image media are left out and counted in
        ``stats`` (the reader's own skips too). Raises ``FileNotFoundError`` naming the file."""
        d: EvalDataConfig = task.demonstrations if task.demonstrations is not None else task.data
        key = "demonstrations" if task.demonstrations is not None else "data"
        stats = SkipCounter()
        keep = set(d.tasks)
        samples = []
        it = iter_data_samples(d, stats, where, key)
        for s in it:
            if keep and s.task not in keep:
                continue
            try:
                s.validate()
                split_answer(s)
                demonstration_answer(s)
                bad = [m.kind for m in s.media if m.kind != "image"]
                if bad:
                    raise SampleError(f"sample {s.id!r}: media kind {bad[0]!r} cannot be a demonstration",
                                      "unsupported-media")
            except SampleError as e:
                stats.add(e.reason, s.id, str(e))
                continue
            samples.append(s)
        getattr(it, "close", lambda: None)()
        return cls(task, samples, where, key, d.missing_media, stats)

    def __len__(self) -> int:
        return len(self.samples)

    def draw(self, sample_id: str, k: int) -> List[int]:
        """Pool indices of the k demonstrations of ``sample_id`` (module docstring), in prompt order;
        never a sample with id ``sample_id``. Raises ``ValueError`` naming the task file when the
        pool has fewer than k other samples."""
        if k == 0:
            return []
        own = self._positions.get(str(sample_id), [])
        avail = len(self.samples) - len(own)
        if k > avail:
            raise ValueError(f"{self.where}: shots: k={k} needs {k} demonstrations but the pool ({self.source}, "
                             f"{len(self.samples)} usable samples, skipped: {self.stats.as_dict()}) has only "
                             f"{avail} besides sample {sample_id!r}")
        rng = random.Random(draw_seed(self.task.name, sample_id, k, self.task.shot_seed))
        picks = rng.sample(range(len(self.samples)), k + len(own))
        return [i for i in picks if i not in own][:k]

    def _decoded(self, index: int) -> List[Any]:
        if index in self._images:
            self._images.move_to_end(index)
            return self._images[index]
        images = decode_images(self.samples[index])
        self._images[index] = images
        if len(self._images) > IMAGE_CACHE_SAMPLES:
            self._images.popitem(last=False)
        return images

    def exchange(self, index: int, template: int) -> Tuple[List[Turn], List[Any]]:
        """``(turns, images)`` of pool sample ``index`` as a demonstration under template ``template``:
        its non-system turns with the final user turn rendered by the task's template and the answer
        as an assistant turn; its decoded images in order. Raises :class:`SampleError` (the decoder's
        reason, or ``template-error`` when the sample has no template ``template``) and ``ValueError``
        when a template names a field the sample lacks."""
        s = self.samples[index]
        turns, _ = split_answer(s)
        texts = prompt_texts(self.task, s, turns, f"{self.where} ({self.source})")
        if template >= len(texts):
            raise SampleError(f"sample {s.id!r}: no instruction template {template} (it has {len(texts)})",
                              "template-error")
        body = [t for t in turns[:-1] if t.role != "system"]
        body += [Turn("user", texts[template]), Turn("assistant", demonstration_answer(s))]
        return body, list(self._decoded(index))

    def summary(self) -> Dict[str, Any]:
        """``{"source", "path", "size", "skipped", "seed"}`` for results.json."""
        d = self.task.demonstrations if self.task.demonstrations is not None else self.task.data
        return {"source": self.source, "path": d.path, "size": len(self.samples), "skipped": self.stats.as_dict(),
                "seed": self.task.shot_seed}


def with_demonstrations(item: EvalItem, demos: Sequence[Tuple[List[Turn], List[Any]]], ids: Sequence[str]) -> EvalItem:
    """A copy of ``item`` with ``demos`` (``(turns, images)`` each) before its query (module docstring)."""
    lead = 0
    while lead < len(item.turns) and item.turns[lead].role == "system":
        lead += 1
    turns = list(item.turns[:lead]) + [t for d, _ in demos for t in d] + list(item.turns[lead:])
    images = [im for _, ims in demos for im in ims] + list(item.images)
    return EvalItem(task=item.task, sample_id=item.sample_id, template=item.template, turns=turns, images=images,
                    reference=item.reference, candidates=item.candidates, label=item.label, shots=len(demos),
                    demonstrations=list(ids))


def incontext_items(items: Sequence[EvalItem], skips: SkipCounter, pool: DemonstrationPool, k: int
                    ) -> Tuple[List[EvalItem], int, SkipCounter]:
    """The k-shot versions of a task's zero-shot ``items`` (grouped by sample, templates in order, as
    :func:`~mmit.evaluation.data.load_items` returns them with its ``skips``).

    Returns ``(items, samples used, skips)``, with samples read = samples used + ``skips.total`` as
    for k = 0. Raises ``ValueError`` when the pool is too small for k, :class:`SampleError` for an
    unusable demonstration under ``missing_media: error``.
    """
    out_skips = SkipCounter()
    out_skips.merge(skips)
    groups: List[List[EvalItem]] = []
    for it in items:
        if it.template == 0 or not groups or groups[-1][0].sample_id != it.sample_id:
            groups.append([])
        groups[-1].append(it)
    out: List[EvalItem] = []
    used = 0
    for group in groups:
        sid = group[0].sample_id
        picks = pool.draw(sid, k)
        ids = [pool.ids[i] for i in picks]
        try:
            made = [with_demonstrations(it, [pool.exchange(i, it.template) for i in picks], ids) for it in group]
        except SampleError as e:
            if pool.missing_media == "error":
                raise
            out_skips.add(f"demonstration-{e.reason}", sid, f"{k}-shot demonstration: {e}")
            continue
        out.extend(made)
        used += 1
    return out, used, out_skips


__all__ = ["DemonstrationPool", "draw_seed", "demonstration_answer", "incontext_items", "with_demonstrations"]
