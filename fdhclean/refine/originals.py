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

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from fdhclean.decode import UnitsDecision, decide_units
from fdhclean.fdh import MEMBER_KEYPOINTS, NUM_KEYPOINTS
from fdhclean.refine.sample import STATUS_OK, Sample
from fdhclean.shards import (
    ShardReader,
    decode_keypoints,
    encode_npy,
    from_normalized,
    split_member_name,
    to_normalized,
)
from fdhclean.tar_reader import BLOCK, TarFormatError, TarStream, walk_tar


class ShardOriginals(Protocol):
    """The originals of one shard: its units, decided before any sample is voted."""

    units: UnitsDecision

    def apply(self, samples: Sequence[Sample]) -> None:
        """Set `orig_norm` (and `restore_keypoints`) of every `ok` sample of a block."""
        ...

    def finish(self, count: int) -> None:
        """The shard has been read to its end with `count` samples."""
        ...


class OriginalSource(Protocol):
    def open(self, shard_path: Path) -> ShardOriginals: ...


class StoredOriginals:
    """The shard's own `keypoints.npy` is the original (refine); units detected per shard."""

    def open(self, shard_path: Path) -> ShardOriginals:
        return _StoredShard(decide_units(_stored_keypoints(shard_path)))


def _stored_keypoints(shard_path: Path) -> Iterator[np.ndarray]:
    """Every readable (17, 3) `keypoints.npy` of the shard: a first pass over the shard that
    decodes nothing else (no hash; the voting pass hashes), so the units are known before the
    first sample is voted and the shard can then be streamed. Samples whose other members are
    bad count too: their keypoints are evidence of the shard's units all the same."""
    for data in _keypoints_members(shard_path):
        try:
            yield decode_keypoints(data)
        except ValueError:
            continue


def _keypoints_members(shard_path: Path) -> list[bytes]:
    """The bytes of each sample's `keypoints.npy`, walking the tar headers only: the other
    members' data is passed over (sought past where large), so this pass costs a fraction of
    a read of the shard. Where the walk fails, the full reader's pass decides instead (it
    raises the `ShardReadError` that names the shard, as the voting pass would)."""
    wanted = MEMBER_KEYPOINTS.lower()
    found: dict[str, bytes] = {}
    try:
        with open(shard_path, "rb", buffering=1 << 16) as fh:
            stream = TarStream(fh, os.fstat(fh.fileno()).st_size, digest=False)
            for entry in walk_tar(stream, read_data=False):
                parts = split_member_name(entry.name)
                if entry.problem is not None or parts is None or parts[1].lower() != wanted:
                    continue
                if parts[0] in found:  # a repeated member or key: the full reader refuses it
                    raise TarFormatError(entry.offset, "repeated keypoints member")
                start = stream.offset - entry.size - (-entry.size % BLOCK)
                found[parts[0]] = os.pread(fh.fileno(), entry.size, start)
    except (OSError, TarFormatError):
        return [
            raw.members[name]
            for raw in ShardReader(shard_path, hash=False)
            if (name := raw.find(MEMBER_KEYPOINTS)) is not None
        ]
    return list(found.values())


class _StoredShard:
    def __init__(self, units: UnitsDecision) -> None:
        self.units = units

    def apply(self, samples: Sequence[Sample]) -> None:
        for s in samples:
            if s.status == STATUS_OK:
                kp = np.asarray(s.keypoints).reshape(NUM_KEYPOINTS, 3)
                s.orig_norm = to_normalized(kp, self.units.units)

    def finish(self, count: int) -> None:
        pass


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
