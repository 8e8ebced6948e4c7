"""Where a refine run's estimates come from: a COCO results file, or a pose model run here.

Both give, per shard, a mapping key -> (17,3) pixel coordinates of the 288x160 image + score.
A predictions file is imported once into a columnar store that every process reads; a model runs in
the main process (on the GPU) while worker processes vote and write the previous shards.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fdhclean.refine.settings import RefineSettings


@dataclass(frozen=True)
class Estimates:
    """One shard's estimates: key -> (17, 3) x, y, score, in pixels of the 288x160 image, or
    normalised already (`normalized`: a revote's, from the report, replayed exactly)."""

    lookup: Mapping[str, np.ndarray]
    normalized: bool = False
    integer_keys: bool = False  # keys matched as COCO image ids (a predictions file)
    # keys -> their estimates (None: none) in one call, where the source has a faster way
    # than one `lookup.get` per key (a prediction store: one search per block of keys)
    many: Callable[[Sequence[str]], list[np.ndarray | None]] | None = None

    def get(self, key: str) -> np.ndarray | None:
        return self.lookup.get(key)

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """`[self.get(k) for k in keys]`, in one call where the source can."""
        if self.many is not None:
            return self.many(keys)
        return [self.lookup.get(key) for key in keys]

    def missing_reason(self, key: str) -> str:
        """Why `key` has no estimate, for its report row."""
        if self.integer_keys:
            try:
                int(key)
            except ValueError:
                return f"key {key!r} is not an integer, so no COCO image_id can match it"
        return "no prediction for this key"


@dataclass(frozen=True)
class ShardEstimates:
    """What a source has for one shard of the run, in order: `estimates` ready, an `error`
    (the shard could not be estimated), or neither: `for_shard` where it is processed."""

    path: Path
    estimates: Estimates | None = None
    error: str | None = None


class EstimateSource(Protocol):
    def provenance(self) -> dict[str, Any]: ...

    def estimates(self, shards: list[Path]) -> Iterator[ShardEstimates]: ...

    def for_shard(self, shard_path: Path) -> Estimates: ...

    def for_workers(self) -> EstimateSource | None: ...


class PredictionsSource:
    """Precomputed predictions (`--predictions FILE.json`, COCO results format, or a
    prediction store directory written by `fdhclean estimate`).

    The path may be a glob (e.g. `preds/val_*.json` for the per-rank files of
    `fdhclean estimate --world-size N`): the files are merged, the highest score winning.
    JSON is imported once into a columnar store under `cache_dir` (keyed by the files'
    sha256, `fdhclean.predictions_store`); every worker and finalize reads that store.
    """

    def __init__(
        self,
        path: Path,
        sha256: dict[str, str] | str | None = None,
        cache_dir: Path | None = None,
        store_dir: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self._sha256 = sha256
        self.cache_dir = cache_dir
        self._store_dir = store_dir
        self._store = None

    def store(self):
        if self._store is None:
            from fdhclean.predictions_store import PredictionStore

            where = self._store_dir or self.path
            self._store = PredictionStore.open(where, self.cache_dir, self._sha256)
            self._store_dir = self._store.directory
        return self._store

    def provenance(self) -> dict[str, Any]:
        from fdhclean.predictions_store import is_store, source_files

        record = self.store().record
        if is_store(self.path) or not record.get("sources"):  # `fdhclean estimate --out DIR`
            sources = {str(self.path): record["data_sha256"]}
        else:  # this run's file names (the store may come from an import under other names)
            files = source_files(self.path)
            shas = [s["sha256"] for s in record["sources"]]
            sources = {str(f): sha for f, sha in zip(files, shas, strict=True)}
        self._sha256 = sources
        files = list(sources)
        return {
            "name": "predictions",
            "predictions": str(self.path),
            # one file: its hash as a string (the common case); several: path -> hash
            "predictions_sha256": sources[files[0]] if len(files) == 1 else sources,
        }

    def estimates(self, shards: list[Path]) -> Iterator[ShardEstimates]:
        return (ShardEstimates(path) for path in shards)  # looked up where it is processed

    def for_shard(self, shard_path: Path) -> Estimates:
        store = self.store()
        return Estimates(store.as_mapping(), integer_keys=True, many=_store_lookup(store))

    def for_workers(self) -> PredictionsSource:
        # the opened store's directory: workers open it (metadata only), never re-import
        self.store()
        return PredictionsSource(self.path, self._sha256, self.cache_dir, self._store_dir)


def _store_lookup(store) -> Callable[[Sequence[str]], list[np.ndarray | None]]:
    """A block of keys looked up in the store at once (`PredictionStore.lookup`: the same
    rows `get` finds, one search per row group instead of one per key)."""

    def many(keys: Sequence[str]) -> list[np.ndarray | None]:
        found, kps, _scores = store.lookup(keys)
        return [kp if hit else None for kp, hit in zip(kps, found.tolist(), strict=True)]

    return many


class ModelSource:
    """A pose model from local weights (`--estimator NAME --checkpoint PATH`).

    One `estimate_samples` stream runs over all shards of the run, so its crop/decode worker
    processes start once; results are cut back into shards as they arrive (in input order).
    """

    def __init__(self, settings: RefineSettings) -> None:
        from fdhclean.estimators import build_estimator
        from fdhclean.estimators.topdown import FDH_FRAME

        self.settings = settings
        try:
            self.estimator = build_estimator(
                settings.estimator,
                checkpoint=settings.checkpoint,
                checkpoint_sha256=settings.checkpoint_sha256,
                device=_device_for_rank(settings.device),
                batch_size=settings.batch_size,
                flip_test=settings.flip_test,
                **{"frame": FDH_FRAME, **settings.estimator_kwargs()},
            )
        except TypeError as exc:  # an --estimator-option the backend does not take
            raise ValueError(
                f"--estimator {settings.estimator} refuses the options "
                f"{list(settings.estimator_options)}: {exc}"
            ) from None

    def provenance(self) -> dict[str, Any]:
        # how the numbers were made (dtype, decoding, frame...): the estimator says (its
        # Protocol); backend options only when given, so runs without keep their fingerprint
        options = self.settings.estimator_kwargs() if self.settings.estimator_options else None
        return {
            "checkpoint": str(self.settings.checkpoint),
            **self.estimator.provenance(),
            **({"options": options} if options else {}),
        }

    def estimates(self, shards: list[Path]) -> Iterator[ShardEstimates]:
        from fdhclean.estimators import estimate_samples

        plan: deque[_Pending] = deque()  # shards being read / estimated, in order
        stream = estimate_samples(
            self.estimator,
            _raw_pose_samples(shards, plan),
            batch_size=self.settings.batch_size,
            workers=max(1, self.settings.workers),
            progress=False,
        )
        for key, keypoints in stream:
            yield from _finished(plan)
            entry = plan[0]
            if keypoints is not None:  # None: the estimator failed -> no-estimate
                entry.found[key] = keypoints
            entry.received += 1
            yield from _finished(plan)  # hand a complete shard to the voters at once
        yield from _finished(plan)

    def for_shard(self, shard_path: Path) -> Estimates:
        item = next(iter(self.estimates([shard_path])))
        if item.error is not None:
            raise ValueError(item.error)
        return item.estimates

    def for_workers(self) -> None:
        return None  # workers never estimate: the model stays in this process


@dataclass
class _Pending:
    """A shard in the estimator's stream: samples sent, results received."""

    path: Path
    sent: int = 0
    received: int = 0
    read: bool = False  # every sample of it has been sent
    error: str | None = None
    found: dict[str, np.ndarray] = field(default_factory=dict)


def _raw_pose_samples(shards: list[Path], plan: deque) -> Iterator[tuple[str, dict, None]]:
    """Raw pose members of every sample, streamed shard by shard (decoded in the estimator's
    workers); a shard that cannot be read carries its error once its sent samples are back."""
    from fdhclean.estimators.inputs import pose_members
    from fdhclean.shards import ShardReadError, iter_shard

    for path in shards:
        entry = _Pending(path)
        plan.append(entry)
        try:
            for s in iter_shard(path):
                entry.sent += 1
                yield s.key, pose_members(s.find, s.get), None
        except ShardReadError as exc:
            entry.error = str(exc)
        entry.read = True


def _finished(plan: deque) -> Iterator[ShardEstimates]:
    while plan and plan[0].read and plan[0].received == plan[0].sent:
        entry = plan.popleft()
        if entry.error is not None:
            yield ShardEstimates(entry.path, error=entry.error)
        else:
            yield ShardEstimates(entry.path, Estimates(entry.found))


def _device_for_rank(device: str) -> str:
    """Under torchrun, `auto` means this process's own GPU (LOCAL_RANK), not always GPU 0."""
    import os

    local_rank = os.environ.get("LOCAL_RANK")
    if device != "auto" or local_rank is None:
        return device
    import torch

    return f"cuda:{int(local_rank)}" if torch.cuda.is_available() else "cpu"


class ReportEstimates:
    """`fdhclean revote`: the raw estimates a cleaned split's report kept (`new_keypoints`),
    handed on normalised and unchanged (float64), so the vote replays exactly."""

    def __init__(self, split_dir: Path) -> None:
        self.split_dir = Path(split_dir)

    def provenance(self) -> dict[str, Any]:
        from fdhclean.refine.finalize import read_run_record

        parent = read_run_record(self.split_dir)
        return {
            "name": "report",
            "report": str(self.split_dir / "report"),
            "parent_estimator": parent["provenance"].get("estimator"),
        }

    def estimates(self, shards: list[Path]) -> Iterator[ShardEstimates]:
        return (ShardEstimates(path) for path in shards)  # read where the shard is processed

    def for_shard(self, shard_path: Path) -> Estimates:
        from fdhclean.refine.originals import read_parent_rows

        rows = read_parent_rows(shard_path, ["status", "new_keypoints"])
        lookup = {
            key: np.asarray(row["new_keypoints"], dtype=np.float64).reshape(-1, 3)
            for key, row in rows.items()
            if row["status"] == "ok" and row["new_keypoints"] is not None
        }
        return Estimates(lookup, normalized=True)

    def for_workers(self) -> ReportEstimates:
        return self


def open_estimate_source(settings: RefineSettings) -> EstimateSource:
    if settings.revote:
        return ReportEstimates(settings.data_root / settings.split)
    if settings.predictions is not None:
        from fdhclean.predictions_store import store_cache_dir

        cache = store_cache_dir(settings.split_out)
        return PredictionsSource(settings.predictions, cache_dir=cache)
    return ModelSource(settings)
