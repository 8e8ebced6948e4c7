"""Training statistics: per-tick means written as one JSON line each to ``stats.jsonl``.

Rank-local sums are averaged over ranks at the end of a tick (``distributed.average_scalars``);
only rank 0 writes. On resume the lines past the checkpoint's image count are dropped, so the
file always describes exactly the run that the checkpoint continues.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from triagan_model.atomic import atomic_write_text


class Collector:
    """Running sums of named scalars within one tick."""

    def __init__(self) -> None:
        self._sum: dict[str, float] = defaultdict(float)
        self._n: dict[str, int] = defaultdict(int)

    def add(self, name: str, value: float) -> None:
        self._sum[name] += float(value)
        self._n[name] += 1

    def means(self) -> dict[str, float]:
        return {k: self._sum[k] / self._n[k] for k in sorted(self._sum)}

    def reset(self) -> None:
        self._sum.clear()
        self._n.clear()


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """One JSON line, flushed and fsynced (a killed run loses at most the line being written)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete line of a JSONL file (a torn last line is ignored)."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_after(path: str | os.PathLike, nimg: int) -> None:
    """Keep the records with ``nimg`` <= the checkpoint's (atomic rewrite)."""
    p = Path(path)
    if not p.is_file():
        return
    keep = [r for r in read_jsonl(p) if int(r.get("nimg", 0)) <= nimg]
    atomic_write_text(p, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
