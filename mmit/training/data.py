"""The training data stream: deterministic per (seed, epoch), resumable at a sample position.

Sources are webdataset shards (``data.format: shards``) or a source file read directly by a
registered reader (``data.format: llava``). Raw samples are drawn in a fixed order for each epoch;
the trainer records ``(epoch, position)`` after every batch, and on resume the stream skips exactly
the raw samples already consumed, so a resumed run sees the same batches as an uninterrupted one
(exact with ``num_workers: 0``; with workers the order is still deterministic but a resume may
repeat or skip up to ``num_workers`` samples).

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


class SampleStream:
    """Raw :class:`Sample` records for one epoch, in a deterministic order.

    ``rank``/``world`` split the samples between processes (every ``world``-th sample for a source
    file; webdataset's ``split_by_node`` for shards).
    """

    def __init__(self, cfg: DataConfig, seed: int, rank: int = 0, world: int = 1,
                 stats: Optional[SkipCounter] = None):
        self.cfg, self.seed, self.rank, self.world = cfg, seed, rank, world
        self.stats = stats if stats is not None else SkipCounter()
        self._records: Optional[List[Sample]] = None
        if cfg.format != "shards":
            from mmit.data.sources import get_reader

            if not os.path.exists(cfg.path):
                raise FileNotFoundError(f"data.path not found: {cfg.path}")
            reader = get_reader(cfg.format)
            # allow_absolute=False: media confined to media_root (module docstring)
            from mmit.data.sample import allow_empty_answers

            with allow_empty_answers(cfg.allow_empty_answers):  # readers validate each sample themselves
                self._records = list(reader(cfg.path, media_root=cfg.media_root, missing=cfg.missing_media,
                                            stats=self.stats, allow_absolute=False))
        elif not cfg.path:
            raise ValueError("data.path is empty: give a shard folder, glob or brace pattern")

    def __len__(self) -> int:
        """Samples per epoch for this process. Raises ``TypeError`` in resampled mode (endless)."""
        if self._records is not None:
            return len(range(self.rank, len(self._records), self.world))
        if self.cfg.resampled:
            raise TypeError("resampled shards are an endless stream: set train.max_steps")
        stats_path = os.path.join(self.cfg.path, "_stats.json")
        if not os.path.isfile(stats_path):
            raise FileNotFoundError(f"{stats_path} not found: cannot size an epoch; set train.max_steps "
                                    "or point data.path at a folder written by `mmit convert`")
        with open(stats_path) as f:
            return int(json.load(f)["written"]) // self.world

    def epoch(self, epoch: int) -> Iterator[Sample]:
        if self._records is not None:
            order = list(range(len(self._records)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            return (self._records[i] for i in order[self.rank::self.world])
        from mmit.data.shards import iter_shards

        return iter_shards(self.cfg.path, shuffle_buffer=self.cfg.shuffle_buffer, seed=self.seed,
                           epoch=epoch, resampled=self.cfg.resampled, split_by_node=self.world > 1,
                           split_by_worker=False)


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
    """
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
