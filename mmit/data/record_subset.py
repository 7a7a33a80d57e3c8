"""Which input records go into a conversion: ``--max-records`` and ``--sample-rate`` (used by
:func:`mmit.data.convert.convert`).

Positions count every record the reader saw, kept or skipped, so a subset does not depend on how many
records elsewhere in the file were unusable. A record left out by the rate is counted as
``skipped["not-sampled"]``, which keeps ``records_in == written + skipped``.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, List, Optional, Tuple

from mmit.data.sample import Sample
from mmit.data.stats import SkipCounter

#: Skip reason of records left out by ``sample_rate``.
NOT_SAMPLED = "not-sampled"


def is_sampled(position: int, rate: float, seed: int = 0) -> bool:
    """Whether the record at input ``position`` is in the ``rate`` subset for ``seed``.

    A hash of ``(seed, position)`` compared with ``rate``: deterministic across runs, processes
    and machines, and nested (the subset at rate 0.1 is inside the subset at 0.5, same seed)."""
    if rate >= 1.0:
        return True
    h = hashlib.blake2b(f"{int(seed)}/{int(position)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") < rate * 2.0 ** 64


class LimitReached(BaseException):
    """Stops the reader at ``max_records`` (a BaseException, so a reader's ``except Exception``
    cannot swallow it)."""


class Intake(SkipCounter):
    """The reader's skip counter: enforces ``max_records`` on records read (kept + skipped) and
    counts a skipped record that ``sample_rate`` leaves out as ``not-sampled``, whatever the
    reader's reason, so the counts do not depend on records outside the subset."""

    def __init__(self, limit: Optional[int], rate: float, seed: int):
        super().__init__()
        self.limit, self.rate, self.seed, self.kept = limit, rate, seed, 0

    @property
    def seen(self) -> int:
        return self.kept + self.total

    def room(self) -> bool:
        return self.limit is None or self.seen < self.limit

    def add(self, reason, sample_id=None, message=None, n=1):
        if n and not self.room():
            raise LimitReached
        start = self.seen
        out = sum(not is_sampled(p, self.rate, self.seed) for p in range(start, start + n))
        if out:
            super().add(NOT_SAMPLED, n=out)
        if n - out or not n:
            super().add(reason, sample_id, message, n - out)


def chunk_records(samples: Iterator[Sample], intake: Intake, shard_size: int
                  ) -> Iterator[List[Tuple[int, Sample]]]:
    """Cut the reader's samples into lists of ``shard_size`` ``(input position, Sample)`` items,
    keeping only positions in the ``sample_rate`` subset and stopping at ``max_records`` records
    read (kept or skipped); the reader is closed when it stops."""
    chunk: List[Tuple[int, Sample]] = []
    everything = intake.limit is None and intake.rate >= 1.0  # no subset: every record is kept
    try:
        for sample in samples:
            if everything:
                intake.kept += 1
                chunk.append((intake.kept - 1 + intake.total, sample))
                if len(chunk) == shard_size:
                    yield chunk
                    chunk = []
                continue
            if not intake.room():
                break
            position = intake.seen
            if not is_sampled(position, intake.rate, intake.seed):
                intake.add(NOT_SAMPLED)
                continue
            intake.kept += 1
            chunk.append((position, sample))
            if len(chunk) == shard_size:
                yield chunk
                chunk = []
            if not intake.room():
                break
    except LimitReached:
        pass
    finally:
        getattr(samples, "close", lambda: None)()
    if chunk:
        yield chunk
