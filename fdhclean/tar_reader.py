"""A streaming tar reader that accounts for every byte of a shard.

Python's tarfile (and so webdataset) stops silently at the first zero block, skips links and
other non-file members without a word, and over a memory map turns a shard truncated while it
is read into SIGBUS. This reader walks the file with plain sequential reads (a short read is a
clear error naming the offset, never a signal), hashes every byte as it passes (the shard's
sha256 without a second read), and sorts every header into one of: a regular member (yielded
with its data), an extension header (PAX, GNU long name: applied to the next member), a
directory (no data), or a member that is not a regular file (yielded with a problem and no
data, so its sample is reported instead of vanishing). What cannot be parsed raises
`TarFormatError` with the byte offset; the caller names the file.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)
# A complete archive ends in two zero blocks, padded (by tarfile and GNU tar) to a 10240-byte
# record: at most 2 + 19 zero blocks. A longer zero tail is what a crash leaves when the end of
# a file never reached the disk, so it is refused rather than read as a clean end.
MAX_ZERO_TAIL = 2 * BLOCK + tarfile.RECORDSIZE - BLOCK
_PLAIN_TYPES = (b"0", b"\0", b"7")  # regular file, old regular file, contiguous file
_USTAR_MAGIC = (b"ustar\x0000", b"ustar  \0")
_KINDS = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
    b"S": "GNU sparse file",
}


class TarFormatError(Exception):
    """The bytes at `offset` are not a tar archive this reader can account for."""

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.reason = reason
        super().__init__(f"{reason} (at byte {offset})")


@dataclass
class TarEntry:
    """One member: its name (escaped if not UTF-8), header offset, data, and any problem."""

    name: str
    offset: int
    size: int
    data: bytes | None  # None: not read (headers-only walk, or not a regular file)
    problem: str | None = None  # set for members that are not clean regular files


class TarStream:
    """Sequential reads of an open binary file; every byte read is counted and hashed."""

    def __init__(self, fh: BinaryIO, size: int, digest: bool) -> None:
        self.fh = fh
        self.size = size  # at open; a file that shrinks later shows as a short read
        self.offset = 0
        self.archives = 0  # tar archives met so far (more than 1: concatenated)
        self._digest = hashlib.sha256() if digest else None

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if self._digest is not None:
            self._digest.update(data)
        self.offset += len(data)
        return data

    def read_exact(self, n: int, what: str) -> bytes:
        start = self.offset
        # A size past the end of the file is refused before reading: a buffered read allocates
        # what it is asked for, so a forged size would otherwise be a MemoryError.
        fits = n <= self.size - start
        data = self.read(n) if fits else b""
        if len(data) != n:
            end = start + len(data) if fits else self.size
            raise TarFormatError(
                start,
                f"truncated: {what} needs {n} bytes from byte {start} but the file ends at "
                f"byte {end} (cut short, or truncated while it was read)",
            )
        return data

    def skip(self, n: int, what: str) -> None:
        """Pass over `n` bytes: read (and hash) them when hashing, else seek."""
        if self._digest is not None or n < (1 << 16):
            while n > 0:
                self.read_exact(min(n, 1 << 20), what)
                n -= min(n, 1 << 20)
            return
        if self.offset + n > self.size:
            raise TarFormatError(
                self.offset,
                f"truncated: {what} needs {n} bytes from byte {self.offset} but the file ends "
                f"at byte {self.size}",
            )
        self.offset = self.fh.seek(self.offset + n, os.SEEK_SET)

    @property
    def sha256(self) -> str | None:
        return None if self._digest is None else self._digest.hexdigest()


def _octal(field: bytes) -> int | None:
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None


def _plain_header(header: bytes) -> tuple[bytes, int] | None:
    """(raw name, size) of a plain ustar regular-file header with a valid checksum, else None.

    This covers every member Python's tarfile (and so webdataset) writes for short names, and is
    most of the time of reading a shard; anything else goes through `_other_header`.
    """
    if (
        header[156:157] not in _PLAIN_TYPES
        or header[257:265] not in _USTAR_MAGIC
        or header[345] != 0  # a ustar name prefix
        or header[124] & 0x80  # base-256 size
        or header[:100].rstrip(b"\0").endswith(b"/")  # a directory stored as an old regular file
    ):
        return None
    stored, size = _octal(header[148:156]), _octal(header[124:136])
    if stored is None or size is None:
        return None
    if stored != sum(header) - sum(header[148:156]) + 8 * 32:  # checksum field as spaces
        return None
    return header[:100].split(b"\0", 1)[0], size


NOT_UTF8 = "is not valid UTF-8"  # in a member's problem: its name was escaped, not kept


def decode_name(raw: bytes) -> tuple[str, str | None]:
    """(name, problem): a name that is not UTF-8 comes back with `\\xNN` escapes and a problem."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        name = raw.decode("utf-8", "backslashreplace")
        return name, f"its name {raw!r} {NOT_UTF8}"


def _pax_records(data: bytes, offset: int) -> dict[bytes, bytes]:
    """Records `"%d %s=%s\\n"` of a PAX extended header; anything malformed is refused."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        digits = data[pos:space]
        length = int(digits) if 0 < len(digits) <= 20 and digits.isdigit() else 0
        record = data[pos : pos + length]
        if length <= space - pos + 1 or len(record) != length or not record.endswith(b"\n"):
            raise TarFormatError(offset, f"malformed PAX extended header record at +{pos}")
        key, equals, value = record[space - pos + 1 : -1].partition(b"=")
        if not equals:
            raise TarFormatError(offset, f"malformed PAX extended header record at +{pos}")
        records[key] = value
        pos += length
    return records


class _Pending:
    """Extension headers waiting for the member they describe."""

    def __init__(self) -> None:
        self.global_pax: dict[bytes, bytes] = {}
        self.reset()

    def reset(self) -> None:
        self.pax: dict[bytes, bytes] = {}
        self.long_name: bytes | None = None
        self.start: int | None = None  # offset of the first extension header of this member

    def apply(self, info: tarfile.TarInfo, offset: int) -> tuple[bytes, int, str | None]:
        """(raw name, size, problem) of `info` with the pending extensions applied."""
        pax = {**self.global_pax, **self.pax}
        raw = info.name.encode("utf-8", "surrogateescape")
        if self.long_name is not None:
            raw = self.long_name
        if b"path" in pax:
            raw = pax[b"path"]
        size = info.size
        if b"size" in pax:
            if not (pax[b"size"].isdigit() and len(pax[b"size"]) <= 20):
                raise TarFormatError(offset, f"PAX size {pax[b'size']!r} is not an integer")
            size = int(pax[b"size"])
        sparse = any(key.startswith(b"GNU.sparse.") for key in pax)
        return raw, size, ("it is a GNU sparse file" if sparse else None)


def _zero_run(stream: TarStream, start: int) -> bytes | None:
    """After a zero block at `start`: None at a clean end of the file, or the header block of a
    second archive concatenated after this one's end marker. Zeros followed by anything else
    (a header zeroed mid-shard) and an overlong zero tail raise `TarFormatError`."""
    blocks = 1
    while True:
        block = stream.read(BLOCK)
        if not block:
            zeros = stream.offset - start
            if zeros > MAX_ZERO_TAIL:
                raise TarFormatError(
                    start,
                    f"the shard ends in {zeros} zero bytes, more than an end-of-archive marker "
                    f"and its record padding ({MAX_ZERO_TAIL}): its end looks zero-filled (a "
                    "crash before the data reached the disk); samples may be missing",
                )
            return None
        if block.count(0) == len(block):
            blocks += 1
            continue
        at = stream.offset - len(block)
        if blocks >= 2 and len(block) == BLOCK and _is_header(block):
            return block
        if blocks >= 2:  # a complete end-of-archive marker, then something else
            raise TarFormatError(
                start,
                f"data at byte {at}, after the end-of-archive marker, is not a second tar "
                "archive: it cannot be read, so the shard is refused; remove those bytes or "
                "re-create the shard from its source",
            )
        raise TarFormatError(
            start,
            f"a zero-filled block at byte {start} is followed by data at byte {at}: a tar "
            "header was zeroed (e.g. by a crash), so the members after it cannot be located; "
            "re-create this shard from its source",
        )


def _is_header(block: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def walk_tar(stream: TarStream, read_data: bool = True) -> Iterator[TarEntry]:
    """Every member of the archive(s) in `stream`, in order, to the last byte of the file.

    Concatenated archives (`cat a.tar b.tar`) are read one after the other. Directories are
    passed over; other non-regular members are yielded with `problem` set and no data.
    """
    pending = _Pending()
    block: bytes | None = None
    stream.archives = 1
    while True:
        offset = stream.offset if block is None else stream.offset - BLOCK
        if block is None:
            block = stream.read(BLOCK)
        if len(block) < BLOCK:
            raise TarFormatError(
                offset,
                f"truncated: the file ends at byte {offset + len(block)} without an "
                "end-of-archive marker (cut short, or truncated while it was read)",
            )
        if block == ZERO_BLOCK:
            if pending.start is not None:
                raise TarFormatError(pending.start, "extension header without a member after it")
            block = _zero_run(stream, offset)
            if block is None:
                return
            stream.archives += 1
            continue
        entry = _entry(stream, block, offset, pending, read_data)
        block = None
        if entry is not None:
            yield entry


def _entry(
    stream: TarStream, header: bytes, offset: int, pending: _Pending, read_data: bool
) -> TarEntry | None:
    """The member whose header is `header`, or None for extension headers and directories."""
    fast = pending.start is None and not pending.global_pax
    plain = _plain_header(header) if fast else None
    if plain is not None:
        raw, size = plain
        problem = None
    else:
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise TarFormatError(offset, f"corrupt tar header ({exc})") from None
        if info.size < 0:
            raise TarFormatError(offset, f"corrupt tar header (negative size {info.size})")
        if info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.XGLTYPE):
            data = stream.read_exact(info.size + (-info.size % BLOCK), "a PAX header")
            records = _pax_records(data[: info.size], offset)
            (pending.global_pax if info.type == tarfile.XGLTYPE else pending.pax).update(records)
            pending.start = offset if pending.start is None else pending.start
            return None
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            data = stream.read_exact(info.size + (-info.size % BLOCK), "a GNU long name")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                pending.long_name = data[: info.size].split(b"\0", 1)[0]
            pending.start = offset if pending.start is None else pending.start
            return None
        raw, size, problem = pending.apply(info, offset)
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            kind = _KINDS.get(info.type, f"member of unknown type {info.type!r}")
            code = info.type.decode("latin1")
            problem = f"it is a {kind} (tar type {code!r}), not a regular file"
        if info.type == tarfile.DIRTYPE:
            problem = "directory"
    start = pending.start if pending.start is not None else offset
    pending.reset()
    name, name_problem = decode_name(raw)
    padded = size + (-size % BLOCK)
    what = f"member {name!r}"
    if problem == "directory":
        stream.skip(padded, what)
        return None
    if problem is not None or not read_data:
        stream.skip(padded, what)
        data = None
    else:
        data = stream.read_exact(size, what)
        if padded != size:
            stream.read_exact(padded - size, what)
    problems = [p for p in (name_problem, problem) if p]
    if problems:
        note = "; ".join(problems) + ("; its data is not read" if problem else "")
        return TarEntry(name, start, size, data, f"member {name!r} at byte {start}: {note}")
    return TarEntry(name, start, size, data)
