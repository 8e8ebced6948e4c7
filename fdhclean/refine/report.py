"""The per-shard report: one parquet row per input sample, failures included (spec section 6).

Every decision carries its reason: status codes, both annotations' scores and per-keypoint
masks, and the raw estimate with its scores, so `fdhclean revote` can decide again without the
estimator. `pandas.read_parquet("OUT/S/report")` reads all shards as one table.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fdhclean.arrow import column
from fdhclean.shards import atomic_write_bytes

SCORE_COLUMNS = ("correct", "considered", "correct_mask", "considered_mask")

REPORT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("index", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("updated", pa.bool_()),
        ("tie", pa.bool_()),
        *[(f"{side}_{col}", pa.int64()) for side in ("orig", "new") for col in SCORE_COLUMNS],
        ("orig_frac", pa.float64()),
        ("new_frac", pa.float64()),
        # float64, the precision of the vote: a revote replays it exactly (refine-spec
        # section 6 lists these as float32; see the README's deviations)
        ("orig_keypoints", pa.list_(pa.float64())),
        ("new_keypoints", pa.list_(pa.float64())),
        ("box", pa.list_(pa.int64())),
        ("box_source", pa.string()),
        ("keypoint_units", pa.string()),
    ]
)
REPORT_COLUMNS = tuple(REPORT_SCHEMA.names)


def flat_keypoints(kp: np.ndarray | None) -> np.ndarray | None:
    """(17,3) -> 51 float64 (x, y, v, ...), or None."""
    return None if kp is None else np.asarray(kp, dtype=np.float64).reshape(-1)


def empty_row() -> dict[str, Any]:
    return {name: None for name in REPORT_COLUMNS}


def rows_to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """The rows as a table of REPORT_SCHEMA (built from buffers: no pandas import)."""
    arrays = [column([row[field.name] for row in rows], field.type) for field in REPORT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=REPORT_SCHEMA)


def write_report(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write the rows as one parquet file, atomically (temporary name, then rename)."""
    buffer = io.BytesIO()
    pq.write_table(rows_to_table(rows), buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue())


def read_report(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A report file or the whole report directory, optionally only some columns."""
    return pq.read_table(path, columns=list(columns) if columns else None)
