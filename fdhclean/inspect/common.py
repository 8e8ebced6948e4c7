"""Shared helpers: locate a run's split, read its report and run record, keypoint arrays.

Reports are read column by column (pyarrow), and the list columns become (N, 17, 3) float32
arrays through one flat buffer: the 1.83M-row report of a full train run is never turned into
Python objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fdhclean.fdh import NUM_KEYPOINTS

VALUES_PER_SAMPLE = 3 * NUM_KEYPOINTS
REPORT_BLOCK_ROWS = 65536  # rows read at a time: ~30 MB of keypoint columns
STRING_COLUMNS = ("key", "shard", "status", "error", "box_source", "keypoint_units")


def split_dir(out: str | Path, split: str) -> Path:
    """`OUT/S`, checked to hold a refine report."""
    path = Path(out) / split
    if not (path / "report").is_dir():
        raise FileNotFoundError(
            f"{path / 'report'} does not exist: is {out} the --out of an `fdhclean refine` "
            f"run of split {split!r}?"
        )
    return path


def read_run_record(split: Path) -> dict[str, Any]:
    path = split / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: was `fdhclean refine` run into {split}?")
    return json.loads(path.read_text())


def read_report(split: Path, columns: Sequence[str] | None = None):
    """The whole report of `OUT/S` as one pyarrow table (only `columns` when given)."""
    import pyarrow.parquet as pq

    wanted = list(columns) if columns is not None else None
    dictionary = [
        c for c in ("status", "box_source", "keypoint_units") if not wanted or c in wanted
    ]
    files = [str(f) for f in report_files(split)]  # checked: none left from other settings
    source = files if files else split / "report"
    return pq.read_table(source, columns=wanted, read_dictionary=dictionary)


def report_files(split: Path) -> list[Path]:
    """The report's parquet files in shard order (temporaries and hidden files left out, as
    pyarrow's dataset reader does), each checked to come from the run that run.json records.

    A partial `refine --overwrite` with other settings leaves the other shards' reports of the
    old settings beside the new ones; mixing them would silently describe neither run, so a
    report whose completion marker lacks run.json's fingerprint is refused (ValueError)."""
    files = (split / "report").glob("*.parquet")
    files = sorted(f for f in files if not f.name.startswith((".", "_")))
    record = split / "run.json"
    if not record.is_file():  # not a refine output the markers could be checked against
        return files
    fingerprint = json.loads(record.read_text()).get("fingerprint")
    stale = [f.name for f in files if _marker_fingerprint(split, f.stem) != fingerprint]
    if stale:
        shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        raise ValueError(
            f"{split}: {len(stale)} report files ({shown}) were not written by the run that "
            f"{record} records (an unfinished run, or one with other settings); rerun that "
            "`fdhclean refine` command to complete the split, then retry"
        )
    return files


def _marker_fingerprint(split: Path, stem: str) -> str | None:
    try:
        return json.loads((split / ".done" / f"{stem}.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):  # no marker (never finished) or damaged
        return None


def iter_report(split: Path, columns: Sequence[str], rows: int | None = None) -> Iterator[Any]:
    """The report of `OUT/S` as pyarrow tables of about `rows` (REPORT_BLOCK_ROWS) rows, in
    report order, only `columns`: memory stays bounded by one block whatever the split's size."""
    rows = rows or REPORT_BLOCK_ROWS
    import pyarrow.parquet as pq

    dictionary = [c for c in ("status", "box_source", "keypoint_units") if c in columns]
    pending, count = [], 0
    for path in report_files(split):
        reader = pq.ParquetFile(path, read_dictionary=dictionary)
        for batch in reader.iter_batches(batch_size=rows, columns=list(columns)):
            pending.append(batch)
            count += batch.num_rows
            if count >= rows:
                yield _concat(pending)
                pending, count = [], 0
    if pending:
        yield _concat(pending)


def _concat(batches: list) -> Any:
    import pyarrow as pa

    # files may differ in schema metadata only; concat_tables does not compare it
    return pa.concat_tables([pa.Table.from_batches([b]) for b in batches])


def keypoint_array(column, rows: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """A report list column -> `dtype` (N, 17, 3), only the `rows` (bool mask) when given.

    Gathers straight from each chunk's offsets and flat values (no per-row objects, no copy of
    the unselected rows); null rows are NaN.
    """
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts, start = [], 0
    for chunk in chunks:
        n = len(chunk)
        picked = np.arange(n) if rows is None else np.flatnonzero(rows[start : start + n])
        start += n
        offsets = chunk.offsets.to_numpy()
        values = chunk.values.to_numpy(zero_copy_only=False)
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)[picked]
        first = offsets[picked][valid]
        if (offsets[picked + 1][valid] - first != VALUES_PER_SAMPLE).any():
            raise ValueError(f"a keypoint column row does not hold {VALUES_PER_SAMPLE} values")
        if values.size % VALUES_PER_SAMPLE == 0 and not (first % VALUES_PER_SAMPLE).any():
            # the usual layout: every row one aligned block of 51 -> gather whole rows
            selected = values.reshape(-1, VALUES_PER_SAMPLE)[first // VALUES_PER_SAMPLE]
        else:
            selected = values[first[:, None] + np.arange(VALUES_PER_SAMPLE)]
        if valid.all():
            parts.append(selected.astype(dtype, copy=False))
            continue
        out = np.full((len(picked), VALUES_PER_SAMPLE), np.nan, dtype=dtype)
        out[valid] = selected
        parts.append(out)
    flat = np.concatenate(parts) if parts else np.zeros((0, VALUES_PER_SAMPLE), dtype)
    return flat.reshape(-1, NUM_KEYPOINTS, 3)


def int_column(table, name: str, fill: int = 0) -> np.ndarray:
    """An integer column as int64 numpy, nulls (error rows) as `fill`."""
    import pyarrow.compute as pc

    return pc.fill_null(table.column(name), fill).to_numpy().astype(np.int64, copy=False)


def bool_column(table, name: str) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.fill_null(table.column(name), False).to_numpy(zero_copy_only=False).astype(bool)


def str_column(table, name: str) -> np.ndarray:
    """A string column as a numpy object array (dictionary columns decoded)."""
    column = table.column(name)
    return np.asarray(column.to_pylist(), dtype=object)


def value_counts(table, name: str) -> dict[str, int]:
    """Counts of a string column's values (nulls left out), sorted by value."""
    import pyarrow.compute as pc

    counts = pc.value_counts(table.column(name).combine_chunks()).to_pylist()
    return {
        str(c["values"]): int(c["counts"]) for c in sorted(counts, key=_by_value) if c["values"]
    }


def _by_value(item: dict[str, Any]) -> str:
    return str(item["values"])


def chosen_keypoints(
    orig: np.ndarray, new: np.ndarray, updated: np.ndarray, new_min_score: float
) -> np.ndarray:
    """The written `keypoints.npy`, normalised (refine-spec 6): estimate with v = score where
    score > new_min_score else 0 for updated samples, else the original. float32 (N, 17, 3)."""
    est = new.copy()
    with np.errstate(invalid="ignore"):
        est[..., 2] = np.where(new[..., 2] > new_min_score, new[..., 2], 0.0)
    return np.where(np.asarray(updated, dtype=bool)[:, None, None], est, orig).astype(np.float32)


def pixel_xy(kp: np.ndarray) -> np.ndarray:
    """Normalised (..., 3) -> float64 (..., 2) pixel coordinates (x * 160, y * 288)."""
    from fdhclean.fdh import IMAGE_H, IMAGE_W

    return np.asarray(kp[..., :2], dtype=np.float64) * np.array([IMAGE_W, IMAGE_H])


def run_part_table(split: Path, override: Path | None = None):
    """The part table the run voted with (run.json settings.part_table), hash-checked."""
    record = read_run_record(split)
    path = Path(override or record["settings"]["part_table"])
    if not path.is_file():
        raise FileNotFoundError(
            f"the run's part table {path} (settings.part_table in {split / 'run.json'}) is gone; "
            "rebuild it with `fdhclean parts build` and pass --part-table PATH"
        )
    from fdhclean.parts import PartTable

    table = PartTable.load(path)
    expected = record["provenance"].get("part_table_sha256")
    if expected and table.sha256 != expected:
        raise ValueError(
            f"part table {path} has sha256 {table.sha256}, but the run voted with {expected}"
        )
    return table
