"""A columnar store of pose predictions: one key-sorted parquet file, imported once per split.

COCO results stay the interchange format (what users have, what `fdhclean estimate` can
export), but refine never holds a whole split's JSON: the file is parsed once, as a stream,
into `DIR/predictions.parquet` (`key` int64 sorted and unique, `keypoints` 51 x float32 pixels
+ score, `score` float64 of the winning entry) with `DIR/store.json` recording the sources'
sha256 and what the import counted. A store imported from JSON lives under the cache root
(`store_cache_dir`) in a folder named by the sources' sha256, so every rank, worker and
finalize of a split reuses the same import. Looking up a shard's keys reads only the row
groups whose min/max statistics can hold them.

Duplicates: the highest `score` wins, the first (file order, then entry order) on a tie, as
`load_predictions` decides. Entries whose `image_id` is not an integer can match no sample key:
they are counted (with examples) in store.json, not an error; any other malformed entry stops
the import with a message naming file and entry.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fdhclean.atomic import atomic_write_bytes, fsync_dir
from fdhclean.estimators.predictions import (
    InvalidImageId,
    iter_coco_results,
    parse_entry,
)
from fdhclean.estimators.weights import sha256_file

STORE_FILE = "store.json"
DATA_FILE = "predictions.parquet"
FORMAT = "fdhclean-prediction-store"
VERSION = 1
ROW_GROUP_ROWS = 32768  # ~7 MB of keypoints: a shard's keys touch one or two groups
BLOCK_ROWS = 262144  # entries held before a sorted run goes to disk (~55 MB)
_CACHE_GROUPS = 8  # row groups a lookup keeps decoded (~57 MB)
_EXAMPLES = 5
_K = 51
SCHEMA = pa.schema(
    [
        ("key", pa.int64()),
        ("keypoints", pa.list_(pa.float32(), _K)),
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


class StoreWriter:
    """Build a store from (key, (17,3) float32, score) in any order, with bounded memory:
    sorted runs of BLOCK_ROWS entries go to disk, then one k-way merge writes the store."""

    def __init__(self, directory: Path, provenance: dict[str, Any], block_rows: int = BLOCK_ROWS):
        self.directory = Path(directory)
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.directory.parent / f".{self.directory.name}.{uuid.uuid4().hex}.tmp"
        self.tmp.mkdir()
        self.provenance = dict(provenance)
        self.block_rows = block_rows
        self._keys: list[int] = []
        self._kps: list[np.ndarray] = []
        self._scores: list[float] = []
        self._runs: list[Path] = []
        self.entries = 0

    def add(self, key: int, kps: np.ndarray, score: float) -> None:
        self._keys.append(int(key))
        self._kps.append(np.asarray(kps, dtype=np.float32).reshape(_K))
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
            try:
                os.rename(self.tmp, self.directory)
            except OSError:
                if not is_store(self.directory):
                    raise
                shutil.rmtree(self.tmp)  # a concurrent import of the same sources won
            fsync_dir(self.directory.parent)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return PredictionStore(self.directory)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _dedupe(keys, kps, scores, seq) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort by key; per key keep the highest score, the lowest sequence number on a tie."""
    order = np.lexsort((seq, -scores, keys))
    keys, kps, scores, seq = keys[order], kps[order], scores[order], seq[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first], kps[first], scores[first], seq[first]


def _table(keys, kps, scores, seq=None) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(kps, dtype=np.float32).reshape(-1))
    columns = [pa.array(keys), pa.FixedSizeListArray.from_arrays(flat, _K), pa.array(scores)]
    names = ["key", "keypoints", "score"]
    if seq is not None:
        columns.append(pa.array(seq))
        names.append("seq")
    return pa.Table.from_arrays(columns, names=names)


def _write_table(path: Path, keys, kps, scores, seq) -> None:
    pq.write_table(_table(keys, kps, scores, seq), path, row_group_size=ROW_GROUP_ROWS)


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    out = {"key": table.column("key").to_numpy(), "score": table.column("score").to_numpy()}
    flat = table.column("keypoints").combine_chunks().flatten()
    out["keypoints"] = flat.to_numpy(zero_copy_only=False).reshape(-1, 17, 3)
    if "seq" in table.column_names:
        out["seq"] = table.column("seq").to_numpy()
    return out


def _merge(runs: list[Path], out: Path) -> int:
    """k-way merge of sorted, per-run unique runs into the store file; returns its row count.
    Each round takes every run's rows up to the smallest last key of the runs' current
    batches, so all rows of one key meet in one round."""
    batch = max(1024, BLOCK_ROWS // max(1, len(runs)))
    readers = [pq.ParquetFile(r).iter_batches(batch_size=batch) for r in runs]
    current: list[dict | None] = [None] * len(runs)
    total = 0
    with pq.ParquetWriter(out, SCHEMA) as writer:
        while True:
            for i, reader in enumerate(readers):
                if current[i] is None or len(current[i]["key"]) == 0:
                    nxt = next(reader, None)
                    current[i] = None if nxt is None else _columns(pa.Table.from_batches([nxt]))
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
            writer.write_table(_table(*merged[:3]), row_group_size=ROW_GROUP_ROWS)
            total += len(merged[0])
    return total


_ORDER = ("key", "keypoints", "score", "seq")


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


class PredictionStore:
    """An opened store: cheap to open (metadata only), cheap to pickle (a path)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        record_path = self.directory / STORE_FILE
        try:
            self.record = json.loads(record_path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{record_path} is not a prediction store record: {e}") from None
        if self.record.get("format") != FORMAT or self.record.get("version") != VERSION:
            raise ValueError(
                f"{record_path}: not a version-{VERSION} {FORMAT} (re-import the COCO results)"
            )
        self._file = pq.ParquetFile(self.directory / DATA_FILE)
        meta = self._file.metadata
        stats = [meta.row_group(i).column(0).statistics for i in range(meta.num_row_groups)]
        self._group_min = np.array([s.min for s in stats], dtype=np.int64)
        self._group_max = np.array([s.max for s in stats], dtype=np.int64)
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    @classmethod
    def open(
        cls, path: str | Path, cache_dir: Path | None = None, sha256: Any = None
    ) -> PredictionStore:
        """A store directory as it is, or COCO results file(s) (a glob merges them) imported
        once into `cache_dir/<sources sha256>/` and reused after. `sha256` (a recorded hash,
        or path -> hash) spares hashing the files again when the store exists."""
        if is_store(Path(path)):
            return cls(path)
        files = source_files(path)
        shas = _known_shas(files, sha256)
        if shas is not None:
            found = _cached(cache_dir, sources_sha256(shas))
            if found is not None:
                return found
        actual = [sha256_file(_checked(f)) for f in files]
        if shas is not None and actual != shas:
            raise ValueError(
                f"{path} changed since its sha256 was recorded ({sources_sha256(shas)}, now "
                f"{sources_sha256(actual)}): restore it, or clean again with --overwrite"
            )
        found = _cached(cache_dir, sources_sha256(actual))
        if found is not None:
            return found
        if cache_dir is None:
            raise ValueError(f"{path}: no prediction store for it and nowhere to import one")
        return import_coco(files, Path(cache_dir) / sources_sha256(actual), actual)

    def __reduce__(self):
        return (PredictionStore, (self.directory,))

    def provenance(self) -> dict[str, Any]:
        return dict(self.record)

    @property
    def source_sha256(self) -> str:
        return self.record.get("source_sha256") or self.record.get("sha256", "")

    def __len__(self) -> int:
        return self._file.metadata.num_rows

    def keys(self) -> np.ndarray:
        """Every key (int64, sorted): the key column alone."""
        return self._file.read(columns=["key"]).column("key").to_numpy()

    def keys_outside(self, split_keys: Iterable[str | int]) -> int:
        """How many stored keys are not among `split_keys` (non-integer keys match nothing)."""
        wanted = np.unique(np.array(_int_keys(split_keys), dtype=np.int64))
        keys = self.keys()
        return int(len(keys) - np.isin(keys, wanted, assume_unique=True).sum())

    def lookup(self, keys: Iterable[str | int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found bool (n,), keypoints float32 (n,17,3), score float64 (n,)) for `keys`,
        reading only the row groups that can hold them; NaN where nothing was found."""
        keys = list(keys)
        found = np.zeros(len(keys), dtype=bool)
        kps = np.full((len(keys), 17, 3), np.nan, dtype=np.float32)
        scores = np.full(len(keys), np.nan)
        for i, key in enumerate(keys):
            hit = self._find(key)
            if hit is not None:
                found[i], kps[i], scores[i] = True, hit[0], hit[1]
        return found, kps, scores

    def get(self, key: str | int) -> np.ndarray | None:
        hit = self._find(key)
        return None if hit is None else hit[0]

    def _find(self, key: str | int) -> tuple[np.ndarray, float] | None:
        ints = _int_keys([key])
        if not ints:
            return None
        k = ints[0]
        g = int(np.searchsorted(self._group_max, k, side="left"))
        if g == len(self._group_max) or self._group_min[g] > k:
            return None
        group = self._group(g)
        i = int(np.searchsorted(group["key"], k))
        if i == len(group["key"]) or group["key"][i] != k:
            return None
        return group["keypoints"][i], float(group["score"][i])

    def _group(self, g: int) -> dict[str, np.ndarray]:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        group = _columns(self._file.read_row_group(g))
        self._cache[g] = group
        if len(self._cache) > _CACHE_GROUPS:
            self._cache.popitem(last=False)
        return group

    def iter_rows(self) -> Iterator[tuple[int, np.ndarray, float]]:
        """(key, (17,3) float32, score) in key order, one row group at a time."""
        for g in range(self._file.metadata.num_row_groups):
            group = _columns(self._file.read_row_group(g))
            yield from zip(
                group["key"].tolist(), group["keypoints"], group["score"].tolist(), strict=True
            )

    def as_mapping(self) -> StoreEstimates:
        return StoreEstimates(self)


class StoreEstimates(Mapping):
    """Sample key -> (17,3) prediction, looked up in the store (what refine's vote reads)."""

    def __init__(self, store: PredictionStore) -> None:
        self.store = store

    def __getitem__(self, key: str) -> np.ndarray:
        hit = self.store.get(key)
        if hit is None:
            raise KeyError(key)
        return hit

    def get(self, key, default=None):
        hit = self.store.get(key)
        return default if hit is None else hit

    def __iter__(self) -> Iterator[str]:
        return (str(k) for k in self.store.keys().tolist())

    def __len__(self) -> int:
        return len(self.store)


def _int_keys(keys: Iterable[str | int]) -> list[int]:
    out = []
    for key in keys:
        try:
            value = int(key)
        except (TypeError, ValueError):
            continue  # a non-integer sample key matches no COCO image_id
        if -(2**63) <= value < 2**63:
            out.append(value)
    return out


def _known_shas(files: list[Path], sha256: Any) -> list[str] | None:
    if isinstance(sha256, str) and len(files) == 1:
        return [sha256]
    if isinstance(sha256, dict) and all(str(f) in sha256 for f in files):
        return [sha256[str(f)] for f in files]
    return None


def _cached(cache_dir: Path | None, name: str) -> PredictionStore | None:
    if cache_dir is not None and is_store(Path(cache_dir) / name):
        return PredictionStore(Path(cache_dir) / name)
    return None


def _checked(path: Path) -> Path:
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory without a {STORE_FILE}: give a COCO results .json file or a "
            "prediction store written by `fdhclean estimate --out DIR`"
        )
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    return path
