"""Reading annotation files so that a bad input is a counted skip or a one-line error, never a
traceback: text decoding, JSON / JSONL records and CSV rows for the source readers.

* **Encoding** (:func:`decode_text`, :func:`check_utf8_prefix`). Files are UTF-8 (a UTF-8 BOM is
  dropped). A file that does not decode is refused as a whole, with a one-line ``ValueError``
  naming the file, the line and byte of the first bad byte, when it has a UTF-16/UTF-32 byte-order
  mark, holds NUL bytes, or when most of its non-ASCII text is undecodable (at least 2 undecodable
  lines, more than half of the lines holding non-ASCII bytes and more than 1% of all lines: a
  Latin-1 or cp1252 file). Otherwise it is decoded with ``errors="surrogateescape"`` and every
  record holding an undecodable byte is a counted skip, reason ``bad-encoding`` (a JSONL line or a
  CSV row here; inside a JSON list, :meth:`~mmit.data.sample.Sample.validate` finds the lone
  surrogate the byte became, in the record's text or meta).
* **Nesting** (:func:`iter_json_records`). A JSONL line nested deeper than the JSON parser can
  follow is a ``too-deep`` skip; a JSON list that the parser cannot read for that reason is split
  into its elements, and elements deeper than ``max_depth`` (:data:`MAX_JSON_DEPTH`) are ``too-deep``
  skips while the others are read. Parsed records whose extra fields nest deeper than
  :data:`~mmit.data.sample.MAX_META_DEPTH` are refused by ``Sample.validate`` (``too-deep``).
* **Numbers**: a record holding an integer longer than Python converts (4300 digits) is a
  ``number-too-large`` skip (JSONL line, JSON list element); in a whole-file document
  (:func:`load_json_document`) it is a one-line ``ValueError`` naming the file.
* **CSV**: :mod:`mmit.data.record_csv` (streamed rows with the same skip rules).

A record that cannot be read is yielded as a :class:`BadRecord` in its place, so the reader counts it
under its reason (records in = yielded + skipped) or, under ``missing="error"``, raises it naming
the file and line (:meth:`BadRecord.error`).
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Iterator, Optional, Tuple

from mmit.data.sample import SampleError, has_lone_surrogate

#: Elements of a JSON list nested deeper than this are ``too-deep`` skips (when the parser cannot
#: read the list whole); LLaVA-style records nest 3-5 levels.
MAX_JSON_DEPTH = 64

#: Skip reason of a JSON record holding an integer with more digits than Python converts
#: (``sys.get_int_max_str_digits()``, 4300 by default): ``json.loads`` raises a plain ``ValueError``.
NUMBER_TOO_LARGE = "number-too-large"

#: How much of a CSV file :func:`check_utf8_prefix` looks at before streaming it.
_PREFIX_BYTES = 4 * 1024 * 1024

_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]', re.S)


class BadRecord:
    """Stands in for a record the file reader could not read.

    reason: skip reason (``too-deep``, ``bad-encoding``, ``field-too-large``, ``malformed-csv``).
    detail: why, naming the line where known (the reader puts file and record in front).
    lines:  physical lines the record took (1, or more for a CSV row whose lines cannot be re-read).
    """

    __slots__ = ("reason", "detail", "lines")

    def __init__(self, reason: str, detail: str, lines: int = 1):
        self.reason, self.detail, self.lines = reason, detail, int(lines)

    def error(self, where: str) -> SampleError:
        """The :class:`SampleError` to count or raise: ``"{where}: {detail}"`` with this reason."""
        return SampleError(f"{where}: {self.detail}", self.reason)

    def __repr__(self) -> str:
        return f"BadRecord({self.reason!r}, {self.detail!r})"


# -- text ------------------------------------------------------------------------------------------

def _refuse_if_not_utf8(data: bytes, path: str, first_bad: int) -> None:
    """Raise ``ValueError`` naming ``path`` if ``data`` (which fails strict UTF-8 decoding at byte
    ``first_bad``) is not UTF-8 as a whole (module docstring); return if only some records are bad."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise ValueError(f"{path}: the file is {name} (byte-order mark), not UTF-8; re-encode it, "
                             f"e.g. iconv -f {name} -t UTF-8")
    line_no = data.count(b"\n", 0, first_bad) + 1
    if b"\x00" in data[:65536]:
        raise ValueError(f"{path}: the file holds NUL bytes (UTF-16 without a byte-order mark, or binary), "
                         f"not UTF-8 text (first undecodable byte at line {line_no}, byte {first_bad})")
    lines = nonascii = bad = 0
    for raw in data.split(b"\n"):
        lines += 1
        if raw.isascii():
            continue
        nonascii += 1
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
    if bad >= 2 and bad * 2 > nonascii and bad * 100 > lines:
        raise ValueError(f"{path}: not UTF-8: {bad} of the {nonascii} lines with non-ASCII bytes do not "
                         f"decode (first at line {line_no}, byte {first_bad}); re-encode the file as UTF-8, "
                         "e.g. iconv -f latin1 -t utf-8")


def decode_text(data: bytes, path: str) -> Tuple[str, bool]:
    """``(text, has_bad_bytes)``: ``data`` decoded as UTF-8 (BOM dropped).

    When strict decoding fails and the file is not refused as a whole, undecodable bytes become
    lone surrogates (``surrogateescape``) and ``has_bad_bytes`` is True, for the caller to skip the
    records holding them. Raises ``ValueError`` naming ``path`` for a file that is not UTF-8.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError as e:
        _refuse_if_not_utf8(data, path, e.start)
    return data.decode("utf-8", "surrogateescape"), True


def check_utf8_prefix(path: str) -> None:
    """Apply the whole-file rule of :func:`decode_text` to the first 4 MiB of ``path`` (cut at a
    line end), so that a streamed file in another encoding is refused before any row is read.
    Raises ``ValueError`` naming the file."""
    with open(path, "rb") as f:
        data = f.read(_PREFIX_BYTES)
        if len(data) == _PREFIX_BYTES and b"\n" in data:
            data = data[:data.rindex(b"\n") + 1]
    decode_text(data, path)


# -- JSON ------------------------------------------------------------------------------------------

def _json_error(path: str, e: json.JSONDecodeError, offset: int = 0, text: str = "") -> ValueError:
    if offset:
        line = text.count("\n", 0, offset + e.pos) + 1
        col = offset + e.pos - (text.rfind("\n", 0, offset + e.pos) + 1) + 1
        return ValueError(f"{path}: malformed JSON at line {line}, column {col}: {e.msg}")
    return ValueError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}")


def _list_elements(text: str, path: str, max_depth: int) -> Iterator[Tuple[int, Any, None]]:
    """The elements of the top-level JSON list in ``text``, one by one: for a list the parser cannot
    read whole (too deep). Elements deeper than ``max_depth`` become ``too-deep`` :class:`BadRecord`."""
    depth = deepest = index = 0
    start = None
    line, line_pos = 1, 0

    def element(s: int, e: int) -> Any:
        nonlocal line, line_pos
        line += text.count("\n", line_pos, s)
        line_pos = s
        if deepest - 1 > max_depth:
            return BadRecord("too-deep", f"nested {deepest - 1} levels deep (limit {max_depth}), "
                                         f"starting at line {line}")
        try:
            return json.loads(text[s:e])
        except RecursionError:
            return BadRecord("too-deep", f"nested too deep for the JSON parser, starting at line {line}")
        except json.JSONDecodeError as err:
            raise _json_error(path, err, s, text) from None
        except ValueError as err:  # an integer longer than int() converts (sys.get_int_max_str_digits)
            return BadRecord(NUMBER_TOO_LARGE, f"record starting at line {line}: {err}")

    end = None
    for m in _TOKEN.finditer(text, text.index("[")):
        c = text[m.start()]
        if c == '"':
            continue
        if c in "[{":
            depth += 1
            if depth == 1:
                start, deepest = m.end(), 1
            deepest = max(deepest, depth)
        elif c in "]}":
            if depth == 1:
                if c != "]":
                    raise ValueError(f"{path}: malformed JSON at line {text.count(chr(10), 0, m.start()) + 1}: "
                                     "'}' closes the top-level list")
                if index or text[start:m.start()].strip():
                    yield index, element(start, m.start()), None
                end = m.end()
                break
            depth -= 1
        elif depth == 1:  # a comma between two elements
            yield index, element(start, m.start()), None
            index, start, deepest = index + 1, m.end(), 1
    if end is None:
        raise ValueError(f"{path}: malformed JSON: the top-level list is never closed")
    if text[end:].strip():
        raise ValueError(f"{path}: malformed JSON at line {text.count(chr(10), 0, end) + 1}: extra data "
                         "after the top-level list")


def iter_json_records(path: str, max_depth: int = MAX_JSON_DEPTH
                      ) -> Iterator[Tuple[int, Any, Optional[int]]]:
    """Yield ``(index, record, line)`` from a JSON list file or a JSONL file.

    ``line`` is the 1-based line number for JSONL input and None for a JSON list. A file whose first
    non-blank character is ``[`` is a JSON list; otherwise it is read as JSONL (blank lines skipped;
    lines end at ``\\n`` only, so a raw U+2028 inside a string stays in its line), unless the whole
    file is one JSON object, which is one record. ``record`` is a :class:`BadRecord` for a record that
    cannot be read: ``bad-encoding`` (a JSONL line with bytes that are not UTF-8) or ``too-deep``
    (module docstring).

    Raises ``ValueError`` naming ``path`` (and line/column) for a syntax error, a top level that is
    neither a list nor an object, or a file that is not UTF-8 (:func:`decode_text`).
    """
    with open(path, "rb") as f:
        text, has_bad_bytes = decode_text(f.read(), path)
    head = text.lstrip()[:1]
    if head == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _json_error(path, e) from None
        except (RecursionError, ValueError):  # too deep, or an integer too long: element by element
            data = None
        if data is None:
            yield from _list_elements(text, path, max_depth)
            return
        for i, rec in enumerate(data):
            yield i, rec, None
        return
    if head == "{":
        try:
            whole = json.loads(text)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            whole = None  # JSONL (or broken): the line-by-line pass below reports the exact line
        if isinstance(whole, dict):
            yield 0, whole, 1
            return
    elif head:
        raise ValueError(f"{path}: expected a JSON list of records or JSONL objects, file starts "
                         f"with {head!r}")
    index = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if has_bad_bytes and has_lone_surrogate(line):
            rec: Any = BadRecord("bad-encoding", f"line {lineno} holds bytes that are not UTF-8")
        else:
            try:
                rec = _loads_line(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno}: malformed JSON at column {e.colno}: "
                                 f"{e.msg}") from None
            except RecursionError:
                rec = BadRecord("too-deep", f"line {lineno} is nested too deep for the JSON parser")
            except ValueError as e:  # an integer longer than int() converts
                rec = BadRecord(NUMBER_TOO_LARGE, f"line {lineno}: {e}")
        yield index, rec, lineno
        index += 1


#: ``json``'s own scanner (its C one where available), called without ``json.loads``' checks.
_SCAN_ONCE = json.JSONDecoder().scan_once


def _loads_line(line: str) -> Any:
    """``json.loads(line)``: a line that is one object from its first to its last character is
    read by the scanner directly (``loads`` would also look for a BOM and match whitespace at
    both ends); anything else, and every error, goes through ``json.loads`` itself."""
    if line[:1] == "{":
        try:
            obj, end = _SCAN_ONCE(line, 0)
        except (StopIteration, ValueError, RecursionError):
            obj, end = None, -1  # json.loads raises the error itself
        if end == len(line):
            return obj
    return json.loads(line)


def load_json_document(path: str, what: str = "JSON") -> Any:
    """The one JSON value in ``path`` (a whole-file document such as a MIMIC-IT instruction file).

    Raises ``ValueError`` naming ``path`` in one line: malformed JSON (line, column), nested too
    deep for the parser, or not UTF-8 (:func:`decode_text`; undecodable bytes in a file that is
    mostly UTF-8 are kept as lone surrogates, which ``Sample.validate`` refuses as ``bad-encoding``
    in the records that hold them)."""
    with open(path, "rb") as f:
        text, _ = decode_text(f.read(), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed {what} at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise ValueError(f"{path}: {what} nested too deep for the JSON parser") from None
    except ValueError as e:  # an integer longer than int() converts (sys.get_int_max_str_digits)
        raise ValueError(f"{path}: unreadable {what}: {e}") from None
