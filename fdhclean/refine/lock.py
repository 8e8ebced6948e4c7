"""Per-shard locks, so that two refine processes on one OUT cooperate instead of colliding.

The process that cleans a shard holds an exclusive `flock` on `OUT/SPLIT/.locks/<stem>.lock`
from before it removes the shard's stale temporaries until its marker is written. Another
process (a second run with the same settings, an array task started twice, a rerun while
the first is alive) finds the lock held, names the holder and leaves that shard alone. The
kernel drops the lock when its holder dies, even by SIGKILL, so a lock never outlives a run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path


class ShardInUseError(RuntimeError):
    """Another live process holds this shard's lock."""

    def __init__(self, shard: str, holder: str) -> None:
        self.shard, self.holder = shard, holder
        super().__init__(f"{shard} is being cleaned by {holder}; left to it")

    def __reduce__(self):  # picklable: raised in worker processes
        return type(self), (self.shard, self.holder)


def lock_path(split_out: Path, shard_name: str) -> Path:
    return split_out / ".locks" / f"{shard_name.removesuffix('.tar')}.lock"


@contextlib.contextmanager
def shard_lock(split_out: Path, shard_name: str) -> Iterator[bool]:
    """Hold the shard's lock, or raise ShardInUseError naming the process that holds it.

    Where the file system has no flock (some network mounts answer ENOLCK/EOPNOTSUPP), the
    shard is cleaned unlocked: temporary names are unique per process, so two runs then
    repeat work but never damage each other's files. Yields whether the lock is held (False
    unlocked: another process's temporaries may be live, so none may be removed).
    """
    path = lock_path(split_out, shard_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ShardInUseError(shard_name, _holder(fd)) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            locked = False
        else:
            locked = True
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        try:
            yield locked
        finally:
            os.ftruncate(fd, 0)  # an empty file is a free lock (and reruns leave equal trees)
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a locker)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process"
