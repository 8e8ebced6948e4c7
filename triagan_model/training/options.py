"""Typed options of one training run (what `triagan train` builds from its flags).

The model/schedule config (``TrainConfig``: stages, batch and images per stage, losses,
optimisers, EMA, augmentation) comes from ``configs.py``/``pipelines/*.toml``; ``TrainOptions``
adds where and how this run happens: the manifest, the run directory, seeds, the per-GPU batch,
ticks, slices, devices. Units are in the names (style.md 8).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triagan_model.configs import StageConfig, TrainConfig


@dataclass(frozen=True)
class TrainOptions:
    config: TrainConfig
    manifest: str  # the training manifest (docs/manifest.md); training never takes a glob
    run_dir: str
    seed: int = 0
    batch_gpu: int | None = None  # per-GPU micro-batch; None = stage batch / world size
    num_workers: int = 2  # DataLoader workers per rank
    shuffle_buffer: int = 1000  # sample-level shuffle buffer of the loader (raw samples)
    tick_kimg: float = 4.0  # statistics/progress granularity (StyleGAN's kimg_per_tick)
    snapshot_ticks: int = 50  # training state + EMA weights every this many ticks
    image_ticks: int = 50  # sample grid + loss plot every this many ticks
    slice_kimg: float | None = None  # stop (resumably) after this many kimg in this invocation
    device: str = "auto"  # auto, cpu, cuda
    tensorboard: bool = False
    grid_size: int = 8  # samples in the grids (the first of the manifest, fixed z)
    feature_weights_dir: str | None = None  # local weights of D's feature networks
    progress: bool = True  # progress bar with ETA on rank 0's terminal
    keep_checkpoints: int = 2
    prepared: str | None = None  # `triagan prepare` output: pre-resized shards per stage
    keypoints_overlay: str | None = None  # reference-style refined-keypoint JSON {key: 17x3}
    verify: str = "sha256"  # shards: "size" at the start, "sha256" also before each first use
    include_error_samples: bool = False  # train on samples the manifest lists as refine errors

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"}
        d["config"] = self.config.name
        return d


@dataclass(frozen=True)
class BatchPlan:
    batch: int  # global images per optimiser step (the config's)
    batch_gpu: int  # images per forward/backward on one rank
    accum: int  # micro-batches per step on one rank: batch = batch_gpu * accum * world_size

    def describe(self, world_size: int) -> str:
        return (f"batch {self.batch} = {self.batch_gpu} per GPU x {self.accum} accumulation "
                f"step(s) x {world_size} GPU(s)")  # fmt: skip


def plan_batch(stage: StageConfig, batch_gpu: int | None, world_size: int) -> BatchPlan:
    """Gradient accumulation reaching the configured batch on ``world_size`` GPUs."""
    if stage.batch % world_size:
        raise ValueError(f"stage {stage.name}: batch {stage.batch} does not split over "
                         f"{world_size} processes")  # fmt: skip
    per_rank = stage.batch // world_size
    bg = per_rank if batch_gpu is None else min(int(batch_gpu), per_rank)
    if bg <= 0 or per_rank % bg:
        raise ValueError(f"stage {stage.name}: --batch-gpu {batch_gpu} must divide the per-rank "
                         f"batch {per_rank} (= {stage.batch} / {world_size})")  # fmt: skip
    return BatchPlan(stage.batch, bg, per_rank // bg)


def stage_steps(stage: StageConfig) -> int:
    """Optimiser steps of a stage: ceil(images / batch)."""
    return math.ceil(stage.kimg * 1000 / stage.batch)


def describe_plan(opts: TrainOptions, world_size: int) -> str:
    """Human-readable plan of the whole run (`--dry-run` prints it)."""
    cfg = opts.config
    lines = [f"config {cfg.name}: {cfg.description}",
             f"manifest {opts.manifest}", f"run dir {opts.run_dir}",
             f"loss {cfg.loss.kind}; Adam lr {cfg.g_optim.lr} betas ({cfg.g_optim.beta1}, "
             f"{cfg.g_optim.beta2}); EMA {cfg.ema.beta}/step, ramp-up {cfg.ema.rampup}; "
             f"D feature networks {list(cfg.discriminator.feature_networks)}"]  # fmt: skip
    for i, s in enumerate(cfg.stages):
        bp = plan_batch(s, opts.batch_gpu, world_size)
        start = "fresh G" if i == 0 else f"G from {cfg.stages[i - 1].name} EMA"
        lines.append(f"  stage {i} {s.name}: {s.kimg:g} kimg, {stage_steps(s)} steps, "
                     f"{bp.describe(world_size)}; {start}, fresh D")  # fmt: skip
    return "\n".join(lines)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    from triagan_model.data.manifest import write_json_atomic

    write_json_atomic(path, json.loads(json.dumps(doc, default=str)))
