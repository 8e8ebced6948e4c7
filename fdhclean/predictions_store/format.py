"""The store's on-disk format: file names, schema, table <-> arrays, key handling."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from fdhclean.arrow import numeric, to_numpy

STORE_FILE = "store.json"
DATA_FILE = "predictions.parquet"
FORMAT = "fdhclean-prediction-store"
VERSION = 1
K = 51  # 17 keypoints x (x, y, score)
SCHEMA = pa.schema(
    [
        ("key", pa.int64()),
        ("keypoints", pa.list_(pa.float32(), K)),
        ("score", pa.float64()),
    ]
)


def store_cache_dir(split_out: Path) -> Path:
    """Where refine and finalize keep imported stores: `$FDHCLEAN_PREDICTION_STORE` (one
    root shared by several outputs: import once, ever) or `OUT/.prediction-store` (beside
    the splits, so a split's outputs stay exactly what they were)."""
    root = os.environ.get("FDHCLEAN_PREDICTION_STORE")
    return Path(root) if root else Path(split_out).parent / ".prediction-store"


def is_store(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / STORE_FILE).is_file()


def source_files(path: str | Path) -> list[Path]:
    """The COCO results files a `--predictions` value names (a glob merges per-rank files)."""
    text = str(path)
    if not glob.has_magic(text):
        return [Path(text)]
    files = sorted(Path(p) for p in glob.glob(text))
    if not files:
        raise FileNotFoundError(f"no predictions file matches {text}")
    return files


def sources_sha256(shas: list[str]) -> str:
    """The store's identity: one file's sha256, or the hash of the ordered list of them."""
    if len(shas) == 1:
        return shas[0]
    return hashlib.sha256("\n".join(shas).encode()).hexdigest()


def table(keys, kps, scores, seq=None) -> pa.Table:
    flat = numeric(np.asarray(kps, dtype=np.float32).reshape(-1), pa.float32())
    columns = [
        numeric(np.asarray(keys), pa.int64()),
        pa.FixedSizeListArray.from_arrays(flat, K),
        numeric(np.asarray(scores), pa.float64()),
    ]
    names = ["key", "keypoints", "score"]
    if seq is not None:
        columns.append(numeric(np.asarray(seq), pa.int64()))
        names.append("seq")
    return pa.Table.from_arrays(columns, names=names)


def columns(table: pa.Table) -> dict[str, np.ndarray]:
    """The table's columns as numpy (through the buffers: no pandas import in refine)."""
    out = {name: to_numpy(table.column(name)) for name in table.column_names}
    out["keypoints"] = out["keypoints"].reshape(-1, 17, 3)
    return out


def one_int_key(key: str | int) -> int:
    ints = int_keys([key])
    if not ints or isinstance(key, bool):
        raise ValueError(f"sample key {key!r} is not an integer (COCO image_id)")
    return ints[0]


def int_keys(keys: Iterable[str | int]) -> list[int]:
    out = []
    for key in keys:
        try:
            value = int(key)
        except (TypeError, ValueError):
            continue  # a non-integer sample key matches no COCO image_id
        if -(2**63) <= value < 2**63:
            out.append(value)
    return out
