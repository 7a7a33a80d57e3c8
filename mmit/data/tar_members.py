"""A minimal ustar writer for shards: the bytes ``tarfile`` (and webdataset's ``TarWriter``) write,
without their per-member Python work.

webdataset's ``TarWriter.write`` builds a ``tarfile.TarInfo`` per member, ``tarfile.addfile`` copies
it, encodes eleven header fields one by one and copies the data through a ``BytesIO``; for a 50 KB
image that costs as much as writing the image. Every shard member here differs only in its name and
size (mode, owner, group and mtime are fixed for reproducibility), so :class:`TarMembers` keeps the
header ``tarfile`` produces for those fixed fields as a template, patches the name, size and
checksum, and hands header, data and zero padding to one ``os.writev`` per sample: no copy of the
media bytes. The archive is byte-identical to ``tarfile.open(mode="w", format=USTAR_FORMAT)`` with
``addfile`` of the same members followed by ``close`` (two zero blocks, padding to a 10 KiB record);
``tests/test_data_shards.py`` compares the two and ``tests/test_convert_golden.py`` pins the bytes.
Names that are not short ASCII (ustar would split them into prefix and name) and sizes beyond the
ustar limit go through ``tarfile.TarInfo.tobuf`` itself, which writes the same header or raises its
``ValueError``.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from typing import List, Optional, Sequence, Tuple, Union

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 20 blocks
_ZEROS = bytes(BLOCK)
_IOV_MAX = 1000  # iovecs per writev (Linux allows 1024)
Data = Union[bytes, bytearray, memoryview]


def _byte_sum(data: bytes) -> int:
    """``sum(data)`` for at most 256 bytes, in C: Adler-32's low half is 1 + the byte sum modulo
    65521, and 256 bytes sum to at most 65280."""
    return (zlib.adler32(data) & 0xFFFF) - 1


def _tarinfo(name: str, size: int, mtime: int, mode: int, user: str, group: str
             ) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)  # what webdataset's TarWriter.write sets
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, mtime, mode, user, group
    return ti


class TarMembers:
    """Append regular-file members to an open binary file, as ustar ``tarfile`` would.

    Args:
        fileobj: a binary file opened for writing at offset 0 (its descriptor is written to
            directly; anything buffered in ``fileobj`` is flushed first).
        mtime, mode, user, group: the fixed header fields of every member.

    :attr:`offset` is the archive's size so far (as ``TarFile.offset``). Raises ``OSError`` from
    the writes and ``ValueError`` (from ``tarfile``) for a member ustar cannot hold.
    """

    def __init__(self, fileobj, mtime: int = 0, mode: int = 0o444, user: str = "mmit",
                 group: str = "mmit"):
        self._file = fileobj
        self._fd = fileobj.fileno()
        self._fixed = (int(mtime), int(mode), user, group)
        head = bytearray(_tarinfo("x", 0, *self._fixed).tobuf(tarfile.USTAR_FORMAT, "utf-8",
                                                              "surrogateescape"))
        head[0:100] = bytes(100)
        head[124:136] = b" " * 12  # size: replaced per member
        head[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
        self._template = bytes(head)
        self._template_sum = sum(head) - sum(b" " * 12)
        # the fixed stretches between the patched fields (mode..mtime, checksum's end..)
        self._mode_to_mtime, self._mtime = bytes(head[100:124]), bytes(head[136:148])
        self._after_sum = bytes(head[156:])
        self.offset = 0
        self.closed = False

    def _header(self, name: str, size: int) -> bytes:
        raw = name.encode("ascii", "surrogateescape") if name.isascii() else b""
        if not raw or len(raw) >= 100 or not 0 <= size < 0o77777777777:
            return _tarinfo(name, size, *self._fixed).tobuf(tarfile.USTAR_FORMAT, "utf-8",
                                                            "surrogateescape")
        size_field = b"%011o\0" % size
        chksum = self._template_sum + _byte_sum(raw) + _byte_sum(size_field)
        return b"".join((raw, _ZEROS[:100 - len(raw)], self._mode_to_mtime, size_field,
                         self._mtime, b"%06o\0 " % chksum, self._after_sum))

    def add(self, members: Sequence[Tuple[str, Data]]) -> None:
        """Append ``(name, bytes)`` members in the order given (one ``writev`` for all)."""
        parts: List[Data] = []
        total = 0
        for name, data in members:
            size = len(data) if not isinstance(data, memoryview) else data.nbytes
            head = self._header(name, size)
            parts.append(head)
            if size:
                parts.append(data)
            pad = -size % BLOCK
            if pad:
                parts.append(_ZEROS[BLOCK - pad:])
            total += len(head) + size + pad
        self._write(parts, total if len(parts) <= _IOV_MAX else None)

    def _write(self, parts: List[Data], total: Optional[int] = None) -> None:
        """Write ``parts`` (``total``: their byte count when known and one ``writev`` takes them)."""
        self._file.flush()
        for i in range(0, len(parts), _IOV_MAX):
            chunk = parts[i:i + _IOV_MAX]
            if total is None or i:
                total = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in chunk)
            done = os.writev(self._fd, chunk)
            if done != total:  # a short write (rare on regular files): finish part by part
                self._finish_short(chunk, done)
            self.offset += total

    def _finish_short(self, chunk: List[Data], done: int) -> None:
        for p in chunk:
            view = memoryview(p).cast("B")
            if done >= len(view):
                done -= len(view)
                continue
            view, done = view[done:], 0
            while len(view):
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        """Write the end of the archive (two zero blocks, zeros up to a whole 10 KiB record), as
        ``TarFile.close``; the file itself stays open. Idempotent."""
        if self.closed:
            return
        end = 2 * BLOCK
        end += -(self.offset + end) % RECORD
        self._write([bytes(end)])
        self.closed = True
