"""Where a refine run's estimates come from: a COCO results file, or a pose model run here.

Every source gives, per shard, an object that `attach_estimates` asks block by block for the
(17,3) pixel coordinates of the 288x160 image + score of the block's samples (`BlockEstimates`).
A predictions file is imported once into a columnar store that every process reads; a model runs
where the shard is cleaned, inside the one streaming pass over the shard (each shard is read
once, E_mask decoded once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fdhclean.refine.settings import RefineSettings

if TYPE_CHECKING:
    from fdhclean.estimators.protocol import PoseEstimator
    from fdhclean.refine.sample import Sample

_NO_PREDICTION = "no prediction for this key"


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
    batch_size: int = 0  # `BlockEstimates`: no model batches

    def get(self, key: str) -> np.ndarray | None:
        return self.lookup.get(key)

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """`[self.get(k) for k in keys]`, in one call where the source can."""
        if self.many is not None:
            return self.many(keys)
        return [self.lookup.get(key) for key in keys]

    def for_samples(self, samples: Sequence[Sample]) -> list[np.ndarray | None]:
        """`BlockEstimates`: only the keys are needed."""
        return self.get_many([s.key for s in samples])

    def missing_reason(self, key: str) -> str:
        """Why `key` has no estimate, for its report row."""
        if self.integer_keys:
            try:
                int(key)
            except ValueError:
                return f"key {key!r} is not an integer, so no COCO image_id can match it"
        return _NO_PREDICTION


class BlockEstimates(Protocol):
    """One shard's estimates, asked for block by block as the shard streams: the estimates
    (pixels, or normalised where `normalized`) of a block's `ok` samples, None where there is
    none (`missing_reason` says why, for the report)."""

    normalized: bool
    batch_size: int  # a model's batch (blocks hold at least this many samples); 0: none

    def for_samples(self, samples: Sequence[Sample]) -> list[np.ndarray | None]: ...

    def missing_reason(self, key: str) -> str: ...


class EstimateSource(Protocol):
    """Where a run's estimates come from. `for_shard` is called where the shard is cleaned;
    with `--workers N`, `for_workers()` is what each worker process gets (`spawn`: start them
    with the spawn method), `start_worker(N)` runs in each worker first, and `release()` in
    this process before the pool starts."""

    spawn: bool

    def provenance(self) -> dict[str, Any]: ...

    def for_shard(self, shard_path: Path) -> BlockEstimates: ...

    def for_workers(self) -> EstimateSource: ...

    def start_worker(self, workers: int) -> None: ...

    def release(self) -> None: ...


class _SharedSource:
    """Sources read the same way in every process (a store, a report): workers take them as
    they are, forked, and nothing is built or freed per process."""

    spawn = False  # fork is fine: nothing in these sources holds a CUDA context

    def start_worker(self, workers: int) -> None:
        """Called once in each of `workers` worker processes before any shard."""

    def release(self) -> None:
        """This process estimates no more (its workers do)."""


class PredictionsSource(_SharedSource):
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

    The model runs where the shard is cleaned, block by block of the one streaming pass
    (`ModelEstimates`): `--workers 0` in this process, `--workers N` in N worker processes
    that each build their own replica on the same device (spawned: CUDA cannot be used in a
    forked child). This process builds it once anyway: for the provenance (the fingerprint
    needs it) and to refuse bad weights or options before any work; it frees it before the
    workers start (`release`), so only the N replicas hold model memory on the device (this
    process keeps its CUDA context).
    """

    spawn = True

    def __init__(self, settings: RefineSettings, *, build: bool = True) -> None:
        self.settings = settings
        self.estimator = _build_model(settings) if build else None
        # kept apart from the estimator, which `release` frees
        self._provenance = self._describe() if build else None

    def _describe(self) -> dict[str, Any]:
        # how the numbers were made (dtype, decoding, frame...): the estimator says (its
        # Protocol); backend options only when given, so runs without keep their fingerprint
        options = self.settings.estimator_kwargs() if self.settings.estimator_options else None
        return {
            "checkpoint": str(self.settings.checkpoint),
            **self.estimator.provenance(),
            **({"options": options} if options else {}),
        }

    def provenance(self) -> dict[str, Any]:
        if self._provenance is None:
            self._provenance = self._describe()
        return self._provenance

    def for_shard(self, shard_path: Path) -> ModelEstimates:
        if self.estimator is None:  # a worker whose `start_worker` was not called
            self.estimator = _build_model(self.settings)
        return ModelEstimates(self.estimator, self.settings.batch_size)

    def for_workers(self) -> ModelSource:
        """What a worker process gets: the settings, not the model (each builds its own),
        pinned to the sha256 of the weights this process loaded, which the run records: a
        replica refuses weights changed since (`checkpoint sha256 mismatch`, exit 2)."""
        sha256 = self.provenance().get("weights_sha256") or self.settings.checkpoint_sha256
        return ModelSource(replace(self.settings, checkpoint_sha256=sha256), build=False)

    def start_worker(self, workers: int) -> None:
        """Build this worker's replica, sharing torch's CPU threads among the `workers`
        replicas (each would otherwise take them all: oversubscription, also beside a GPU
        model, whose replicas crop on the CPU). Torch's own default (the cores it sees, or
        $OMP_NUM_THREADS) is divided, so one worker keeps the threads of `--workers 0`; the
        float bits of a CPU model depend on its thread count (README: Scale-out)."""
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // max(1, workers)))
        self.estimator = _build_model(self.settings)

    def release(self) -> None:
        """Free this process's model (device memory included) before the workers start."""
        import gc

        if self.estimator is None:
            return
        self.estimator = None
        gc.collect()
        if not _on_cpu(self.settings.device):
            import torch

            torch.cuda.empty_cache()


@dataclass(frozen=True)
class ModelEstimates:
    """One shard's estimates from a model, computed block by block as the shard streams: the
    `ok` samples of a block already carry their person box (`Sample.box`, decoded from E_mask /
    mask by `decode_sample`: the box `estimators.inputs.decode_for_pose` gives), so only
    `image.png` is decoded here. Consecutive ok samples of the block go to the model in
    batches of `batch_size`. A sample whose image does not decode, or that the estimator
    fails on, has no estimate (reported `no-estimate`, as a missing prediction)."""

    estimator: PoseEstimator
    batch_size: int
    normalized: bool = False

    def for_samples(self, samples: Sequence[Sample]) -> list[np.ndarray | None]:
        from fdhclean.decode import decode_image
        from fdhclean.estimators import estimate_samples
        from fdhclean.fdh import MEMBER_IMAGE

        found: list[np.ndarray | None] = [None] * len(samples)
        inputs, where = [], []
        for i, s in enumerate(samples):
            try:
                image = decode_image(s.raw.get(MEMBER_IMAGE))
            except (KeyError, ValueError):
                continue  # no estimate: `missing_reason`
            inputs.append((s.key, image, np.asarray(s.box)))
            where.append(i)
        stream = estimate_samples(
            self.estimator, inputs, batch_size=self.batch_size, workers=0, progress=False
        )
        for i, (_key, keypoints) in zip(where, stream, strict=True):
            found[i] = keypoints
        return found

    def missing_reason(self, key: str) -> str:
        return _NO_PREDICTION  # what the report has always said for these


def _build_model(settings: RefineSettings) -> PoseEstimator:
    from fdhclean.estimators import build_estimator
    from fdhclean.estimators.topdown import FDH_FRAME

    try:
        return build_estimator(
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
    except FileNotFoundError as exc:  # weights missing or incomplete: a setting, not OUT's disk
        raise ValueError(str(exc)) from None


def _on_cpu(device: str) -> bool:
    """Whether the model of this process runs on the CPU (`auto`: when no GPU is visible)."""
    device = _device_for_rank(device)
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def _device_for_rank(device: str) -> str:
    """Under torchrun, `auto` means this process's own GPU (LOCAL_RANK), not always GPU 0."""
    import os

    local_rank = os.environ.get("LOCAL_RANK")
    if device != "auto" or local_rank is None:
        return device
    import torch

    return f"cuda:{int(local_rank)}" if torch.cuda.is_available() else "cpu"


class ReportEstimates(_SharedSource):
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
