"""Reading a store: open (importing COCO results once), look up keys, count keys outside."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from fdhclean.arrow import to_numpy
from fdhclean.estimators.weights import sha256_file
from fdhclean.predictions_store.format import (
    DATA_FILE,
    FORMAT,
    STORE_FILE,
    VERSION,
    columns,
    int_keys,
    is_store,
    source_files,
    sources_sha256,
)

_CACHE_GROUPS = 8  # row groups a lookup keeps decoded (~57 MB)


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
        if any(is_store(f) for f in files):  # a glob of per-rank store directories
            return cls._merged(path, files, cache_dir, shas)
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
        from fdhclean.predictions_store.writer import import_coco

        return import_coco(files, Path(cache_dir) / sources_sha256(actual), actual)

    @classmethod
    def _merged(cls, path, files: list[Path], cache_dir, shas) -> PredictionStore:
        """The stores `path` names merged once into `cache_dir/<their hash>/`."""
        not_stores = [str(f) for f in files if not is_store(f)]
        if not_stores:
            raise ValueError(
                f"{path} matches prediction stores and other paths ({', '.join(not_stores[:3])})"
                ": a glob must name only JSON files or only store directories"
            )
        stores = [cls(f) for f in files]
        actual = [st.record.get("data_sha256") for st in stores]
        if shas is not None and actual != shas:
            raise ValueError(
                f"{path} changed since its sha256 was recorded: restore it, or clean again "
                "with --overwrite"
            )
        name = sources_sha256(actual)
        found = _cached(cache_dir, name)
        if found is not None:
            return found
        if cache_dir is None:
            raise ValueError(f"{path}: no merged prediction store for it and nowhere to make one")
        from fdhclean.predictions_store.writer import merge_stores

        return merge_stores(stores, Path(cache_dir) / name)

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
        return to_numpy(self._file.read(columns=["key"]).column("key"))

    def keys_outside(self, split_keys: Iterable[str | int]) -> int:
        """How many stored keys are not among `split_keys` (non-integer keys match nothing)."""
        wanted = np.unique(np.array(int_keys(split_keys), dtype=np.int64))
        keys = self.keys()
        return int(len(keys) - np.isin(keys, wanted, assume_unique=True).sum())

    def lookup(self, keys: Iterable[str | int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found bool (n,), keypoints float32 (n,17,3), score float64 (n,)) for `keys`,
        reading only the row groups whose min/max can hold them; NaN where none was found."""
        keys = list(keys)
        found = np.zeros(len(keys), dtype=bool)
        kps = np.full((len(keys), 17, 3), np.nan, dtype=np.float32)
        scores = np.full(len(keys), np.nan)
        where, ints = _valid_int_keys(keys)
        groups = np.searchsorted(self._group_max, ints, side="left")
        for g in np.unique(groups[groups < len(self._group_max)]).tolist():
            pick = groups == g
            group = self._group(g)
            rows = np.minimum(np.searchsorted(group["key"], ints[pick]), len(group["key"]) - 1)
            hit = group["key"][rows] == ints[pick]
            at = where[pick][hit]
            found[at], kps[at], scores[at] = (
                True,
                group["keypoints"][rows[hit]],
                group["score"][rows[hit]],
            )
        return found, kps, scores

    def get(self, key: str | int) -> np.ndarray | None:
        hit = self._find(key)
        return None if hit is None else hit[0]

    def _find(self, key: str | int) -> tuple[np.ndarray, float] | None:
        ints = int_keys([key])
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
        group = columns(self._file.read_row_group(g))
        self._cache[g] = group
        if len(self._cache) > _CACHE_GROUPS:
            self._cache.popitem(last=False)
        return group

    def iter_rows(self) -> Iterator[tuple[int, np.ndarray, float]]:
        """(key, (17,3) float32, score) in key order, one row group at a time."""
        for g in range(self._file.metadata.num_row_groups):
            group = columns(self._file.read_row_group(g))
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


def _valid_int_keys(keys: list) -> tuple[np.ndarray, np.ndarray]:
    """Positions and int64 values of the keys that are integers (the others match nothing)."""
    where, ints = [], []
    for i, key in enumerate(keys):
        value = int_keys([key])
        if value:
            where.append(i)
            ints.append(value[0])
    return np.array(where, dtype=np.int64), np.array(ints, dtype=np.int64)


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
