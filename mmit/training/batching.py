"""Batching for throughput: modality-length grouping, token-budget batches and sequence packing.

Three options of the ``data:`` section, each off by default (the plain stream of
:func:`mmit.training.data.batches` is then unchanged), any combination allowed:

* ``group_by_modality_length`` (LLaVA's ``--group_by_modality_length``): multimodal and text-only
  samples go to separate batches, and samples of similar length to the same batch. LLaVA
  (haotian-liu/LLaVA ``llava/train/llava_trainer.py``: ``get_modality_length_grouped_indices``,
  ``LengthGroupedSampler``) shuffles each modality's indices, cuts them into megabatches of
  ``world_size x batch_size``, sorts each by length, shuffles the megabatches and puts the two
  incomplete ones last. Here the same is done on each process's own sample stream, one window of
  :data:`MEGABATCH_BATCHES` x ``batch_size`` samples (HF transformers' ``megabatch_mult``; at most
  :data:`MAX_WINDOW`) at a time, so that lengths group within a process too, shards work and no
  global length table is needed. Each window is split by modality and sorted by length (longest
  first); with a fixed batch size it is cut into batches, an incomplete remainder of each modality
  is carried into the next window (no batch mixes modalities) and the window's batches are
  shuffled. Lengths are estimated before decoding (LLaVA's ``modality_lengths``: words of every
  turn; plus the processor's ``num_image_tokens`` per media item).
* ``max_tokens_per_batch``: a batch closes before it would hold more than this many tokens
  (``rows x longest row``: the tensor the model runs, padding included), as fairseq's
  ``--max-tokens``; ``train.batch_size`` stays the cap on samples per batch (fairseq's
  ``--batch-size``), so set it high to let the budget decide. A sample longer than the budget is a
  batch of its own.
* ``packing`` (LLaMA-Factory's ``packing``, decoder-only splice families): the samples of a batch are
  packed into rows of at most the processor's ``max_length`` tokens (first-fit decreasing; first fit
  in arrival order under a token budget). The processor's ``collate_packed`` gives per-sample
  position ids restarting at 0 (``Batch.extra["position_ids"]``); the model turns them into a
  block-diagonal causal mask (:func:`mmit.models.interface.packed_attention_mask`), so no token
  attends to another sample, and the first token of each sample is no target (it would be predicted
  from the previous sample). Without a token budget a packed batch holds the same samples as an
  unpacked one and gives the same loss.

Determinism and exact resume: the order is a function of (seed, epoch) and of the stream's own
(deterministic) order only. Positions recorded by the trainer count samples of the *grouped*
sequence; when a batch closes because the next sample does not fit (budget, modality or length
group), the recorded position is that sample's, so a resumed run starts with it, exactly as the
uninterrupted run does.
"""

from __future__ import annotations

import random
from itertools import islice
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmit.constants import IGNORE_INDEX
from mmit.data.sample import Sample
from mmit.data.stats import SkipCounter
from mmit.training.transport import batches_per_message, pack_tensors, unpack_tensors, worker_prefetch

#: Batches per grouping window (HF transformers' ``megabatch_mult``).
MEGABATCH_BATCHES = 50
#: Most samples a grouping window holds (shards carry their media bytes), unless one batch is larger.
MAX_WINDOW = 4096


def enabled(cfg) -> bool:
    """Whether a ``DataConfig`` asks for any option of this module (missing fields count as off)."""
    return bool(getattr(cfg, "group_by_modality_length", False) or getattr(cfg, "packing", False)
                or getattr(cfg, "max_tokens_per_batch", None))


def sample_length(sample: Sample, media_tokens: int) -> Tuple[bool, int]:
    """``(multimodal, estimated tokens)`` of a raw sample, before any decoding: whitespace-separated
    words of all turns (LLaVA's ``modality_lengths``) plus ``media_tokens`` per media item.
    ``multimodal`` is whether the sample has any media."""
    words = sum(len(t.content.split()) for t in sample.turns)
    return bool(sample.media), words + int(media_tokens) * len(sample.media)


def grouped_order(samples: Iterable[Sample], batch_size: int, seed: int, epoch: int, media_tokens: int = 0,
                  window: Optional[int] = None, chunk: bool = True) -> Iterator[Tuple[int, Sample]]:
    """``(group, sample)`` for every sample of ``samples`` exactly once, grouped by modality and length
    (module docstring). Consecutive samples with the same ``group`` may share a batch; a batch never
    spans two groups.

    ``chunk=True`` (fixed batch size): groups are runs of ``batch_size`` samples of one modality,
    shuffled within each window. ``chunk=False`` (token budget): a group is one modality's samples of a
    window, longest first, and the batch builder cuts it. ``window`` defaults to
    ``MEGABATCH_BATCHES * batch_size`` samples, at most :data:`MAX_WINDOW` (at least ``batch_size``).
    Deterministic in (``seed``, ``epoch``, input order). Raises ``ValueError`` for ``batch_size`` or ``window`` < 1.
    """
    if window is None:
        window = max(batch_size, min(MEGABATCH_BATCHES * batch_size, MAX_WINDOW))
    window = int(window)
    if batch_size < 1 or window < 1:
        raise ValueError(f"grouping needs batch_size >= 1 and window >= 1, got {batch_size} and {window}")
    rng = random.Random(f"mmit-group:{seed}:{epoch}")
    pools: Dict[bool, list] = {True: [], False: []}
    group = 0

    def drain(final: bool):
        nonlocal group
        runs = []
        for mm in (True, False):
            pool = sorted(pools[mm], key=lambda x: (-x[0], x[1]))
            if chunk:
                keep = len(pool) if final else len(pool) // batch_size * batch_size
                runs += [pool[i:i + batch_size] for i in range(0, keep, batch_size)]
                pools[mm] = pool[keep:]
            else:
                runs.append(pool)
                pools[mm] = []
        runs = [r for r in runs if r]
        rng.shuffle(runs)
        for run in runs:
            group += 1
            for x in run:
                yield group, x[2]

    n = 0
    for s in samples:
        mm, length = sample_length(s, media_tokens)
        pools[mm].append((length, rng.random(), s))
        n += 1
        if n == window:
            yield from drain(False)
            n = 0
    yield from drain(True)


def item_length(item: Dict[str, Any]) -> int:
    """Tokens of a processed item (``len(item["input_ids"])``). Raises ``ValueError`` for an item
    without ``input_ids`` (a family whose batches are not token sequences)."""
    ids = item.get("input_ids") if isinstance(item, dict) else None
    if ids is None:
        have = sorted(item) if isinstance(item, dict) else type(item).__name__
        raise ValueError("data.max_tokens_per_batch and data.packing need items with input_ids "
                         f"(token sequences); this family's items have {have}")
    return int(len(ids))


def first_fit(lengths: Sequence[int], capacity: int, decreasing: bool = True) -> List[List[int]]:
    """Indices of ``lengths`` packed into rows of at most ``capacity`` (first fit, longest first when
    ``decreasing``; ties keep input order). An item longer than ``capacity`` gets a row of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if decreasing else range(len(lengths))
    rows: List[List[int]] = []
    loads: List[int] = []
    for i in order:
        n = lengths[i]
        j = next((r for r, load in enumerate(loads) if load + n <= capacity), None)
        if j is None:
            rows.append([i])
            loads.append(n)
        else:
            rows[j].append(i)
            loads[j] += n
    return rows


class BatchBuilder:
    """Collects items into one batch under a cap of ``batch_size`` samples, an optional token budget
    ``max_tokens`` (``rows x longest row``) and optional packing into rows of ``pack_length`` tokens.

    ``fits(n)`` says whether an item of ``n`` tokens may join (always true for an empty builder);
    ``add(item, n)``; ``full()`` when the sample cap is reached; ``take()`` returns the items
    (``list``), or the packed rows (``list`` of ``list``) when packing, and empties the builder.
    """

    def __init__(self, batch_size: int, max_tokens: Optional[int] = None, pack_length: Optional[int] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"data.max_tokens_per_batch must be >= 1 or null, got {max_tokens}")
        if pack_length is not None and pack_length < 1:
            raise ValueError(f"packing needs a row length >= 1, got {pack_length}")
        self.batch_size, self.max_tokens, self.pack_length = batch_size, max_tokens, pack_length
        self.items: List[Any] = []
        self.lengths: List[int] = []
        self.loads: List[int] = []  # packed row loads (first fit in arrival order), under a budget
        self.rows: List[List[int]] = []

    def __len__(self) -> int:
        return len(self.items)

    def full(self) -> bool:
        return len(self.items) >= self.batch_size

    def _place(self, n: int) -> Optional[int]:
        return next((r for r, load in enumerate(self.loads) if load + n <= self.pack_length), None)

    def fits(self, n: int) -> bool:
        if not self.items:
            return True
        if self.full():
            return False
        if self.max_tokens is None:
            return True
        if self.pack_length is None:
            return (len(self.items) + 1) * max(max(self.lengths), n) <= self.max_tokens
        j = self._place(n)
        loads = list(self.loads)
        if j is None:
            loads.append(n)
        else:
            loads[j] += n
        return len(loads) * max(loads) <= self.max_tokens

    def add(self, item: Any, n: int) -> None:
        if self.pack_length is not None and self.max_tokens is not None:
            j = self._place(n)
            if j is None:
                self.rows.append([len(self.items)])
                self.loads.append(n)
            else:
                self.rows[j].append(len(self.items))
                self.loads[j] += n
        self.items.append(item)
        self.lengths.append(n)

    def take(self):
        items = self.items
        if self.pack_length is None:
            out = items
        else:
            rows = self.rows if self.max_tokens is not None else first_fit(self.lengths, self.pack_length)
            out = [[items[i] for i in row] for row in rows]
        self.items, self.lengths, self.loads, self.rows = [], [], [], []
        return out


def pack_sequences(rows: Sequence[Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]]], pad_id: int):
    """Concatenate ``(input_ids [t], labels [t] or None)`` pairs row by row and right-pad the rows.

    Returns ``(input_ids, attention_mask, labels or None, position_ids)``, each LongTensor ``[R,T]``:
    ``attention_mask`` 1 on tokens, 0 on padding; ``labels`` ``-100`` on padding and on the first token
    of every sample (no target crosses a sample boundary); ``position_ids`` restart at 0 at every
    sample and count 0, 1, ... again over the padding (a separate span: transformers' packed-sequence
    convention). Raises ``ValueError`` for no rows or an empty row.
    """
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("pack_sequences: got no rows or an empty row (every sample skipped?)")
    with_labels = all(lab is not None for row in rows for _, lab in row)
    T = max(sum(int(ids.shape[0]) for ids, _ in row) for row in rows)
    R = len(rows)
    input_ids = torch.full((R, T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((R, T), dtype=torch.long)
    labels = torch.full((R, T), IGNORE_INDEX, dtype=torch.long) if with_labels else None
    position_ids = torch.zeros((R, T), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for ids, lab in row:
            n = int(ids.shape[0])
            input_ids[r, at:at + n] = ids
            mask[r, at:at + n] = 1
            position_ids[r, at:at + n] = torch.arange(n)
            if labels is not None and n > 1:
                labels[r, at + 1:at + n] = lab[1:]
            at += n
        position_ids[r, at:] = torch.arange(T - at)
    return input_ids, mask, labels, position_ids


class _GroupedEpoch(IterableDataset):
    """Processed items of one epoch in grouped order from position ``start``, as ``(position, group,
    item or None, skip or None)``.

    In the main process: yields them one by one. In DataLoader workers (each computes the same
    deterministic order): chunks of ``batch_size`` consecutive positions (times
    ``data.batches_per_message``), worker ``w`` of ``n``
    taking chunks ``w, w + n, ...`` and sending each as one message packed by
    :func:`mmit.training.transport.pack_tensors`; the DataLoader returns them round-robin, so in order
    (:func:`_unchunked` flattens them back). One message per sample cost more than the
    preprocessing itself for small images."""

    def __init__(self, stream, pre, epoch: int, start: int, batch_size: int, group: bool, chunk: bool):
        self.stream, self.pre, self.epoch, self.start = stream, pre, epoch, start
        self.batch_size, self.group, self.chunk = batch_size, group, chunk

    def _item(self, pos: int, g: Any, sample: Sample):
        skip = SkipCounter()
        return pos, g, self.pre.try_call(sample, skip), (skip if skip else None)

    def __iter__(self):
        info = get_worker_info()
        raw = self.stream.epoch(self.epoch)
        if self.group:
            media_tokens = int(getattr(self.pre, "num_image_tokens", 0) or 0)
            seq = grouped_order(raw, self.batch_size, self.stream.seed, self.epoch, media_tokens, chunk=self.chunk)
        else:
            seq = ((0, s) for s in raw)
        positions = islice(enumerate(seq), self.start, None)
        if info is None:
            for pos, (g, sample) in positions:
                yield self._item(pos, g, sample)
            return
        size, k = max(1, int(self.batch_size)) * batches_per_message(self.stream.cfg), 0
        while True:
            chunk = list(islice(positions, size))
            if not chunk:
                return
            if k % info.num_workers == info.id:
                yield pack_tensors([self._item(pos, g, sample) for pos, (g, sample) in chunk])
            k += 1


def _unchunked(loader) -> Iterator[Tuple[int, Any, Any, Any]]:
    """The items of :class:`_GroupedEpoch`'s worker chunks, in order."""
    for msg in loader:
        yield from unpack_tensors(*msg)


def build_batches(stream, pre, batch_size: int, start_epoch: int = 0, start_pos: int = 0,
                  num_workers: int = 0) -> Iterator[Tuple[Any, int, int]]:
    """Endless batches across epochs under ``stream.cfg``'s grouping / budget / packing options:
    yields ``(batch, epoch, next_position)`` like :func:`mmit.training.data.batches` (which calls this
    when :func:`enabled`), ``next_position`` counting samples of the grouped order.

    ``stream``: a :class:`~mmit.training.data.SampleStream` (``cfg``, ``seed``, ``stats``,
    ``epoch(e)``); ``pre``: the family's processor. Raises ``ValueError`` when packing is asked of a
    processor without ``collate_packed`` or ``max_length``, for a bad budget, or for items without
    ``input_ids`` under a budget or packing; ``RuntimeError`` ("produced no usable sample") when an
    epoch yields no usable sample.
    """
    cfg = stream.cfg
    group = bool(getattr(cfg, "group_by_modality_length", False))
    max_tokens = getattr(cfg, "max_tokens_per_batch", None)
    packing = bool(getattr(cfg, "packing", False))
    pack_length = None
    if packing:
        name = getattr(pre, "family_name", type(pre).__name__)
        if not callable(getattr(pre, "collate_packed", None)) or not getattr(pre, "max_length", None):
            raise ValueError(f"data.packing: {name} cannot pack samples into one sequence (its processor has no "
                             "collate_packed / max_length; packing needs decoder-only splice fusion); "
                             "set data.packing: false")
        pack_length = int(pre.max_length)
    measure = packing or max_tokens is not None
    epoch, pos = start_epoch, start_pos
    while True:
        ds = _GroupedEpoch(stream, pre, epoch, pos, batch_size, group, chunk=max_tokens is None)
        it = (_unchunked(DataLoader(ds, batch_size=None, num_workers=num_workers,
                                    prefetch_factor=worker_prefetch(batches_per_message(cfg))))
              if num_workers else iter(ds))
        builder = BatchBuilder(batch_size, max_tokens, pack_length)
        collate = pre.collate_packed if packing else pre.collate
        produced, current = 0, None
        for p, g, item, skip in it:
            if skip is not None:
                stream.stats.merge(skip)
            if item is None:
                pos = max(pos, p + 1)
                continue
            n = item_length(item) if measure else 1
            if len(builder) and (g != current or not builder.fits(n)):
                produced += 1
                yield collate(builder.take()), epoch, p  # a resume starts with this item
            builder.add(item, n)
            current, pos = g, max(pos, p + 1)
            if builder.full():
                produced += 1
                yield collate(builder.take()), epoch, pos
        if len(builder):
            produced += 1
            yield collate(builder.take()), epoch, pos
        if produced == 0 and start_pos == 0:
            raise RuntimeError(f"epoch {epoch} produced no usable sample (skips: {stream.stats.as_dict()})")
        epoch, pos, start_pos = epoch + 1, 0, 0
