"""Splitting one epoch's samples between training processes so that every process gets data and
the same number of samples (hence batches) per epoch.

Two ways, chosen by :class:`mmit.training.data.SampleStream`:

* **by shard** (enough shards, each with its ``NNNNN_stats.json`` count): every process reads only
  its own shards. :func:`assign_shards` deals the shards out largest first to the least-loaded
  process, the same way on every process and in every epoch (each process still shuffles its own
  shards and samples per epoch). A process with fewer samples than the most loaded one **repeats
  samples from the start of its own epoch** (:func:`cycle_to`) until it has as many. The split is
  used only when that padding is at most :data:`MAX_SHARD_PADDING` of the data.
* **by sample** (a source file, one shard, few or unbalanced shards, shards without counts): every
  process reads the whole epoch in the same order and keeps **blocks** of ``block`` consecutive
  samples (the per-process batch size): block ``k`` goes to process ``k % world``
  (:func:`rank_blocks`, :func:`take_blocks`). So with ``world`` processes one optimizer step sees the
  same samples, in the same micro-batches, as one process with ``gradient_accumulation_steps = world``.
  When the number of blocks does not divide by ``world``, the processes short of a block **repeat
  blocks from the start of the epoch** (as torch's ``DistributedSampler`` pads with the first indices);
  at most ``world - 1`` blocks are repeated per epoch.

DataLoader workers then take every ``num_workers``-th chunk of ``batch_size`` consecutive samples of
their process's share (:class:`mmit.training.data._Preprocessed`), which keeps the order and the
positions, and so resume, exact.
Samples skipped by the processor are not replaced from other processes, so with skips the processes'
epochs may end a batch or so apart; the trainer saves each process's data position and resumes each
at its own.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, TypeVar

T = TypeVar("T")

#: The shard split is used only when padding the processes to equal length repeats at most this
#: fraction of the data; otherwise samples are split (every process reads every shard).
MAX_SHARD_PADDING = 0.1


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def blocks_per_rank(n: int, block: int, world: int) -> int:
    """Blocks of ``block`` samples each process gets from ``n`` samples (padding included):
    ``ceil(ceil(n / block) / world)``; 0 for no sample."""
    return _ceil_div(_ceil_div(n, block), world) if n > 0 else 0


def rank_blocks(n: int, block: int, rank: int, world: int) -> List[range]:
    """Index ranges (into an epoch's order of ``n`` samples) that process ``rank`` of ``world`` takes:
    blocks ``rank, rank + world, ...``, each ``block`` consecutive samples (the last block of the
    epoch may be shorter); blocks past the end repeat blocks from the start. Every process gets
    :func:`blocks_per_rank` blocks. Raises ``ValueError`` for ``block < 1`` or a bad rank."""
    if block < 1 or not 0 <= rank < world:
        raise ValueError(f"need block >= 1 and 0 <= rank < world, got block={block} rank={rank} world={world}")
    nb = _ceil_div(n, block)
    out = []
    for j in range(blocks_per_rank(n, block, world)):
        k = rank + j * world
        k = k if k < nb else (k - nb) % nb
        out.append(range(k * block, min(n, (k + 1) * block)))
    return out


def take_blocks(samples: Iterable[T], block: int, rank: int, world: int) -> Iterator[T]:
    """:func:`rank_blocks` over a stream whose length is known only at its end: yields this process's
    blocks as they pass, then the padding blocks (from the first ``world - 1`` blocks, kept in memory)."""
    if block < 1 or not 0 <= rank < world:
        raise ValueError(f"need block >= 1 and 0 <= rank < world, got block={block} rank={rank} world={world}")
    head: List[T] = []
    n = 0
    for i, s in enumerate(samples):
        k = i // block
        if k < world - 1:
            head.append(s)
        if k % world == rank:
            yield s
        n = i + 1
    nb = _ceil_div(n, block)
    for j in range(blocks_per_rank(n, block, world)):
        k = rank + j * world
        if k >= nb:
            first = ((k - nb) % nb) * block
            yield from head[first:first + block]


def assign_shards(counts: Sequence[int], world: int) -> List[List[int]]:
    """Shard indices per process: largest shard first, each to the process with the fewest samples so
    far (ties: the lower rank); each list in shard order. Deterministic."""
    loads = [0] * world
    out: List[List[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(counts)), key=lambda i: (-counts[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        out[r].append(i)
        loads[r] += counts[i]
    return [sorted(o) for o in out]


def shard_split(counts: Sequence[Optional[int]], world: int) -> Optional[List[List[int]]]:
    """:func:`assign_shards` when a shard split is worth it: at least one shard per process, every count
    known, and the padding it needs at most :data:`MAX_SHARD_PADDING` of the samples; else None."""
    if world < 2 or len(counts) < world or any(c is None for c in counts):
        return None
    total = sum(counts)
    if total == 0:
        return None
    parts = assign_shards(counts, world)
    longest = max(sum(counts[i] for i in p) for p in parts)
    return parts if world * longest - total <= MAX_SHARD_PADDING * total else None


def cycle_to(make: Callable[[], Iterable[T]], length: int) -> Iterator[T]:
    """Exactly ``length`` items: ``make()``'s items, then again from its start as often as needed
    (fewer only when ``make()`` yields nothing)."""
    n = 0
    while n < length:
        got = 0
        for item in make():
            if n >= length:
                return
            yield item
            n += 1
            got += 1
        if got == 0:
            return


def shard_stats(urls: Sequence[str]) -> List[Optional[dict]]:
    """The per-shard stats of ``mmit convert`` (``NNNNN_stats.json``, checked complete) of each local
    shard, None where there is none (remote URLs, shards written by other tools)."""
    from mmit.data.shards import complete_shard_stats

    return [complete_shard_stats(u) if os.path.isfile(u) else None for u in urls]


def stats_mix_media(stats: Sequence[Optional[dict]]) -> Optional[bool]:
    """Whether shards with these stats mix samples that hold different media kinds (text-only samples
    next to samples with media, or several kinds); None when a shard has no stats."""
    if any(s is None for s in stats):
        return None
    written = sum(int(s.get("written", 0)) for s in stats)
    text_only = sum(int(s.get("text_only", 0)) for s in stats)
    kinds = {k for s in stats for k in ((s.get("counts") or {}).get("media_kind") or {})}
    return 0 < text_only < written or len(kinds) > 1
