"""Skip accounting shared by source readers, ``mmit convert`` and its ``_stats.json``.

Every record a reader or the converter drops is counted under a short kebab-case *reason*
(``missing-media``, ``invalid-record``, ``undecodable-image``, ``roles-not-alternating``, ...; the
reasons of :class:`~mmit.data.sample.SampleError`). The counts end up in the per-shard
``NNNNN_stats.json`` and the run's ``_stats.json``, where ``records_in == written + sum(skipped)``.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Union

_KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def _utf8_safe(text: str) -> str:
    """``text`` with lone surrogates (a non-UTF-8 byte read with ``surrogateescape``, a ``\\ud800``
    escape in JSON) written as ``\\udcff``: skip messages quote ids and paths from the input, and
    ``_stats.json`` must still encode as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class SkipCounter:
    """Counts skipped records by reason and keeps the first few messages per reason for the log.

    Args:
        max_examples: how many ``"id: message"`` strings to keep per reason (default 3).

    Example::

        stats = SkipCounter()
        stats.add("missing-media", "000000033471", "coco/train2017/000000033471.jpg not found")
        stats.total        # 1
        stats.as_dict()    # {"missing-media": 1}
        bool(stats)        # True: something was skipped

    Picklable (plain dicts), so worker processes can return one and the parent :meth:`merge` it.
    """

    def __init__(self, max_examples: int = 3):
        self.max_examples = int(max_examples)
        self.counts: Dict[str, int] = {}
        self.examples: Dict[str, List[str]] = {}

    def add(self, reason: str, sample_id: Optional[object] = None, message: Optional[str] = None,
            n: int = 1) -> None:
        """Count ``n`` skips under ``reason``.

        Args:
            reason: kebab-case key (e.g. ``missing-media``). Raises ``ValueError`` otherwise, so typos
                such as ``missing_media`` cannot silently open a second bucket.
            sample_id: the skipped record's id (or index), kept in the example message.
            message: why, for the log; only the first ``max_examples`` per reason are kept.
            n: how many records this call accounts for (>= 0).
        """
        if not isinstance(reason, str) or not _KEBAB.match(reason):
            raise ValueError(f"skip reason {reason!r} is not kebab-case")
        if n < 0:
            raise ValueError(f"skip count must be >= 0, got {n}")
        if n:
            self.counts[reason] = self.counts.get(reason, 0) + int(n)
        if sample_id is not None or message is not None:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < self.max_examples:
                text = message if message is not None else ""
                kept.append(_utf8_safe(f"{sample_id}: {text}" if sample_id is not None else text))

    @property
    def total(self) -> int:
        """Number of skipped records over all reasons."""
        return sum(self.counts.values())

    def as_dict(self) -> Dict[str, int]:
        """``{reason: count}`` sorted by reason (stable JSON output)."""
        return {k: self.counts[k] for k in sorted(self.counts)}

    def examples_dict(self) -> Dict[str, List[str]]:
        """``{reason: [first messages]}`` sorted by reason."""
        return {k: list(self.examples[k]) for k in sorted(self.examples)}

    def merge(self, other: Union["SkipCounter", Mapping[str, int]]) -> "SkipCounter":
        """Add another counter's counts (and examples, up to ``max_examples``) into this one.

        ``other`` may also be a plain ``{reason: count}`` mapping (e.g. read back from a
        ``_stats.json``). Returns self.
        """
        if isinstance(other, SkipCounter):
            counts, examples = other.counts, other.examples
        else:
            counts, examples = dict(other), {}
        for reason, n in counts.items():
            self.add(reason, n=n)
        for reason, msgs in examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(msgs[: max(0, self.max_examples - len(kept))])
        return self

    def summary(self) -> str:
        """One line such as ``missing-media=3, invalid-record=1`` (``none`` when empty)."""
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) or "none"

    def __bool__(self) -> bool:
        return self.total > 0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SkipCounter):
            return self.as_dict() == other.as_dict()
        if isinstance(other, Mapping):
            return self.as_dict() == {k: v for k, v in other.items()}
        return NotImplemented

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()!r})"
