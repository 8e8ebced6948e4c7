"""Process faults of a refine run: SIGTERM/SIGINT of the main process, death of the parent.

SLURM sends SIGTERM at the time limit; a user presses Ctrl-C. The main process turns either
into `RefineInterrupted` (a BaseException, so no per-shard `except Exception` swallows it):
the shard in progress is abandoned (its temporaries removed where this process wrote them,
no marker, so a rerun redoes it), worker processes are killed, and the command exits
128 + signal number. Workers never outlive the main process: each asks the kernel for
SIGKILL when its parent dies (Linux `PR_SET_PDEATHSIG`) and also polls its parent id, so a
SIGKILLed main process does not leave them blocked on a pipe, reparented to init.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterator

_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.5


class RefineInterrupted(BaseException):
    """The main process got SIGTERM or SIGINT; `outcome` is what was done until then."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.outcome = None  # set by the runner before the exception leaves it
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise RefineInterrupted (main thread only;
    elsewhere, e.g. under a thread of an embedding program, the handlers are left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame) -> None:
        raise RefineInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def become_worker(parent_pid: int) -> None:
    """Set up a worker process: default SIGTERM (it is killed, not interrupted), SIGINT
    ignored (the main process decides), and death when the parent dies."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the poll below suffices
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_POLL_SECONDS)
    os._exit(1)  # orphaned: nobody will read our results


def kill_workers(pool) -> None:
    """Kill a ProcessPoolExecutor's processes at once and drop its queued tasks.

    The executor has no public way to stop running tasks; its `_processes` map is the only
    handle on them (CPython 3.8-3.13)."""
    for process in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(OSError, AttributeError):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
