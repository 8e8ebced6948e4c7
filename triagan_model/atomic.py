"""The one way triagan_model writes a file, and the one way it hashes one.

Every output goes to a temporary name in the target's directory (unique per process and per
call, so two processes writing the same target never remove each other's file), is fsynced,
then `os.replace`d over the target; on an exception the temporary file is removed. A file that
exists under its final name is therefore complete. `atomic_path` serves libraries that insist
on writing to a path themselves (`safetensors.save_file`, `savefig`, `np.savez`, PIL): it
yields the temporary path, which keeps the target's suffix so format detection still works.

This mirrors `fdhclean/atomic.py` by design; the two packages never import each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_HASH_CHUNK = 1 << 20


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself has happened
    finally:
        os.close(fd)


def _fsync_path(path: str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path` for a library to write to; on a clean exit it is
    fsynced and replaces `path`, on an exception it is removed. Creates the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The suffix ends in the target's own (".png", ".npz") so writers that pick the format
    # from the name, or append one when it is missing (np.savez), write exactly this file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent)  # fmt: skip
    os.close(fd)
    try:
        yield tmp
        _fsync_path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; it replaces `path` on a clean exit and
    is removed on an exception. `mode` is "wb" or "w" (UTF-8 text)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only ('wb' or 'w'), got mode {mode!r}")
    with atomic_path(path) as tmp:
        encoding = None if mode == "wb" else "utf-8"
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, doc: Any, *, sort_keys: bool = False) -> None:
    """Write `doc` as indented JSON (trailing newline) to `path` atomically."""
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=sort_keys) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, streamed in 1 MiB chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
