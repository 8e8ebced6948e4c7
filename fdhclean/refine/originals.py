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

from fdhclean.decode import UnitsDecision, UnitsTally
from fdhclean.refine.sample import STATUS_OK, Sample
from fdhclean.shards import (
    encode_npy,
    from_normalized,
    to_normalized,
)


class ShardOriginals(Protocol):
    """The originals of one pass over a shard, and the units that pass writes in."""

    units: UnitsDecision | None  # known once the first block is applied

    def apply(self, samples: Sequence[Sample]) -> None:
        """Set `orig_norm` (and `restore_keypoints`) of every `ok` sample of a block."""
        ...

    def finish(self, count: int) -> ShardOriginals | None:
        """The shard has been read to its end with `count` samples: None when this pass
        stands (`units` now final), else the originals of a pass that redoes the shard."""
        ...


class OriginalSource(Protocol):
    def open(self, shard_path: Path) -> ShardOriginals: ...


class StoredOriginals:
    """The shard's own `keypoints.npy` is the original (refine); units detected per shard."""

    def open(self, shard_path: Path) -> ShardOriginals:
        return _StoredShard()


class _StoredShard:
    """The units of a shard are the majority of all its samples (`decide_units`), known only
    at its end, but the shard is streamed: the pass writes in the units its first block
    votes for, and `finish` checks them against the whole shard's decision. FDH shards hold
    one kind of units, so the check nearly always passes; a shard that the rest outvotes is
    redone in the decided units, so the outputs are what a units pass before the vote gives.
    Every readable (17, 3) keypoints.npy votes, whatever the sample's other members."""

    def __init__(self, decided: UnitsDecision | None = None) -> None:
        self.decided = decided  # a redo: known from the pass before
        self.units = decided
        self._tally = UnitsTally()

    def apply(self, samples: Sequence[Sample]) -> None:
        readable = [s for s in samples if s.keypoints is not None]
        if not readable:
            if self.units is None:
                self.units = self._tally.decision()
            return
        # the block at once: float64 (N, 17, 3), the arithmetic of `to_normalized` per row
        kps = np.stack([np.asarray(s.keypoints, dtype=np.float64) for s in readable])
        self._tally.add_many(kps)
        if self.units is None:
            self.units = self._tally.decision()  # the first block's vote
        normalised = to_normalized(kps, self.units.units)
        for s, kp in zip(readable, normalised, strict=True):
            if s.status == STATUS_OK:
                s.orig_norm = kp

    def finish(self, count: int) -> ShardOriginals | None:
        decided = self.decided or self._tally.decision()
        if self.units is not None and self.units.units != decided.units:
            return _StoredShard(decided)
        self.units = decided  # (its vote counts: the report's warning)
        return None


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

    def open(self, shard_path: Path) -> ShardOriginals:
        return _ReportShard(shard_path, read_parent_rows(shard_path, self.COLUMNS))


class _ReportShard:
    def __init__(self, shard_path: Path, rows: dict[str, dict]) -> None:
        self.shard_path = shard_path
        self.rows = list(rows.items())  # in the report's (= the shard's) order
        units_seen = {row["keypoint_units"] for row in rows.values()}
        if not units_seen:  # an empty shard: no sample, so no units to keep (refine's rule
            units_seen = {UnitsTally().decision().units}  # without votes decides the same)
        if len(units_seen) != 1:
            raise ValueError(f"report of {shard_path} mixes keypoint units {sorted(units_seen)}")
        self.units = UnitsDecision(units_seen.pop(), basis="report")  # the parent decided

    def _mismatch(self) -> ValueError:
        return ValueError(
            f"shard {self.shard_path} and its report {parent_report_path(self.shard_path)} do "
            "not list the same samples in the same order"
        )

    def apply(self, samples: Sequence[Sample]) -> None:
        units = self.units.units
        for s in samples:
            if s.raw.index >= len(self.rows) or self.rows[s.raw.index][0] != s.key:
                raise self._mismatch()
            row = self.rows[s.raw.index][1]
            if row["status"] != STATUS_OK:
                s.fail(row["status"], row["error"])  # errors stay as they are
            if s.status != STATUS_OK:
                continue
            s.orig_norm = np.asarray(row["orig_keypoints"], dtype=np.float64).reshape(-1, 3)
            if row["updated"]:
                stored = np.asarray(s.keypoints)
                original = from_normalized(s.orig_norm, units, stored.dtype)
                s.restore_keypoints = encode_npy(original.reshape(stored.shape))

    def finish(self, count: int) -> None:
        if count != len(self.rows):
            raise self._mismatch()
        return None  # the parent's units: nothing to redo
