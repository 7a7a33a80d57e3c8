"""CSV annotation files (WebVid, iVQA) read so that a bad row is a counted skip, never a traceback.

:func:`read_csv_header`, :func:`iter_csv_dicts`: the file must be UTF-8 as a whole
(:func:`mmit.data.record_io.check_utf8_prefix`); a row holding undecodable bytes is a
``bad-encoding`` skip. The ``csv`` field size limit is raised to ``max_field_chars``
(:data:`MAX_CSV_FIELD_CHARS`, 16 MiB); a longer field is a ``field-too-large`` skip. No field may
span lines (``multiline_fields=False``): a quoted field running over several lines is what an
unclosed quote gives (it swallows the following rows), so its first line is a ``malformed-csv``
skip and the following lines are read again as rows of their own. Other ``csv.Error`` (a NUL byte,
a stray newline) are ``malformed-csv`` skips too.

Each unreadable row is a :class:`~mmit.data.record_io.BadRecord` in its place (see
:mod:`mmit.data.record_io` for the encoding rules and the JSON side).
"""

from __future__ import annotations

import codecs
import csv
import re
from collections import deque
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple, Union

from mmit.data.record_io import BadRecord, check_utf8_prefix

#: Default upper bound on one CSV field, in characters (Python's ``csv`` default is 131,072).
MAX_CSV_FIELD_CHARS = 16 * 1024 * 1024


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _physical_lines(f: Any) -> Iterator[Tuple[int, bytes]]:
    """``(line number, bytes)`` of a binary file; lines end at ``\n``, ``\r\n`` or a lone ``\r``."""
    lineno = 0
    for raw in f:
        for piece in (_LONE_CR.split(raw) if b"\r" in raw[:-2] else (raw,)):
            if piece:
                lineno += 1
                yield lineno, piece


class _Lines:
    """Physical lines of a binary file as text, with push-back; remembers the lines each CSV row took."""

    def __init__(self, f: Any):
        self._src = _physical_lines(f)
        self.pending: Deque[Tuple[int, str, bool]] = deque()
        self.taken: List[Tuple[int, str, bool]] = []

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        if self.pending:
            item = self.pending.popleft()
        else:
            lineno, raw = next(self._src)
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                item = (lineno, raw.decode("utf-8"), False)
            except UnicodeDecodeError:
                item = (lineno, raw.decode("utf-8", "surrogateescape"), True)
        self.taken.append(item)
        return item[1]


def _csv_rows(path: str, delimiter: str, max_field_chars: int, multiline_fields: bool
              ) -> Iterator[Tuple[int, Union[List[str], BadRecord]]]:
    """``(first line, fields or BadRecord)`` per non-blank CSV row of ``path`` (module docstring)."""
    if csv.field_size_limit() < max_field_chars:
        csv.field_size_limit(max_field_chars)
    with open(path, "rb") as f:
        lines = _Lines(f)
        reader = csv.reader(lines, delimiter=delimiter)
        while True:
            lines.taken = []
            try:
                fields: Optional[List[str]] = next(reader)
                err = None
            except StopIteration:
                return
            except csv.Error as e:
                fields, err = None, str(e)
            taken = lines.taken
            if not taken:
                return
            first = taken[0][0]
            if len(taken) > 1 and not multiline_fields:
                lines.pending.extendleft(reversed(taken[1:]))
                yield first, BadRecord("malformed-csv", f"line {first}: a quoted field runs over the next "
                                       f"{len(taken) - 1} line(s) (an unclosed quote?); this line is skipped "
                                       "and the following lines are read as rows of their own")
            elif err is not None:
                too_large = "field larger than field limit" in err
                yield first, BadRecord("field-too-large" if too_large else "malformed-csv",
                                       f"line {first}: " + (f"a field is longer than {max_field_chars} "
                                                            "characters" if too_large else f"malformed CSV: {err}"),
                                       len(taken))
            elif not fields:
                continue  # a blank line is no record
            elif any(bad for _, _, bad in taken):
                yield first, BadRecord("bad-encoding", f"line {first} holds bytes that are not UTF-8")
            elif any(len(v) > max_field_chars for v in fields):
                yield first, BadRecord("field-too-large", f"line {first}: a field is longer than "
                                                          f"{max_field_chars} characters")
            else:
                yield first, fields


def read_csv_header(path: str, delimiter: str = ",", max_field_chars: int = MAX_CSV_FIELD_CHARS) -> List[str]:
    """The header row (column names) of CSV ``path``; ``[]`` for an empty file.

    Raises ``ValueError`` naming the file when it is not UTF-8 (:func:`check_utf8_prefix`) or the
    header row cannot be read (undecodable, malformed, an unclosed quote)."""
    check_utf8_prefix(path)
    for line, row in _csv_rows(path, delimiter, max_field_chars, False):
        if isinstance(row, BadRecord):
            raise ValueError(f"{path}: cannot read the CSV header: {row.detail}")
        return row
    return []


def iter_csv_dicts(path: str, delimiter: str = ",", *, max_field_chars: int = MAX_CSV_FIELD_CHARS,
                   multiline_fields: bool = False
                   ) -> Iterator[Tuple[int, Union[Dict[Optional[str], Optional[str]], BadRecord]]]:
    """``(line, row)`` per data row of CSV ``path`` (the first row is the header), streamed.

    ``row`` is a dict keyed by header name, as ``csv.DictReader`` gives it (surplus fields in a list
    under the key None, missing fields None), or a :class:`BadRecord` (module docstring:
    ``bad-encoding``, ``field-too-large``, ``malformed-csv``). ``line`` is the row's first physical
    line. ``multiline_fields=True`` accepts quoted fields with line breaks (no fold detection).
    Raises ``ValueError`` as :func:`read_csv_header`.
    """
    header = read_csv_header(path, delimiter, max_field_chars)
    rows = _csv_rows(path, delimiter, max_field_chars, multiline_fields)
    next(rows, None)  # the header, read above
    n = len(header)
    for line, row in rows:
        if isinstance(row, BadRecord):
            yield line, row
            continue
        d: Dict[Optional[str], Any] = dict(zip(header, row))
        if len(row) > n:
            d[None] = row[n:]
        for k in header[len(row):]:
            d[k] = None
        yield line, d
