"""Pre-resized shard copies for the low-resolution stages (fdh-format.md, derived layouts).

`prepare` reads every shard of a manifest once and writes, per stage height H (width
H * 160 / 288), `OUT/<H>x<W>/<split>/out-%06d.tar` (same shard index and sample order as the input)
holding image.png, mask.png, maskrcnn_mask.png, condition.png (image with the unknown region set
to 127, then resized) and keypoints.npy copied byte for byte (its units stay the parent's and are
recorded per shard), plus any other member except vertices.npy / E_mask.png. Each resolution gets
its own manifest `OUT/<H>x<W>/<split>.json` naming the parent manifest and its sha256.
Tar headers are deterministic (mtime 0, uid/gid 0, no user names, mode 0644), every file is
written under a temporary name and renamed, so a rerun skips shards that are already complete.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from triagan_model import __version__
from triagan_model.atomic import atomic_open
from triagan_model.data.fdh import (
    CONDITION_FILL_U8,
    IMAGE_H,
    IMAGE_W,
    MEMBER_CONDITION,
    MEMBER_IMAGE,
    MEMBER_KEYPOINTS,
    MEMBER_MASK,
    MEMBER_MASKRCNN,
)
from triagan_model.data.loader import ShardPlan, decode_named, read_shard
from triagan_model.data.manifest import (
    file_sha256,
    manifest_sha256,
    read_manifest,
    write_json_atomic,
)
from triagan_model.data.transforms import masked_condition, resize_sample
from triagan_model.provenance import git_commit, utc_now

_IMAGE_MEMBERS = (MEMBER_IMAGE, MEMBER_MASK, MEMBER_MASKRCNN, MEMBER_CONDITION)
_PNG_LEVEL = 6


def stage_size(height: int) -> tuple[int, int]:
    """(H, W) of a stage from its height: W = H * 160 / 288 (18x10, 36x20, 72x40, 144x80)."""
    width = height * IMAGE_W // IMAGE_H
    if height <= 0 or width * IMAGE_H != height * IMAGE_W:
        raise ValueError(f"height {height} does not give an integer width at 288:160")
    return height, width


class DeterministicTarWriter:
    """A tar written under a temporary name, renamed into place only when closed cleanly."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # atomic_open renames the temporary file into place on a clean exit, removes it otherwise
        self._stack = ExitStack()
        self._file = self._stack.enter_context(atomic_open(self.path, "wb"))
        # The writer owns the tar for its lifetime; __exit__ closes it (hence no `with`).
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)  # noqa: SIM115

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def __enter__(self) -> DeterministicTarWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._tar.close()
        except BaseException as closing:  # a tar that did not close is not renamed into place
            self._stack.__exit__(type(closing), closing, closing.__traceback__)
            raise
        self._stack.__exit__(exc_type, exc, tb)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


def _to_u8(x: torch.Tensor) -> np.ndarray:
    """(C,H,W) float in [0, 255] -> (H,W,C) or (H,W) uint8, rounded."""
    arr = torch.round(x).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def encode_resized(raw: dict[str, Any], size: tuple[int, int]) -> dict[str, bytes]:
    """Members of one prepared sample at `size` (suffix -> bytes), from a raw source sample."""
    decoded = decode_named(raw)
    if "condition" not in decoded:
        decoded["condition"] = masked_condition(decoded["img"], decoded["mask"], CONDITION_FILL_U8)
    small = resize_sample(decoded, size)
    members = {
        MEMBER_IMAGE: _png_bytes(_to_u8(small["img"])),
        MEMBER_MASK: _png_bytes(_to_u8(small["mask"] * 255)),
        MEMBER_MASKRCNN: _png_bytes(_to_u8(small["maskrcnn_mask"] * 255)),
        MEMBER_CONDITION: _png_bytes(_to_u8(small["condition"])),
        MEMBER_KEYPOINTS: raw[MEMBER_KEYPOINTS],
    }
    for suffix, data in raw.items():  # e.g. keypoints_original.npy of cleaned shards
        if not suffix.startswith("__") and suffix not in members and suffix not in _IMAGE_MEMBERS:
            members[suffix] = data
    return members


@dataclass(frozen=True)
class ShardTask:
    index: int
    source: str
    keypoint_units: str
    outputs: tuple[tuple[tuple[int, int], str], ...]  # ((H, W), output tar path)
    overwrite: bool
    # samples refine marked as errors (manifest totals.error_samples): not prepared, since
    # training skips them by default and they may not even decode
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ShardResult:
    index: int
    size: tuple[int, int]
    path: str
    samples: int
    bytes: int
    sha256: str
    skipped: bool


def _count_samples(path: Path) -> int:
    with tarfile.open(path) as tar:
        return len({name.split(".", 1)[0] for name in tar.getnames()})


def prepare_shard(task: ShardTask) -> list[ShardResult]:
    """Write every resolution of one input shard (skipped when all outputs already exist)."""
    skipped = not task.overwrite and all(Path(p).is_file() for _, p in task.outputs)
    if not skipped:
        with ExitStack() as stack:  # a failure removes every temporary tar of this shard
            writers = [(size, stack.enter_context(DeterministicTarWriter(Path(p))))
                       for size, p in task.outputs]  # fmt: skip
            plan = ShardPlan(task.source, task.keypoint_units, epoch=0, exclude=task.exclude)
            for raw in read_shard(plan):
                for size, writer in writers:
                    for suffix, data in encode_resized(raw, size).items():
                        writer.add(f"{raw['__key__']}.{suffix}", data)
    results = []
    for size, p in task.outputs:
        path = Path(p)
        results.append(ShardResult(task.index, size, p, _count_samples(path),
                                   path.stat().st_size, file_sha256(path), skipped))  # fmt: skip
    return results


@dataclass(frozen=True)
class PrepareSummary:
    manifests: dict[tuple[int, int], Path]
    shards: int
    samples: int
    skipped_shards: int


def _write_manifests(
    source: Path,
    split: str | None,
    out_dir: Path,
    results: list[ShardResult],
    tasks: list[ShardTask],
    src_res: tuple[int, int],
) -> dict[tuple[int, int], Path]:
    parent = {"path": str(source.resolve()), "sha256": manifest_sha256(source)}
    units = {t.index: t.keypoint_units for t in tasks}
    commit, written = git_commit(), {}
    for size, _ in tasks[0].outputs:
        mine = sorted((r for r in results if r.size == size), key=lambda r: r.index)
        shards = [{"path": f"{Path(r.path).parent.name}/{Path(r.path).name}",
                   "samples": r.samples, "bytes": r.bytes,
                   "sha256": r.sha256, "keypoint_units": units[r.index]} for r in mine]  # fmt: skip
        data = {
            "format": "fdh-manifest", "version": 1, "split": split, "created": utc_now(),
            "root": None, "shards": shards,
            "totals": {"samples": sum(r.samples for r in mine),
                       "bytes": sum(r.bytes for r in mine)},
            "provenance": {
                "tool": "triagan prepare", "package_version": __version__, "git_commit": commit,
                "parent": parent, "resolution": [size[0], size[1]],
                "error_samples_skipped": sum(len(t.exclude) for t in tasks),
                "source_resolution": [src_res[0], src_res[1]],
                "resize": {"image": "bilinear, antialiased", "mask": "known only if all known",
                           "maskrcnn_mask": "nearest", "condition": "unknown=127, bilinear"},
            },
        }  # fmt: skip
        written[size] = out_dir / f"{size[0]}x{size[1]}" / f"{split or 'data'}.json"
        write_json_atomic(written[size], data)
    return written


def _check_parent(
    source: Path, out_dir: Path, sizes: list[tuple[int, int]], split: str, overwrite: bool
) -> None:
    """Each split gets its own shard directory (OUT/<H>x<W>/<split>/); a rerun skips shards
    already written, which is only right for the same parent manifest."""
    sha = manifest_sha256(source)
    for size in sizes:
        existing = out_dir / f"{size[0]}x{size[1]}" / f"{split}.json"
        if existing.is_file() and not overwrite:
            parent = read_manifest(existing).provenance.get("parent") or {}
            if parent.get("sha256") != sha:
                raise ValueError(
                    f"{existing} was prepared from another manifest ({parent.get('path')}); "
                    "use another --out, or --overwrite to prepare it again"
                )


def _run_tasks(tasks: list[ShardTask], workers: int) -> Iterable[list[ShardResult]]:
    if workers <= 1:
        yield from map(prepare_shard, tasks)
        return
    # One torch thread per worker process; set there, not here: with one process the caller's
    # thread count stays as it was (it changes float reductions of later work in the process).
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:  # fmt: skip
        yield from pool.map(prepare_shard, tasks)


def prepare(
    manifest_path: str | os.PathLike,
    heights: list[int],
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> PrepareSummary:
    """Write pre-resized shards and one manifest per stage height (module docstring)."""
    source, out_dir = Path(manifest_path), Path(out_dir)
    manifest = read_manifest(source)
    src_res = manifest.resolution or (IMAGE_H, IMAGE_W)
    sizes = [stage_size(h) for h in heights]
    for size in sizes:
        if size[0] > src_res[0] or src_res[0] % size[0] or src_res[1] % size[1]:
            raise ValueError(f"{size[0]}x{size[1]} does not divide the stored "
                             f"{src_res[0]}x{src_res[1]} of {source}")  # fmt: skip
    split = manifest.split or "data"
    _check_parent(source, out_dir, sizes, split, overwrite)
    tasks = [
        ShardTask(
            i,
            str(shard.path),
            shard.keypoint_units,
            tuple((s, str(out_dir / f"{s[0]}x{s[1]}" / split / f"out-{i:06d}.tar")) for s in sizes),
            overwrite,
            frozenset(shard.error_samples),
        )  # fmt: skip
        for i, shard in enumerate(manifest.shards)
    ]
    stream = _run_tasks(tasks, workers)
    if progress is not None:
        stream = progress(stream, len(tasks))
    results = [r for shard_results in stream for r in shard_results]
    manifests = _write_manifests(source, manifest.split, out_dir, results, tasks, src_res)
    return PrepareSummary(
        manifests=manifests,
        shards=len(tasks),
        samples=sum(r.samples for r in results if r.size == sizes[0]),
        skipped_shards=sum(1 for r in results if r.size == sizes[0] and r.skipped),
    )
