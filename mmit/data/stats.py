"""Skip accounting shared by source readers, ``mmit convert`` and its ``_stats.json``.

Every record a reader or the converter drops is counted under a short kebab-case *reason*
(``missing-media``, ``invalid-record``, ``undecodable-image``, ``roles-not-alternating``, ...; the
reasons of :class:`~mmit.data.sample.SampleError`). The counts end up in the per-shard
``NNNNN_stats.json`` and the run's ``_stats.json``, where ``records_in == written + sum(skipped)``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Union

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


# -- reporting a conversion's skips (mmit convert) ------------------------------------------------

#: Skip reasons :func:`skip_report` lists (the most frequent first).
TOP_REASONS = 5
#: Skip reason → the flag that usually turns it into written records.
_HINTS = {"media-outside-root": "--allow-absolute-media if the annotation may name media "
                                "outside --media-root",
          "empty-answer": "--allow-empty-answers to keep records with empty answers",
          "not-sampled": "--sample-rate (it left every record out)"}


def skip_report(stats: Dict[str, Any], top: int = TOP_REASONS) -> List[str]:
    """Lines for stderr: the ``top`` most frequent skip reasons of a conversion's ``_stats.json``
    dict, each with its count, share and one example (record id and message; examples of shards
    kept from an earlier run are not known). ``[]`` when nothing was skipped."""
    skipped = stats.get("skipped") or {}
    if not skipped:
        return []
    total, examples = sum(skipped.values()), stats.get("skip_examples") or {}
    order = sorted(skipped, key=lambda r: (-skipped[r], r))
    lines = [f"mmit convert: {total} of {stats.get('records_in', total)} records skipped; "
             f"{'top reasons' if len(order) > top else 'reasons'} (all examples in "
             f"{os.path.join(stats.get('output', '.'), '_stats.json')} under skip_examples):"]
    for reason in order[:top]:
        ex = (examples.get(reason) or [None])[0]
        ex = (f"e.g. {' '.join(str(ex).split())[:400]}" if ex is not None else
              "left out by --sample-rate" if reason == "not-sampled" else
              "(no example: skipped in a shard kept from an earlier run)")
        lines.append(f"  {reason}: {skipped[reason]} ({100 * skipped[reason] / total:.0f}%), {ex}")
    if len(order) > top:
        rest = sum(skipped[r] for r in order[top:])
        lines.append(f"  ... {len(order) - top} other reason(s): {rest} record(s)")
    return lines


def nothing_written(stats: Dict[str, Any], media_root: Optional[str] = None) -> str:
    """The one-line message (naming the input file) for a conversion that wrote no record, with
    the flag most likely to help: ``--media-root`` when the records miss their media and none
    (``media_root`` None) was given."""
    n, skipped = stats.get("records_in", 0), stats.get("skipped") or {}
    if not n:
        return f"nothing was written: the input {stats.get('input')} holds no records"
    top = max(skipped, key=lambda r: (skipped[r], r)) if skipped else None
    msg = (f"nothing was written: all {n} records of {stats.get('input')} were skipped "
           f"(most: {top}={skipped.get(top)})")
    if top == "missing-media":
        msg += ("; no --media-root was given: pass the folder the records' media paths are "
                "relative to" if media_root is None else f"; are the media paths relative to "
                f"--media-root {media_root}?")
    elif top in _HINTS:
        msg += f"; see {_HINTS[top]}"
    return msg
