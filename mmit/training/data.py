"""The training data stream: deterministic per (seed, epoch), resumable at a sample position.

Sources are webdataset shards (``data.format: shards``) or a source file read directly by a
registered reader (``data.format: llava``). Raw samples are drawn in a fixed order for each epoch;
the trainer records ``(epoch, position)`` after every batch, and on resume the stream skips exactly
the raw samples already consumed, so a resumed run sees the same batches as an uninterrupted one
(exact with ``num_workers: 0``; with workers the order is still deterministic but a resume may
repeat or skip up to ``num_workers`` samples).

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


class _PreprocessedEpoch(IterableDataset):
    """Preprocessed items of one epoch from ``start``; DataLoader workers take every k-th sample."""

    def __init__(self, stream: SampleStream, pre: Processor, epoch: int, start: int):
        self.stream, self.pre, self.epoch, self.start = stream, pre, epoch, start

    def __iter__(self):
        """Yields ``(position, item or None, skip)``; ``skip`` is a one-sample SkipCounter (or None),
        returned rather than counted here because a worker process's counter never reaches the trainer."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for pos, sample in islice(enumerate(self.stream.epoch(self.epoch)), self.start + wid, None, nw):
            skip = SkipCounter()
            yield pos, self.pre.try_call(sample, skip), (skip if skip else None)


def batches(stream: SampleStream, pre: Processor, batch_size: int, start_epoch: int = 0, start_pos: int = 0,
            num_workers: int = 0) -> Iterator[Tuple[Batch, int, int]]:
    """Endless batches across epochs: yields ``(batch, epoch, next_position)``.

    ``batch`` is ``pre.collate(items)``, a :class:`~mmit.data.batch.Batch`.
    ``next_position`` is the raw-sample index in
    ``epoch`` where a resumed run starts. Skipped samples (counted in ``stream.stats``) never reach a
    batch. A partial batch at the end of an epoch is yielded as is. Raises ``RuntimeError`` if an
    epoch yields no usable sample.

    ``data.group_by_modality_length``, ``data.max_tokens_per_batch`` and ``data.packing`` hand the
    stream to :func:`mmit.training.batching.build_batches` (same contract; positions count samples
    of the grouped order).
    """
    from mmit.training import batching

    if batching.enabled(stream.cfg):
        yield from batching.build_batches(stream, pre, batch_size, start_epoch, start_pos, num_workers)
        return
    epoch, pos = start_epoch, start_pos
    while True:
        ds = _PreprocessedEpoch(stream, pre, epoch, pos)
        it = iter(DataLoader(ds, batch_size=None, num_workers=num_workers)) if num_workers else iter(ds)
        items, produced = [], 0
        for p, item, skip in it:
            pos = max(pos, p + 1)
            if skip is not None:
                stream.stats.merge(skip)
            if item is None:
                continue
            items.append(item)
            if len(items) == batch_size:
                produced += 1
                yield pre.collate(items), epoch, pos
                items = []
        if items:
            produced += 1
            yield pre.collate(items), epoch, pos
        if produced == 0 and start_pos == 0:
            raise RuntimeError(f"epoch {epoch} produced no usable sample (skips: {stream.stats.as_dict()})")
        epoch, pos, start_pos = epoch + 1, 0, 0


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor moved to ``device``."""
    return batch.to(device)
