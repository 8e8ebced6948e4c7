"""Stream training batches from the shards a manifest lists (webdataset 1.0.2 pipeline).

Why not `wds.WebDataset(..., nodesplitter=wds.split_by_node)`: webdataset takes the rank from
`torch.distributed`/`$RANK` and splits shards only, so it cannot be driven by explicit
`rank`/`world_size` (what tests and tools need) and cannot divide shards that do not split
evenly. The pipeline is still webdataset's: `wds.DataPipeline` with webdataset's tar reader
(`tar_file_iterator` + `group_by_keys`, suffixes lower-cased), `wds.shuffle` with a seeded RNG,
`wds.map` and `wds.batched`; only the shard plan below is ours.

Shard plan of one epoch (one "slot" = one (rank, worker) pair, slot = rank * num_workers +
worker, S = world_size * num_workers slots):
- the shard order is shuffled with an RNG seeded by (seed, epoch), identical on every slot;
- the first N - N % S shards of that order are dealt round-robin, whole, to the slots;
- each of the N % S remaining shards is read by every slot, slot s keeping the samples whose
  index i in the shard satisfies i % S == (s + j) % S (j = the remainder shard's position).
So every sample of an epoch is seen exactly once across ranks x workers, whether or not the
shards divide evenly, and slots differ by at most a few samples (uneven shards are paid for by
reading the few remainder shards' bytes S times, decoding only the kept samples).
The sample shuffle buffer (seeded by seed, epoch, rank, worker) is filled and drained within
each epoch, so epochs never mix. With `infinite=True` each slot runs epoch, epoch + 1, ... back
to back and every batch is full (a batch may straddle two epochs); with `infinite=False` one
epoch is read and each slot's last batch may be partial.
"""

from __future__ import annotations

import itertools
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from triagan_model.data.fdh import IMAGE_H, IMAGE_W, UNUSED_MEMBERS
from triagan_model.data.manifest import (
    Manifest,
    check_shard_sha256,
    check_shard_size,
    read_manifest,
)
from triagan_model.data.overlay import apply_overlay, load_overlay
from triagan_model.data.transforms import (
    SampleError,
    decode_sample,
    flip_draw,
    flip_sample,
    resize_sample,
    to_model_space,
)

BATCH_TENSORS = ("img", "mask", "maskrcnn_mask", "condition", "keypoints")
VERIFY_MODES = ("none", "size", "sha256")


@dataclass(frozen=True)
class ShardPlan:
    """Read shard `path` in epoch `epoch`, keeping samples i with i % stride == offset."""

    path: str
    keypoint_units: str
    epoch: int
    stride: int = 1
    offset: int = 0
    # keys refine marked as errors (manifest totals.error_samples): dropped before the stride,
    # so indices (and the resume arithmetic) count only the samples that are read
    exclude: frozenset[str] = frozenset()


class ShardError(ValueError):
    """A shard that cannot be read as its manifest describes it; the message names it."""


def plan_epoch(
    num_shards: int, *, seed: int, epoch: int, slot: int, num_slots: int, shuffle: bool = True
) -> list[tuple[int, int, int]]:
    """(shard index, stride, offset) triples one slot reads in one epoch (module docstring)."""
    if not 0 <= slot < num_slots:
        raise ValueError(f"slot {slot} out of range for {num_slots} slots")
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"triagan-shards:{seed}:{epoch}").shuffle(order)
    whole = num_shards - num_shards % num_slots
    plans = [(order[i], 1, 0) for i in range(slot, whole, num_slots)]
    for j, i in enumerate(range(whole, num_shards)):
        plans.append((order[i], num_slots, (slot + j) % num_slots))
    return plans


def decode_named(raw: dict[str, Any]) -> dict[str, Any]:
    """`decode_sample` of a raw sample; any failure is a SampleError naming shard and key."""
    try:
        return decode_sample(raw, raw["__units__"])
    except Exception as exn:  # untrusted bytes: PIL and numpy raise many types
        raise SampleError(
            f"shard {raw.get('__url__')}, sample {raw.get('__key__')}: cannot decode "
            f"({type(exn).__name__}: {exn}); `fdhclean refine` marks such samples "
            "bad-member and lists them in the manifest (a sample without regular members is "
            "kept there as a placeholder without an image); training skips the listed ones "
            "unless --include-error-samples"
        ) from None


def _wanted_member(fname: str) -> bool:
    """Skip the CSE members before they are even read into memory (never decoded here)."""
    _, suffix = base_plus_ext(fname)
    return suffix is None or suffix.lower() not in UNUSED_MEMBERS


def read_shard(plan: ShardPlan) -> Iterator[dict[str, Any]]:
    """Raw samples (member bytes keyed by lower-cased suffix) of one planned shard."""
    key, dropped, kept = None, set(), 0
    try:
        with open(plan.path, "rb") as stream:
            files = tar_file_iterator(stream, select_files=_wanted_member)
            tagged = ({**f, "__url__": plan.path} for f in files)
            for sample in group_by_keys(tagged, lcase=True):
                key = sample["__key__"]
                if key in plan.exclude:
                    dropped.add(key)
                    continue
                kept += 1
                if plan.stride > 1 and (kept - 1) % plan.stride != plan.offset:
                    continue
                sample["__epoch__"] = plan.epoch
                sample["__units__"] = plan.keypoint_units
                yield sample
    except (tarfile.TarError, OSError, EOFError, ValueError) as exn:  # webdataset's, tarfile's
        where = f"after sample {key}" if key is not None else "before its first sample"
        raise ShardError(f"shard {plan.path}: unreadable {where} ({type(exn).__name__}: {exn})"
                         "; check it with `fdhclean verify` and restore it") from None  # fmt: skip
    if dropped != plan.exclude:  # the skip counts (and resume positions) would be wrong
        missing = sorted(plan.exclude - dropped)[:5]
        raise ShardError(f"shard {plan.path} holds no samples {missing} that its manifest "
                         "lists as error samples: the manifest does not describe it")  # fmt: skip


def check_listed_keys(plan: ShardPlan) -> None:
    """The error keys the manifest lists for the shard are in it, from the tar headers only
    (``tarfile`` seeks over member data): checked before the shard's first sample is used, not
    after its samples were trained on. ``read_shard`` checks again what it actually dropped."""
    if not plan.exclude:
        return
    try:
        with tarfile.open(plan.path, "r:") as tar:
            keys = {base_plus_ext(m.name)[0] for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as exn:
        raise ShardError(f"shard {plan.path}: unreadable tar index ({type(exn).__name__}: {exn})"
                         "; check it with `fdhclean verify` and restore it") from None  # fmt: skip
    missing = sorted(plan.exclude - keys)
    if missing:
        raise ShardError(f"shard {plan.path} holds no samples {missing[:5]} that its manifest "
                         "lists as error samples: the manifest does not describe it")  # fmt: skip


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample tensors into a batch; keys stay a list of str."""
    batch: dict[str, Any] = {name: torch.stack([s[name] for s in samples])
                             for name in BATCH_TENSORS}  # fmt: skip
    batch["key"] = [s["key"] for s in samples]
    return batch


@dataclass(frozen=True)
class LoaderConfig:
    resolution: tuple[int, int]
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    shuffle_buffer: int = 1000
    flip: bool = True
    epoch: int = 0
    infinite: bool = True
    # Resume: batches this rank already consumed (DataLoader order: batch i comes from worker
    # i % num_workers). Whole epochs are skipped from the manifest's sample counts without
    # reading; within the epoch, raw samples are dropped after the shuffle, before decoding.
    skip_batches: int = 0
    # "none", "size" (every shard's byte count, at the start) or "sha256" (sizes at the start,
    # and each shard's sha256 before its first sample is used in this process)
    verify: str = "size"
    include_error_samples: bool = False  # train on the samples refine marked as errors


def _slot_epoch_count(counts: list[int], plans: list[tuple[int, int, int]]) -> int:
    """Samples one slot reads in one epoch (from the manifest's per-shard sample counts)."""
    return sum(len(range(offset, counts[i], stride)) for i, stride, offset in plans)


class FDHStream(IterableDataset):
    """Batches of one manifest for one rank; DataLoader workers split it further."""

    def __init__(
        self,
        manifest: Manifest,
        config: LoaderConfig,
        overlay: dict[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= config.rank < config.world_size:
            raise ValueError(f"rank {config.rank} out of range for world_size {config.world_size}")
        stored = manifest.resolution or (IMAGE_H, IMAGE_W)
        h, w = config.resolution
        if h > stored[0] or w > stored[1] or stored[0] % h or stored[1] % w:
            raise ValueError(f"{manifest.path} stores {stored[0]}x{stored[1]} images: cannot "
                             f"serve {h}x{w} (the stage resolution must divide it)")  # fmt: skip
        if config.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, not {config.verify!r}")
        if config.verify != "none":
            for shard in manifest.shards:
                check_shard_size(manifest, shard)
                if config.verify == "sha256" and shard.sha256 is None:
                    check_shard_sha256(manifest.path, shard)  # raises: nothing to verify
        self.manifest = manifest
        self.config = config
        self.overlay = overlay
        keep_all = config.include_error_samples
        self._exclude = [frozenset() if keep_all else frozenset(s.error_samples)
                         for s in manifest.shards]  # fmt: skip
        self._counts = [s.samples - len(x) for s, x in zip(manifest.shards, self._exclude,
                                                          strict=True)]  # fmt: skip
        self._verified: set[int] = set()  # shards whose sha256 this process has checked
        self._keys_checked: set[int] = set()  # shards whose listed error keys were found

    def _read_plans(self, plans: Iterator[tuple[int, ShardPlan]]) -> Iterator[dict[str, Any]]:
        for index, plan in plans:
            if self.config.verify == "sha256" and index not in self._verified:
                # Before use, not while streaming: a shard whose bytes changed never feeds a
                # batch (a streaming hash would know only after its samples were trained on).
                check_shard_sha256(self.manifest.path, self.manifest.shards[index])
                self._verified.add(index)
            if index not in self._keys_checked:
                check_listed_keys(plan)  # before its samples, not after (docstring there)
                self._keys_checked.add(index)
            yield from read_shard(plan)

    def _epoch_samples(self, worker: int, num_workers: int, epoch: int) -> wds.DataPipeline:
        """Raw samples of one epoch for one slot, shuffled within the epoch only."""
        cfg, shards = self.config, self.manifest.shards
        slots = plan_epoch(len(shards), seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle,
                           slot=cfg.rank * num_workers + worker,
                           num_slots=cfg.world_size * num_workers)  # fmt: skip
        plans = [(i, ShardPlan(str(shards[i].path), shards[i].keypoint_units, epoch, stride,
                               offset, self._exclude[i]))
                 for i, stride, offset in slots]  # fmt: skip
        stages: list[Any] = [lambda: iter(plans), self._read_plans]
        if cfg.shuffle and cfg.shuffle_buffer > 1:
            rng = random.Random(f"triagan-samples:{cfg.seed}:{epoch}:{cfg.rank}:{worker}")
            stages.append(wds.shuffle(cfg.shuffle_buffer, cfg.shuffle_buffer, rng=rng))
        return wds.DataPipeline(*stages)

    def _samples(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        cfg = self.config
        epoch, skip = cfg.epoch, self._skip_samples(worker, num_workers)
        while True:
            if skip:
                slots = plan_epoch(len(self.manifest.shards), seed=cfg.seed, epoch=epoch,
                                   shuffle=cfg.shuffle, slot=cfg.rank * num_workers + worker,
                                   num_slots=cfg.world_size * num_workers)  # fmt: skip
                count = _slot_epoch_count(self._counts, slots)
                if count and skip >= count:  # a whole epoch already consumed: not even read
                    skip -= count
                    epoch += 1
                    continue
            samples = self._epoch_samples(worker, num_workers, epoch)
            produced = 0
            for sample in itertools.islice(samples, skip, None) if skip else samples:
                produced += 1
                yield sample
            if not cfg.infinite:
                return
            if produced == 0 and skip == 0:  # an endless stream would never yield: say why
                raise ValueError(
                    f"rank {cfg.rank} worker {worker} has no samples in epoch {epoch}: the "
                    f"{self.manifest.num_samples} samples of {self.manifest.path} cannot feed "
                    f"{cfg.world_size} rank(s) x {num_workers} worker(s)"
                )
            skip = 0
            epoch += 1

    def _skip_samples(self, worker: int, num_workers: int) -> int:
        """Raw samples of this worker behind `skip_batches` (every batch is full: infinite)."""
        n = self.config.skip_batches
        if n and not self.config.infinite:
            raise ValueError("skip_batches needs infinite=True (full batches)")
        mine = n // num_workers + (1 if worker < n % num_workers else 0)
        return mine * self.config.batch_size

    def _process(self, raw: dict[str, Any]) -> dict[str, Any]:
        sample = decode_named(raw)
        sample = apply_overlay(sample, self.overlay)
        sample = resize_sample(sample, self.config.resolution)
        if self.config.flip and flip_draw(self.config.seed, raw["__epoch__"], sample["key"]):
            sample = flip_sample(sample)
        return to_model_space(sample)

    def pipeline(self, worker: int = 0, num_workers: int = 1) -> wds.DataPipeline:
        """The webdataset pipeline of one slot (exposed so tests can run slots in-process).

        On resume the DataLoader asks worker 0 first again, but the next batch of the
        uninterrupted run came from worker `skip_batches % num_workers`: rotate the slots.
        """
        cfg = self.config
        worker = (worker + cfg.skip_batches) % num_workers
        return wds.DataPipeline(
            lambda: self._samples(worker, num_workers),
            wds.map(self._process),
            wds.batched(cfg.batch_size, collation_fn=collate, partial=not cfg.infinite),
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return iter(self.pipeline(worker, num_workers))


def build_loader(
    manifest_path: str | os.PathLike,
    *,
    resolution: tuple[int, int] = (IMAGE_H, IMAGE_W),
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    shuffle: bool = True,
    shuffle_buffer: int = 1000,
    flip: bool = True,
    verify: bool | str = "size",
    include_error_samples: bool = False,
    overlay: str | os.PathLike | dict[str, np.ndarray] | None = None,
    epoch: int = 0,
    infinite: bool = True,
    pin_memory: bool = False,
    skip_batches: int = 0,
) -> DataLoader:
    """An iterable of batches {img, mask, maskrcnn_mask, condition, keypoints, key}.

    img/condition (B,3,H,W) in [-1, 1] (condition: unknown region 0), mask (B,1,H,W) 1 = known
    background, maskrcnn_mask (B,1,H,W) 1 = not person, keypoints (B,17,3) normalised, key
    list[str]. `resolution` is the stage's (H, W). `shuffle=False` reads shards and samples in
    manifest order (evaluation); `shuffle_buffer` is the sample-level buffer (in raw samples).
    `skip_batches` resumes a stream: the first `skip_batches` batches of this rank are skipped
    exactly (the same batches follow as in an uninterrupted run). `verify`: "size" (default),
    "sha256" (also each shard's hash before its first use in each process), "none", or True
    (every shard hashed now). Samples the manifest lists as refine errors are skipped unless
    `include_error_samples`.
    """
    manifest = read_manifest(manifest_path, verify=verify is True)  # True: all hashed now
    if isinstance(overlay, str | os.PathLike | Path):
        overlay = load_overlay(overlay)
    config = LoaderConfig(
        resolution=(int(resolution[0]), int(resolution[1])),
        batch_size=int(batch_size),
        seed=int(seed),
        rank=int(rank),
        world_size=int(world_size),
        shuffle=shuffle,
        shuffle_buffer=int(shuffle_buffer),
        flip=flip,
        epoch=int(epoch),
        infinite=infinite,
        skip_batches=int(skip_batches),
        verify={True: "size", False: "none"}.get(verify, verify),  # True: hashed above
        include_error_samples=include_error_samples,
    )
    stream = FDHStream(manifest, config, overlay)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0 and infinite)  # fmt: skip
