"""Writing a store: sorted runs of bounded size, one k-way merge, an atomic rename."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fdhclean.atomic import atomic_write_bytes, fsync_dir
from fdhclean.estimators.predictions import (
    CocoResultsWriter,
    InvalidImageId,
    iter_coco_results,
    parse_entry,
)
from fdhclean.estimators.weights import sha256_file
from fdhclean.predictions_store.format import (
    DATA_FILE,
    FORMAT,
    SCHEMA,
    STORE_FILE,
    VERSION,
    K,
    columns,
    is_store,
    one_int_key,
    sources_sha256,
    table,
)

if TYPE_CHECKING:
    from fdhclean.predictions_store.store import PredictionStore

ROW_GROUP_ROWS = 32768  # ~7 MB of keypoints: a shard's keys touch one or two groups
BLOCK_ROWS = 262144  # entries held before a sorted run goes to disk (~55 MB)
STALE_SECONDS = 6 * 3600  # a temporary store directory older than this is a killed import
MIN_MERGE_BATCH = 1024  # rows per run per merge round, at the least
_EXAMPLES = 5


class StoreWriter:
    """Build a store from (key, (17,3) float32, score) in any order, with bounded memory:
    sorted runs of BLOCK_ROWS entries go to disk, then one k-way merge writes the store."""

    def __init__(
        self,
        directory: Path,
        provenance: dict[str, Any],
        block_rows: int | None = None,
        replace: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.replace = replace  # False: an existing store of the same sources is kept
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.directory)
        self.tmp = self.directory.parent / f".{self.directory.name}.{uuid.uuid4().hex}.tmp"
        self.tmp.mkdir()
        self.provenance = dict(provenance)
        self.block_rows = block_rows or BLOCK_ROWS  # read at call time (tests shrink it)
        self._keys: list[int] = []
        self._kps: list[np.ndarray] = []
        self._scores: list[float] = []
        self._runs: list[Path] = []
        self.entries = 0

    def add(self, key: int | str, kps: np.ndarray, score: float) -> None:
        """One entry; a key that is not an integer raises ValueError (nothing is added)."""
        self._keys.append(one_int_key(key))
        self._kps.append(np.asarray(kps, dtype=np.float32).reshape(K))
        self._scores.append(float(score))
        self.entries += 1
        if len(self._keys) >= self.block_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._keys:
            return
        start = self.entries - len(self._keys)
        keys = np.array(self._keys, dtype=np.int64)
        block = _dedupe(
            keys, np.stack(self._kps), np.array(self._scores), np.arange(start, self.entries)
        )
        path = self.tmp / f"run-{len(self._runs):05d}.parquet"
        _write_table(path, *block)
        self._runs.append(path)
        self._keys, self._kps, self._scores = [], [], []

    def close(self) -> PredictionStore:
        """Merge the runs, write store.json, rename into place; return the opened store.
        Another process that finished the same store first wins (same content)."""
        try:
            self._flush()
            keys = _merge(self._runs, self.tmp / DATA_FILE)
            for run in self._runs:
                run.unlink()
            record = {
                "format": FORMAT,
                "version": VERSION,
                **self.provenance,
                "entries": self.entries,
                "keys": keys,
                "duplicates": self.entries - keys,
                # identifies a store that has no JSON source (`fdhclean estimate --out DIR`)
                "data_sha256": sha256_file(self.tmp / DATA_FILE),
            }
            text = json.dumps(record, indent=1) + "\n"
            atomic_write_bytes(self.tmp / STORE_FILE, text.encode())
            self._rename()
            fsync_dir(self.directory.parent)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        from fdhclean.predictions_store.store import PredictionStore

        return PredictionStore(self.directory)

    def _rename(self) -> None:
        if self.replace and self.directory.exists():
            if not is_store(self.directory):
                raise ValueError(f"{self.directory} exists and is not a prediction store")
            old = self.directory.parent / f".{self.directory.name}.{uuid.uuid4().hex}.old"
            os.rename(self.directory, old)
            os.rename(self.tmp, self.directory)
            shutil.rmtree(old)
            return
        try:
            os.rename(self.tmp, self.directory)
        except OSError:
            if not is_store(self.directory):
                raise
            shutil.rmtree(self.tmp)  # a concurrent import of the same sources won

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def open_writer(out: Path, provenance: dict[str, Any]) -> StoreWriter | CocoResultsWriter:
    """`fdhclean estimate`'s writer: COCO results for `*.json`, else a prediction store."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        return CocoResultsWriter(out)
    if out.exists() and not is_store(out):  # refused now, not after hours of estimation
        raise ValueError(
            f"--out {out} exists and is not a prediction store; it would be replaced: "
            "choose a new path, or remove it first"
        )
    return StoreWriter(out, {"source_sha256": None, "sources": [], **provenance}, replace=True)


def export_coco(store, path: Path) -> int:
    """Write a store back as COCO results (streaming); returns the number of entries."""
    with CocoResultsWriter(path) as writer:
        for key, kps, score in store.iter_rows():
            writer.add(key, kps, score)
    return writer.count


def _dedupe(keys, kps, scores, seq) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort by key; per key keep the highest score, the lowest sequence number on a tie."""
    order = np.lexsort((seq, -scores, keys))
    keys, kps, scores, seq = keys[order], kps[order], scores[order], seq[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first], kps[first], scores[first], seq[first]


def _remove_stale(directory: Path) -> None:
    """Remove what a killed import of the same store left (a live one is minutes old: an
    import of the full train split takes well under an hour)."""
    import time

    for tmp in directory.parent.glob(f".{directory.name}.*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue  # another process removed it first


def _write_table(path: Path, keys, kps, scores, seq) -> None:
    pq.write_table(table(keys, kps, scores, seq), path, row_group_size=ROW_GROUP_ROWS)


def _merge(runs: list[Path], out: Path) -> int:
    """k-way merge of sorted, per-run unique runs into the store file; returns its row count.
    Each round takes every run's rows up to the smallest last key of the runs' current
    batches, so all rows of one key meet in one round."""
    batch = max(MIN_MERGE_BATCH, BLOCK_ROWS // max(1, len(runs)))
    readers = [pq.ParquetFile(r).iter_batches(batch_size=batch) for r in runs]
    current: list[dict | None] = [None] * len(runs)
    total = 0
    with pq.ParquetWriter(out, SCHEMA) as writer:
        while True:
            for i, reader in enumerate(readers):
                if current[i] is None or len(current[i]["key"]) == 0:
                    nxt = next(reader, None)
                    current[i] = None if nxt is None else columns(pa.Table.from_batches([nxt]))
            live = [c for c in current if c is not None]
            if not live:
                break
            bound = min(c["key"][-1] for c in live)
            parts = []
            for i, c in enumerate(current):
                if c is None:
                    continue
                cut = int(np.searchsorted(c["key"], bound, side="right"))
                parts.append({k: v[:cut] for k, v in c.items()})
                current[i] = {k: v[cut:] for k, v in c.items()}
            merged = _dedupe(*(np.concatenate([p[n] for p in parts]) for n in _ORDER))
            writer.write_table(table(*merged[:3]), row_group_size=ROW_GROUP_ROWS)
            total += len(merged[0])
    return total


_ORDER = ("key", "keypoints", "score", "seq")


def merge_stores(stores: list, directory: Path):
    """Merge opened stores (the per-rank `estimate --out preds/val_{rank}` directories) into
    one store at `directory`: per key the highest score wins, as for merged JSON files."""
    shas = [st.record["data_sha256"] for st in stores]
    sources = [{"path": str(st.directory), "sha256": st.record["data_sha256"]} for st in stores]
    writer = StoreWriter(directory, {"source_sha256": sources_sha256(shas), "sources": sources})
    try:
        for st in stores:
            for key, kps, score in st.iter_rows():
                writer.add(key, kps, score)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def import_coco(files: list[Path], directory: Path, shas: list[str] | None = None):
    """Import COCO results files (merged in order) into a store at `directory`, streaming."""
    shas = shas or [sha256_file(f) for f in files]
    sources = [{"path": str(f), "sha256": s} for f, s in zip(files, shas, strict=True)]
    writer = StoreWriter(directory, {"source_sha256": sources_sha256(shas), "sources": sources})
    invalid = {"count": 0, "examples": []}
    try:
        for f, source in zip(files, sources, strict=True):
            n = 0
            for n, entry in enumerate(iter_coco_results(f), start=1):
                try:
                    key, kps, score = parse_entry(n - 1, entry, f)
                except InvalidImageId as e:
                    invalid["count"] += 1
                    if len(invalid["examples"]) < _EXAMPLES:
                        invalid["examples"].append(str(e))
                    continue
                writer.add(key, kps, score)
            source["entries"] = n
        writer.provenance["invalid_image_ids"] = invalid
        return writer.close()
    except BaseException:
        writer.abort()
        raise
