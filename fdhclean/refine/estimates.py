"""Where a refine run's estimates come from: a COCO results file, or a pose model run here.

Both give, per shard, a mapping key -> (17,3) pixel coordinates of the 288x160 image + score.
A predictions file is imported once into a columnar store that every process reads; a model runs in
the main process (on the GPU) while worker processes vote and write the previous shards.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fdhclean.refine.settings import RefineSettings

Estimates = Mapping[str, np.ndarray]


class EstimateSource(Protocol):
    def provenance(self) -> dict[str, Any]: ...

    def estimates(self, shards: list[Path]) -> Iterator[tuple[Path, Estimates | str | None]]:
        """Per shard, in order: its estimates, an error message, or None (`for_shard` later)."""
        ...

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

    def estimates(self, shards: list[Path]) -> Iterator[tuple[Path, None]]:
        return ((path, None) for path in shards)  # looked up where the shard is processed

    def for_shard(self, shard_path: Path) -> Estimates:
        return self.store().as_mapping()

    def for_workers(self) -> PredictionsSource:
        # the opened store's directory: workers open it (metadata only), never re-import
        self.store()
        return PredictionsSource(self.path, self._sha256, self.cache_dir, self._store_dir)


class ModelSource:
    """A pose model from local weights (`--estimator NAME --checkpoint PATH`).

    One `estimate_samples` stream runs over all shards of the run, so its crop/decode worker
    processes start once; results are cut back into shards as they arrive (in input order).
    """

    def __init__(self, settings: RefineSettings) -> None:
        from fdhclean.estimators import build_estimator

        self.settings = settings
        self.estimator = build_estimator(
            settings.estimator,
            checkpoint=settings.checkpoint,
            checkpoint_sha256=settings.checkpoint_sha256,
            device=_device_for_rank(settings.device),
            batch_size=settings.batch_size,
            flip_test=settings.flip_test,
        )

    def provenance(self) -> dict[str, Any]:
        return {
            "name": self.settings.estimator,
            "checkpoint": str(self.settings.checkpoint),
            "weights_sha256": self.estimator.weights_sha256,
            "flip_test": self.settings.flip_test,
            # how the numbers were made: autocast dtype (bf16 on a GPU) and heatmap decoding
            "autocast_dtype": str(getattr(self.estimator, "autocast_dtype", None)),
            "decoding_blur": getattr(self.estimator, "blur", None),
        }

    def estimates(self, shards: list[Path]) -> Iterator[tuple[Path, Estimates | str]]:
        from fdhclean.estimators import estimate_samples

        plan: deque[list] = deque()  # [path, samples still to come, estimates or error]
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
                entry[2][key] = keypoints
            entry[1] -= 1
            yield from _finished(plan)  # hand a complete shard to the voters at once
        yield from _finished(plan)

    def for_shard(self, shard_path: Path) -> Estimates:
        return dict(next(iter(self.estimates([shard_path])))[1])

    def for_workers(self) -> None:
        return None  # workers never estimate: the model stays in this process


def _raw_pose_samples(shards: list[Path], plan: deque) -> Iterator[tuple[str, dict, None]]:
    """Raw pose members of every sample (decoded in the estimator's workers); a shard that
    cannot be read enters the plan with its error and no samples."""
    from fdhclean.estimators.inputs import pose_members
    from fdhclean.shards import ShardReadError, read_shard

    for path in shards:
        try:
            samples = read_shard(path)
        except ShardReadError as exc:
            plan.append([path, 0, str(exc)])
            continue
        plan.append([path, len(samples), {}])
        for s in samples:
            yield s.key, pose_members(s.find, s.get), None


def _finished(plan: deque) -> Iterator[tuple[Path, Estimates | str]]:
    while plan and plan[0][1] == 0:
        path, _, result = plan.popleft()
        yield path, result


def _device_for_rank(device: str) -> str:
    """Under torchrun, `auto` means this process's own GPU (LOCAL_RANK), not always GPU 0."""
    import os

    local_rank = os.environ.get("LOCAL_RANK")
    if device != "auto" or local_rank is None:
        return device
    import torch

    return f"cuda:{int(local_rank)}" if torch.cuda.is_available() else "cpu"


class NormalizedEstimates(dict):
    """Estimates that are normalised already (x/W, y/H, score), not pixels."""

    normalized = True


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

    def estimates(self, shards: list[Path]) -> Iterator[tuple[Path, None]]:
        return ((path, None) for path in shards)  # read where the shard is processed

    def for_shard(self, shard_path: Path) -> Mapping[str, np.ndarray]:
        from fdhclean.refine.originals import read_parent_rows

        rows = read_parent_rows(shard_path, ["status", "new_keypoints"])
        return NormalizedEstimates(
            (key, np.asarray(row["new_keypoints"], dtype=np.float64).reshape(-1, 3))
            for key, row in rows.items()
            if row["status"] == "ok" and row["new_keypoints"] is not None
        )

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
