"""The training data stream: deterministic per (seed, epoch), resumable at a sample position.

Sources are webdataset shards (``data.format: shards``) or a source file read directly by a
registered reader (``data.format: llava``). Raw samples are drawn in a fixed order for each epoch;
the trainer records ``(epoch, position)`` after every batch, and on resume the stream skips exactly
the raw samples already consumed, so a resumed run sees the same batches as an uninterrupted one
(with or without DataLoader workers: the batches, positions and skip counts do not depend on
``num_workers``).

Throughput (:func:`batches`): with ``num_workers`` > 0, decoding, preprocessing and tokenising run in
DataLoader worker processes that live across epochs (no fork and no shuffle-buffer refill at each
epoch). Each takes whole chunks of consecutive raw samples (``data.batches_per_message`` batches'
worth) and sends a chunk as one message whose tensors travel in one buffer per dtype
(:func:`pack_tensors`: pipe bytes when small, else one shared-memory segment the tensors are
concatenated into directly), not one shared-memory segment per tensor, which cost more than the
preprocessing itself for small images. The main process only assembles and collates, in the same
order as without workers. On a CUDA machine the workers keep 4 batches' worth each in flight and the collated
batch is put in pinned memory, so :func:`to_device` copies it asynchronously. ``data.num_workers: 0``
(the default) preprocesses in the trainer's own process, between steps: the trainer's ``data_wait``
shows what that costs.

With several processes (DDP / FSDP / DeepSpeed) each process gets its own share of every epoch, and
every share has the same length: by shard when there are enough shards, otherwise by blocks of
samples, repeating a few samples to even the shares out (:mod:`mmit.training.split`). Positions are
per process; the trainer saves and restores each process's own.

Media of a source file read in training follow the same rules as ``mmit convert``: the reader
confines every media path to ``data.media_root`` (symlinks resolved; ``../``, absolute paths and
links leading out are ``media-outside-root`` skips, counted in the stream's stats; there is no
opt-in here) and checks each file's size cap and, for video/audio, its container, before a sample
is kept. The processors later read ``Media.path`` with
:func:`mmit.data.media.read_media_bytes`, which reads a file only when it is under its size cap.
"""

from __future__ import annotations

import json
import os
import random
import time
from itertools import islice
from typing import Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmit.config.schema import DataConfig
from mmit.data.batch import Batch
from mmit.data.processor import Processor
from mmit.data.sample import Sample
from mmit.data.stats import SkipCounter
from mmit.training.split import (blocks_per_rank, cycle_to, rank_blocks, shard_split, shard_stats,
                                 stats_mix_media, take_blocks)
from mmit.training.transport import batches_per_message, pack_tensors, unpack_tensors, worker_prefetch


class SampleStream:
    """Raw :class:`Sample` records for one epoch, in a deterministic order, split between processes.

    Args:
        cfg: the ``data`` section.
        seed: the run seed (the order is a function of ``(seed, epoch)``).
        rank, world: this process and the number of processes. With ``world > 1`` every process gets
            samples and the same count per epoch (:mod:`mmit.training.split`: by shard when there
            are enough shards with known counts, else by blocks of ``block`` samples, padding by
            repetition in both cases). Resampled shards are drawn per process (seeded by rank).
        stats: counter for skipped records (a source file's reader skips are counted by every process).
        block: samples per block of the by-sample split: the per-process batch size, so that
            ``world`` processes see what one process with ``world``-fold gradient accumulation sees.

    Attributes: ``split``, one of ``none`` (one process), ``shard``, ``sample``, ``resampled``;
    ``read_stats``, the reader's own skips (the same on every process).

    Raises ``FileNotFoundError`` (no data), ``ValueError`` (empty ``data.path``, bad rank or block).
    """

    def __init__(self, cfg: DataConfig, seed: int, rank: int = 0, world: int = 1,
                 stats: Optional[SkipCounter] = None, block: int = 1):
        if not 0 <= rank < world or block < 1:
            raise ValueError(f"SampleStream needs 0 <= rank < world and block >= 1, got {rank}, {world}, {block}")
        self.cfg, self.seed, self.rank, self.world, self.block = cfg, seed, rank, world, block
        self.stats = stats if stats is not None else SkipCounter()
        self.read_stats = SkipCounter()
        self._records: Optional[List[Sample]] = None
        self._shards: Optional[List[str]] = None  # by-shard split: this process's shards
        self._shard_stats: Optional[list] = None
        self._length = 0  # by-shard split: samples per process and epoch
        self.split = "none"
        if cfg.format != "shards":
            from mmit.data.sources import get_reader

            if not os.path.exists(cfg.path):
                raise FileNotFoundError(f"data.path not found: {cfg.path}")
            reader = get_reader(cfg.format)
            # allow_absolute=False: media confined to media_root (module docstring)
            from mmit.data.sample import allow_empty_answers

            with allow_empty_answers(cfg.allow_empty_answers):  # readers validate each sample themselves
                self._records = list(reader(cfg.path, media_root=cfg.media_root, missing=cfg.missing_media,
                                            stats=self.read_stats, allow_absolute=False))
            self.stats.merge(self.read_stats)
            self.split = "sample" if world > 1 else "none"
        elif not cfg.path:
            raise ValueError("data.path is empty: give a shard folder, glob or brace pattern")
        elif world > 1 and cfg.resampled:
            self.split = "resampled"
        elif world > 1:
            from mmit.data.shards import expand_urls

            urls = expand_urls(cfg.path)
            self._shard_stats = shard_stats(urls)
            parts = shard_split([None if s is None else int(s.get("written", 0)) for s in self._shard_stats], world)
            if parts is None:
                self.split = "sample"
            else:
                self.split = "shard"
                self._shards = [urls[i] for i in parts[rank]]
                self._length = max(sum(int(self._shard_stats[i]["written"]) for i in p) for p in parts)

    def __len__(self) -> int:
        """Samples per epoch for this process (padding included; the same on every process). Raises
        ``TypeError`` in resampled mode (endless) and ``FileNotFoundError`` for shards without
        ``_stats.json``."""
        if self.split == "shard":
            return self._length
        if self._records is not None:
            n = len(self._records)
        elif self.cfg.resampled:
            raise TypeError("resampled shards are an endless stream: set train.max_steps")
        else:
            stats_path = os.path.join(self.cfg.path, "_stats.json")
            if not os.path.isfile(stats_path):
                raise FileNotFoundError(f"{stats_path} not found: cannot size an epoch; set train.max_steps "
                                        "or point data.path at a folder written by `mmit convert`")
            with open(stats_path) as f:
                n = int(json.load(f)["written"])
        return n if self.world == 1 else blocks_per_rank(n, self.block, self.world) * self.block

    def mixed_media(self) -> Optional[bool]:
        """Whether samples differ in the media kinds they hold (text-only samples next to image
        samples, ...), so that a batch may leave an encoder or connector unused; None when unknown
        (shards without per-shard stats)."""
        if self._records is not None:
            return len({frozenset(m.kind for m in s.media) for s in self._records}) > 1
        if self._shard_stats is None:
            from mmit.data.shards import expand_urls

            self._shard_stats = shard_stats(expand_urls(self.cfg.path))
        return stats_mix_media(self._shard_stats)

    def epoch(self, epoch: int) -> Iterator[Sample]:
        """This process's raw samples of ``epoch``, in order (see the class docstring for the split)."""
        if self._records is not None:
            order = list(range(len(self._records)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            if self.split == "none":
                return (self._records[i] for i in order)
            return (self._records[order[i]] for r in rank_blocks(len(order), self.block, self.rank, self.world)
                    for i in r)
        from mmit.data.shards import iter_shards

        def read(urls):
            # the process split is done here, never by webdataset's split_by_node (one shard, 2 ranks:
            # rank 1 got nothing); resampled streams are seeded per rank by webdataset
            return iter_shards(urls, shuffle_buffer=self.cfg.shuffle_buffer, seed=self.seed, epoch=epoch,
                               resampled=self.cfg.resampled, split_by_node=False, split_by_worker=False)

        if self.split == "shard":
            return cycle_to(lambda: read(self._shards), self._length)
        if self.split == "sample":
            return take_blocks(read(self.cfg.path), self.block, self.rank, self.world)
        return read(self.cfg.path)


class _Preprocessed(IterableDataset):
    """Preprocessed items of every epoch from ``(epoch, start)`` on, endlessly, as ``(epoch, last,
    group)``: ``group`` a list of ``(position, item or None, skip)``, ``last`` whether it ends its
    epoch (found by reading the next raw chunk ahead; an epoch without samples is one empty last group).

    In the main process: one sample per group. In DataLoader workers: chunks of ``chunk`` consecutive
    samples packed by :func:`pack_tensors` (``(list, buffers)``), counted across epochs, worker ``w``
    of ``n`` taking chunks ``w, w + n, ...``; the DataLoader returns its workers' messages round-robin,
    so they arrive in chunk order. The workers live as long as the stream: no fork and no refill of
    a shuffle buffer at every epoch.

    ``skip`` is a one-sample SkipCounter (or None), returned rather than counted here because a
    worker process's counter never reaches the trainer.

    ``stop``: a multiprocessing Event (set by :func:`_groups` when its consumer stops); a worker
    that sees it set between two samples drops its chunk and ends, so that closing the stream does
    not wait for chunks nobody will read. ``end_epoch``: when set, the items end with epoch
    ``end_epoch - 1`` (nothing of a later epoch is prepared).
    """

    def __init__(self, stream: SampleStream, pre: Processor, epoch: int, start: int, chunk: int = 1,
                 end_epoch: Optional[int] = None):
        self.stream, self.pre, self.epoch, self.start, self.chunk = stream, pre, epoch, start, max(1, chunk)
        self.stop, self.end_epoch = None, end_epoch

    def _item(self, pos: int, sample: Sample):
        skip = SkipCounter()
        return pos, self.pre.try_call(sample, skip), (skip if skip else None)

    def _chunks(self, size: int):
        """``(epoch, [(position, raw sample), ...], last)`` for every chunk of ``size``, endlessly."""
        epoch, start = self.epoch, self.start
        while self.end_epoch is None or epoch < self.end_epoch:
            samples = islice(enumerate(self.stream.epoch(epoch)), start, None)
            group = list(islice(samples, size))
            while True:
                ahead = list(islice(samples, size))
                yield epoch, group, not ahead
                if not ahead:
                    break
                group = ahead
            epoch, start = epoch + 1, 0

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for k, (epoch, group, last) in enumerate(self._chunks(self.chunk if info else 1)):
            if k % nw == wid:
                out = []
                for pos, sample in group:
                    if self.stop is not None and self.stop.is_set():
                        return
                    out.append(self._item(pos, sample))
                yield epoch, last, (pack_tensors(out) if info else (out, None))


def _groups(ds: _Preprocessed, num_workers: int, per_message: int = 1) -> Iterator[Tuple[int, bool, list]]:
    """``ds``'s ``(epoch, last, group)``: in this process, or from ``num_workers`` DataLoader workers
    (chunks unpacked). In flight per worker: 4 batches' worth on a CUDA machine, 2 elsewhere, and at
    least one chunk (``per_message``: the batches one chunk holds)."""
    if not num_workers:
        return ((epoch, last, group) for epoch, last, (group, _) in ds)
    import torch.multiprocessing as mp

    ds.stop = mp.Event()  # the DataLoader's default context (no multiprocessing_context given)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers,
                        prefetch_factor=worker_prefetch(per_message))

    def unpacked():
        it = iter(loader)  # held here: the workers shut down only after ``finally`` has run
        try:
            for epoch, last, msg in it:
                yield epoch, last, unpack_tensors(*msg)
        finally:  # closed (the trainer stopped): workers drop the chunks they are on, then shut down
            ds.stop.set()

    return unpacked()


def batches(stream: SampleStream, pre: Processor, batch_size: int, start_epoch: int = 0, start_pos: int = 0,
            num_workers: int = 0, end_epoch: Optional[int] = None) -> Iterator[Tuple[Batch, int, int]]:
    """Batches across epochs, endless unless ``end_epoch`` is set: yields ``(batch, epoch, next_position)``.

    ``batch`` is ``pre.collate(items)``, a :class:`~mmit.data.batch.Batch`.
    ``next_position`` is the raw-sample index in
    ``epoch`` where a resumed run starts. Skipped samples (counted in ``stream.stats``) never reach a
    batch. A partial batch at the end of an epoch is yielded as is. Raises ``RuntimeError`` if an
    epoch yields no usable sample. The batches, positions and skip counts are the same for every
    ``num_workers`` (module docstring: throughput).

    ``data.group_by_modality_length``, ``data.max_tokens_per_batch`` and ``data.packing`` hand the
    stream to :func:`mmit.training.batching.build_batches` (same contract; positions count samples
    of the grouped order).

    ``end_epoch``: the batches end with epoch ``end_epoch - 1``, and DataLoader workers prepare
    nothing of a later epoch (a run that knows its last epoch wastes no work past it; the batches up
    to there are the same as without it).
    """
    from mmit.training import batching

    if batching.enabled(stream.cfg):
        for out in batching.build_batches(stream, pre, batch_size, start_epoch, start_pos, num_workers):
            if end_epoch is not None and out[1] >= end_epoch:
                return
            yield out
        return
    pin = num_workers > 0 and torch.cuda.is_available()
    collate = (lambda xs: pre.collate(xs).pin_memory()) if pin else pre.collate  # noqa: E731
    pos, items, produced = start_pos, [], 0
    per_message = batches_per_message(stream.cfg)
    for epoch, last, group in _groups(_Preprocessed(stream, pre, start_epoch, start_pos, chunk=batch_size * per_message,
                                                    end_epoch=end_epoch), num_workers, per_message):
        for p, item, skip in group:
            pos = max(pos, p + 1)
            if skip is not None:
                stream.stats.merge(skip)
            if item is None:
                continue
            items.append(item)
            if len(items) == batch_size:
                produced += 1
                yield collate(items), epoch, pos
                items = []
        if last:
            if items:
                produced += 1
                yield collate(items), epoch, pos
            if produced == 0 and start_pos == 0:
                raise RuntimeError(f"epoch {epoch} produced no usable sample (skips: {stream.stats.as_dict()})")
            pos, start_pos, items, produced = 0, 0, [], 0


class WaitClock:
    """An iterator wrapper that measures how long its consumer waits for the next item: the time
    spent blocked in ``next()`` (the trainer's ``data_wait``: a DataLoader that keeps up answers in
    microseconds, one that starves the model makes it wait for decoding and preprocessing).

    Attributes: ``total`` (seconds waited since creation). :meth:`take` returns the seconds waited
    since the previous call and starts a new window. Exceptions of the wrapped iterator propagate
    (the time until they are raised counts as waiting).
    """

    def __init__(self, it: Iterator):
        self._it, self._window, self.total = it, 0.0, 0.0

    def __iter__(self) -> "WaitClock":
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self._it)
        finally:
            d = time.perf_counter() - t
            self._window += d
            self.total += d

    def take(self) -> float:
        """Seconds waited since the previous :meth:`take` (or since creation); resets the window."""
        w, self._window = self._window, 0.0
        return w


def wait_fraction(waited: float, wall: float) -> float:
    """``waited / wall`` clamped to [0, 1] (0 for an empty interval): the share of an interval of
    ``wall`` seconds spent waiting for data."""
    return 0.0 if wall <= 0 else min(1.0, max(0.0, waited / wall))


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor moved to ``device`` (asynchronously from pinned memory: the copy is
    ordered before any later work on the device's current stream)."""
    return batch.to(device, non_blocking=True)
