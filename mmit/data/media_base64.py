"""Base64 media as found in instruction JSON (MIMIC-IT's image store, MMC4's ``image_base64``, data
URIs): :func:`decode_base64`, with the standard and URL-safe alphabets, missing padding, embedded
whitespace and ``data:`` prefixes, and a counted ``bad-base64`` skip for anything else.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Union

from mmit.data.sample import SampleError

_B64_DATA_URI = re.compile(r"^data:[^,;]*(?:;[^,;]*)*;base64,", re.I)
_B64_URLSAFE = bytes.maketrans(b"-_", b"+/")
_B64_WS = b" \t\r\n\f\v"  # deleted by bytes.translate (a C loop; a regex over MBs of payload is 5x slower)


try:
    import pybase64 as _pybase64
except ImportError:  # pragma: no cover - optional speed-up
    _pybase64 = None


def _strict_b64decode(data: Union[bytes, str]) -> bytes:
    """Standard-alphabet base64 (bytes, or a str of ASCII characters) with correct padding,
    anything else rejected (``binascii.Error`` or ``ValueError``): ``pybase64`` (SIMD, ~10x faster) when installed, else
    ``base64.b64decode(validate=True)``. Both accept exactly the same strings and return the
    same bytes (tests/test_convert_golden.py compares them)."""
    if _pybase64 is not None:
        return _pybase64.b64decode(data, validate=True)
    return base64.b64decode(data, validate=True)


def decode_base64(text: Any, where: str) -> bytes:
    """Decode base64 media as found in instruction JSON (MIMIC-IT's image JSON, data URIs, ...).

    Accepts the standard (``+/``) and the URL-safe (``-_``, RFC 4648 §5) alphabets, missing ``=``
    padding, embedded whitespace/newlines, a ``data:image/png;base64,`` prefix and ``bytes`` input.
    Returns the decoded bytes.

    Raises :class:`SampleError` (reason ``bad-base64``) naming ``where`` for non-string input, an
    empty payload, characters outside both alphabets or an impossible length.
    """
    if isinstance(text, str) and text:
        try:  # the usual case, well-formed standard base64: decoded in one strict pass
            return _strict_b64decode(text)  # an ASCII str as it is: no encoded copy of the payload
        except (binascii.Error, ValueError, UnicodeEncodeError):
            pass  # URL-safe alphabet, whitespace, a data URI, missing padding, or bad input
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("ascii", errors="replace")
    if not isinstance(text, str):
        raise SampleError(f"{where}: base64 media must be a string, got {type(text).__name__}",
                          "bad-base64")
    # non-ASCII characters become "?", which the strict decode below rejects
    body = _B64_DATA_URI.sub("", text.strip(), count=1).encode("ascii", errors="replace")
    body = body.translate(_B64_URLSAFE, _B64_WS)
    if not body:
        raise SampleError(f"{where}: empty base64 payload", "bad-base64")
    body = body.rstrip(b"=")
    if len(body) % 4 == 1:
        raise SampleError(f"{where}: base64 payload has an impossible length ({len(body)} "
                          f"characters without padding)", "bad-base64")
    try:  # (the error messages of the standard library)
        return base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise SampleError(f"{where}: invalid base64: {e}", "bad-base64") from None
