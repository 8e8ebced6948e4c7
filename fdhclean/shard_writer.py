"""Writing FDH shards: deterministic tar bytes, written atomically.

The bytes are exactly those Python's tarfile writes in PAX format (webdataset's default) with
fixed mtime, uid/gid 0, empty user/group names and mode 0o644, so a rerun reproduces a shard
byte for byte; headers are built here directly because tarfile's Python header code is the
largest cost of rewriting a shard.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from fdhclean.atomic import fsync_dir

BLOCK = tarfile.BLOCKSIZE
# PAX is POSIX, the default of Python's tarfile (and so of webdataset's TarWriter), and adds an
# extended header only when a field does not fit ustar; with the fixed fields below it is
# byte-for-byte deterministic.
TAR_FORMAT = tarfile.PAX_FORMAT


def _tar_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@functools.lru_cache(maxsize=8)
def _header_template(mtime: int) -> bytes:
    """tarfile's header for an empty member named "x": the fields every member shares."""
    return _tar_info("x", 0, mtime).tobuf(TAR_FORMAT, tarfile.ENCODING, "surrogateescape")


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """The header block(s) tarfile writes for one member, byte for byte.

    tarfile builds every header in Python (PAX checks, octal fields, checksum) at ~0.15 ms a
    member, the largest cost of rewriting a shard. For the common case (an ASCII name of at
    most 100 bytes, size < 8 GiB) the header is tarfile's own template with the name, size and
    checksum fields patched; anything else (long or non-ASCII names, which need a PAX extended
    header) goes through tarfile. tests/test_shards.py checks the two agree.
    """
    raw = name.encode("ascii", "surrogateescape") if name.isascii() else None
    if raw is None or len(raw) > 100 or size >= 8**11:
        return _tar_info(name, size, mtime).tobuf(TAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    block = bytearray(_header_template(mtime))
    block[0:100] = raw.ljust(100, b"\0")
    block[124:136] = b"%011o\0" % size
    block[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _check_utf8(key: str, members: Mapping[str, bytes], path: Path) -> None:
    """Member names are written as UTF-8: a name that cannot be (a lone surrogate, as Python
    decodes undecodable bytes) is refused naming the sample, never a UnicodeEncodeError."""
    for suffix in members:
        try:
            f"{key}.{suffix}".encode()
        except UnicodeEncodeError:
            raise ValueError(
                f"sample {key!r} for {path}: member name {f'{key}.{suffix}'!r} is not valid "
                "UTF-8 text"
            ) from None


class ShardWriter:
    """Write one shard atomically with deterministic headers.

    Samples go to a temporary file in the target directory; a clean `close()` (or `with` exit)
    fsyncs it and renames it to `path`; an exception (or `abort()`) removes it, so `path` is
    either the previous file or the complete new shard, never a partial one. The bytes are
    those Python's tarfile writes in PAX format (webdataset's default) with fixed mtime,
    uid/gid 0, empty user/group names and mode 0o644. Every byte is hashed as it is written:
    after `close()`, `sha256` is the hex digest of the shard and `bytes` its size (no re-read).
    """

    def __init__(self, path: str | Path, *, mtime: int = 0) -> None:
        self.path = Path(path)
        self.mtime = int(mtime)
        self.samples = 0
        self.sha256: str | None = None  # set by a clean close()
        self.bytes = 0
        self._keys: set[str] = set()
        self._offset = 0
        self._digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self.tmp_path = Path(tmp)
        self._file: io.BufferedWriter | None = os.fdopen(fd, "wb", buffering=1 << 20)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        """Append one sample: each member as `f"{key}.{suffix}"`, in the given order."""
        if self._file is None:
            raise ValueError(f"shard writer for {self.path} is closed")
        name = key.rpartition("/")[2]
        if not name or "." in name:
            raise ValueError(f"invalid sample key {key!r} for {self.path} (empty or has a dot)")
        if key in self._keys:
            raise ValueError(f"sample key {key} written twice to {self.path}")
        if not members:
            raise ValueError(f"sample {key} for {self.path} has no members")
        seen: set[str] = set()
        for suffix in members:
            if not suffix or "/" in suffix or suffix.lower() in seen:
                raise ValueError(f"invalid or repeated member {suffix!r} in sample {key}")
            seen.add(suffix.lower())
        _check_utf8(key, members, self.path)
        write, update = self._file.write, self._digest.update
        for suffix, data in members.items():
            header = tar_header(f"{key}.{suffix}", len(data), self.mtime)
            padding = b"\0" * (-len(data) % BLOCK)
            for part in (header, data, padding):
                write(part)
                update(part)
            self._offset += len(header) + len(data) + len(padding)
        self._keys.add(key)
        self.samples += 1

    def close(self) -> None:
        """Finish the tar (two zero blocks, padded to tarfile's record size), fsync, rename onto
        `path` and fsync the directory."""
        if self._file is None:
            return
        try:
            end = self._offset + 2 * BLOCK
            trailer = b"\0" * (2 * BLOCK + (-end % tarfile.RECORDSIZE))
            self._file.write(trailer)
            self._digest.update(trailer)
            self._file.flush()
            os.fsync(self._file.fileno())
            os.fchmod(self._file.fileno(), 0o644)  # mkstemp makes 0600; shards are shared data
            self._file.close()
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._file = None
        self.sha256, self.bytes = self._digest.hexdigest(), self._offset + len(trailer)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop everything written so far; `path` is left untouched."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # the file is discarded below anyway
                self._file.close()
        self._file = None
        self.tmp_path.unlink(missing_ok=True)
