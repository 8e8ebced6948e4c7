"""Pick samples of a run (a pandas query over the report, or keys) and load what a tile shows.

The query runs over the report's scalar columns only (the keypoint lists of a 1.83M-row report
would cost most of the time); the keypoints of the chosen rows are then read from their shards'
report files alone, and the images and maps from those cleaned shards alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fdhclean.inspect.common import iter_report, read_report
from fdhclean.parts import PartTable
from fdhclean.refine.report import REPORT_COLUMNS

LIST_COLUMNS = ("orig_keypoints", "new_keypoints", "box")
SCALAR_COLUMNS = tuple(c for c in REPORT_COLUMNS if c not in LIST_COLUMNS)


def select_rows(
    split: Path, where: str | None = None, keys: Sequence[str] | None = None, limit: int = 16
):
    """Report rows (pandas, report order) matching `where` and/or `keys`, at most `limit`.

    The report is read a block of rows at a time (scalar columns only) and reading stops once
    `limit` rows matched (and every wanted key was seen), so memory stays bounded; `where` is
    evaluated per block (an aggregate such as `new_frac > new_frac.mean()` is a block's)."""
    import pandas as pd

    wanted = {_canonical(k): k for k in keys} if keys else None
    seen: set[str] = set()
    found, count = [], 0
    for table in iter_report(split, SCALAR_COLUMNS):
        frame = _scalar_frame(table)
        if wanted is not None:  # matched as integers (COCO image ids): "0561566632" finds it
            present = frame["key"].map(_canonical)
            inside = present.isin(set(wanted))
            seen.update(present[inside])
            frame = frame[inside]
        if where and len(frame):
            frame = _query(frame, where)
        found.append(frame)
        count += len(frame)
        if count >= limit and (wanted is None or len(seen) == len(wanted)):
            break
    if wanted is not None:
        missing = sorted(k for c, k in wanted.items() if c not in seen)
        if missing:
            raise KeyError(f"keys not in {split / 'report'}: {', '.join(missing[:10])}")
    if not found:
        return _scalar_frame(read_report(split, SCALAR_COLUMNS)).head(0)
    return pd.concat(found, ignore_index=True).head(limit)


def _scalar_frame(table):
    frame = table.to_pandas()
    for name in ("status", "box_source", "keypoint_units"):
        frame[name] = frame[name].astype(str)
    return frame


def _query(frame, where: str):
    try:
        return frame.query(where, engine="python")
    except Exception as exc:  # noqa: BLE001 - re-raised with the expression and the columns
        raise ValueError(
            f"--where {where!r} failed ({type(exc).__name__}: {exc}); columns: "
            f"{', '.join(SCALAR_COLUMNS)}"
        ) from exc


def with_keypoints(split: Path, frame) -> list[dict[str, Any]]:
    """The rows as dicts with (17, 3) float64 `orig` / `new` (None when absent)."""
    import pyarrow.parquet as pq

    lists: dict[str, dict[str, Any]] = {}
    for shard in frame["shard"].unique():
        path = split / "report" / f"{shard.removesuffix('.tar')}.parquet"
        part = pq.read_table(path, columns=["key", *LIST_COLUMNS]).to_pylist()
        lists.update({row["key"]: row for row in part})
    rows = []
    for row in frame.to_dict("records"):
        extra = lists[row["key"]]
        for side, column in (("orig", "orig_keypoints"), ("new", "new_keypoints")):
            value = extra[column]
            row[side] = None if value is None else np.asarray(value, np.float64).reshape(-1, 3)
        row["box"] = extra["box"]
        rows.append(row)
    return rows


def load_samples(split: Path, rows: list[dict[str, Any]], table: PartTable) -> dict[str, dict]:
    """key -> {"image", "parts"} (uint8 (H, W, 3)) read from the cleaned shards holding them."""
    from fdhclean.fdh import MEMBER_EMASK, MEMBER_IMAGE, MEMBER_VERTICES
    from fdhclean.inspect.sheet import part_map
    from fdhclean.shards import decode_image, decode_mask, decode_vertices, iter_shard

    wanted: dict[str, set[str]] = {}
    for row in rows:
        wanted.setdefault(row["shard"], set()).add(row["key"])
    out: dict[str, dict] = {}
    for shard, keys in wanted.items():
        for raw in iter_shard(split / shard):
            if raw.key not in keys:
                continue
            try:
                image = decode_image(raw.get(MEMBER_IMAGE))
            except (KeyError, ValueError):
                image = np.full((288, 160, 3), 200, dtype=np.uint8)  # bad-member samples
            try:
                emask = decode_mask(raw.get(MEMBER_EMASK))
                vertices = decode_vertices(raw.get(MEMBER_VERTICES))
                parts = part_map(image, emask, vertices, table)
            except (KeyError, ValueError):
                parts = (image * 0.3).astype(np.uint8)
            out[raw.key] = {"image": image, "parts": parts}
            keys.discard(raw.key)
            if not keys:
                break  # the rest of the shard holds nothing wanted
    return out


def _canonical(key: str) -> str:
    try:
        return str(int(key))
    except ValueError:
        return str(key)
