"""Where a shard's *original* annotation comes from: the shard itself, or a parent report.

`fdhclean refine` reads raw (or re-cleaned) shards, whose `keypoints.npy` is the original.
`fdhclean revote` reads a cleaned split, where `keypoints.npy` of an updated sample holds the
estimate; its original comes from the parent run's report (`orig_keypoints`), and the
parent's units and error statuses are kept.

The vote runs in float64 on normalised keypoints (refine-spec section 3), and the report stores
exactly those float64 values, so a revote from the report with the same settings reproduces the
run bit for bit (style.md point 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from fdhclean.decode import UnitsDecision, decide_units
from fdhclean.fdh import NUM_KEYPOINTS
from fdhclean.refine.sample import STATUS_OK, Sample
from fdhclean.shards import encode_npy, from_normalized, to_normalized


class OriginalSource(Protocol):
    def prepare(self, shard_path: Path, samples: Sequence[Sample]) -> UnitsDecision:
        """Set `orig_norm` (and `restore_keypoints`) of every `ok` sample; return the units."""
        ...


class StoredOriginals:
    """The shard's own `keypoints.npy` is the original (refine); units detected per shard."""

    def prepare(self, shard_path: Path, samples: Sequence[Sample]) -> UnitsDecision:
        decision = decide_units(s.keypoints for s in samples if s.status == STATUS_OK)
        for s in samples:
            if s.status == STATUS_OK:
                kp = np.asarray(s.keypoints).reshape(NUM_KEYPOINTS, 3)
                s.orig_norm = to_normalized(kp, decision.units)
        return decision


def parent_report_path(shard_path: Path) -> Path:
    """The report file of a cleaned shard: `OUT/S/report/out-NNNNNN.parquet`."""
    return shard_path.parent / "report" / f"{shard_path.name.removesuffix('.tar')}.parquet"


def read_parent_rows(shard_path: Path, columns: Sequence[str]) -> dict[str, dict]:
    """key -> row (the given columns) of a cleaned shard's report file."""
    import pyarrow.parquet as pq

    path = parent_report_path(shard_path)
    if not path.is_file():
        raise FileNotFoundError(f"report {path} of cleaned shard {shard_path} is missing")
    rows = pq.read_table(path, columns=["key", *columns]).to_pylist()
    return {row["key"]: row for row in rows}


class ReportOriginals:
    """Revote: originals, units and error statuses from the parent run's report.

    A sample that was updated has lost its original `keypoints.npy` bytes; should the revote
    keep the original, they are rebuilt from the report's normalised float64 values in the
    shard's units and stored dtype (`restore_keypoints`): float32(float64(x) / 160 * 160) is x
    again for float32 pixel values, and normalised shards get their values back as stored.
    Samples never updated keep their stored bytes.
    """

    COLUMNS = ("status", "error", "updated", "orig_keypoints", "keypoint_units")

    def prepare(self, shard_path: Path, samples: Sequence[Sample]) -> UnitsDecision:
        rows = read_parent_rows(shard_path, self.COLUMNS)
        if [s.key for s in samples] != list(rows):
            raise ValueError(
                f"shard {shard_path} and its report {parent_report_path(shard_path)} do not "
                "list the same samples in the same order"
            )
        units_seen = {row["keypoint_units"] for row in rows.values()}
        if len(units_seen) != 1:
            raise ValueError(f"report of {shard_path} mixes keypoint units {sorted(units_seen)}")
        units = units_seen.pop()
        for s in samples:
            row = rows[s.key]
            if row["status"] != STATUS_OK:
                s.fail(row["status"], row["error"])  # errors stay as they are
            if s.status != STATUS_OK:
                continue
            s.orig_norm = np.asarray(row["orig_keypoints"], dtype=np.float64).reshape(-1, 3)
            if row["updated"]:
                stored = np.asarray(s.keypoints)
                original = from_normalized(s.orig_norm, units, stored.dtype)
                s.restore_keypoints = encode_npy(original.reshape(stored.shape))
        return UnitsDecision(units, basis="report")  # the parent run decided them
