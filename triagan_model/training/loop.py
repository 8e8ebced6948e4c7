"""The training loop: every stage of one config, one after the other (triagan-spec "Training").

Per stage: G starts from the previous stage's EMA generator (tensors loaded by name and shape,
the new top level left freshly initialised, nothing frozen) and D starts fresh. One optimiser
step sees ``stage.batch`` images: a D phase (the config's loss object, ``training/losses.py``:
hinge or masked hinge on real vs generated images), then a G phase (-mean D logits) on the same
real batches with new latents, each with gradient accumulation over ``accum`` micro-batches
and gradients averaged over ranks; then the EMA update. D sees blurred (fading) and
DiffAugmented images. Rerunning the same command resumes
from the newest checkpoint of the first unfinished stage, bit for bit on a deterministic device.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triagan_model.data.loader import build_loader
from triagan_model.data.manifest import manifest_sha256
from triagan_model.networks.conditioning import build_condition
from triagan_model.networks.discriminator import ProjectedDiscriminator
from triagan_model.networks.generator import TriaGANGenerator
from triagan_model.training import checkpoint, distributed, rundir, seeding
from triagan_model.training import stats as stats_mod
from triagan_model.training.augment import blur, blur_sigma, diff_augment, stage_blur_fade_kimg
from triagan_model.training.ema import make_ema, update_ema
from triagan_model.training.losses import build_loss
from triagan_model.training.options import BatchPlan, TrainOptions, plan_batch
from triagan_model.training.plots import save_grid, save_loss_plot
from triagan_model.weights import load_matching, read_weights_dir, save_generator


@dataclass
class RunResult:
    complete: bool  # every stage finished
    stages_done: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # what -> path (for the CLI)


@dataclass
class Nets:
    G: TriaGANGenerator
    D: ProjectedDiscriminator
    G_ema: TriaGANGenerator
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer


class SliceBudget:
    """Images this invocation may still train (``--slice-kimg``); None = unbounded."""

    def __init__(self, slice_kimg: float | None) -> None:
        self.left = None if slice_kimg is None else int(slice_kimg * 1000)

    def spend(self, nimg: int) -> None:
        if self.left is not None:
            self.left -= nimg

    @property
    def exhausted(self) -> bool:
        return self.left is not None and self.left <= 0


def train(opts: TrainOptions) -> RunResult:
    """Run (or resume) every unfinished stage; returns whether the whole run is complete."""
    info = distributed.init(opts.device)
    try:
        sha = manifest_sha256(opts.manifest)
        if info.is_main:
            rundir.prepare(opts, sha, info.world_size)
        distributed.barrier(info)
        result = RunResult(complete=False)
        budget = SliceBudget(opts.slice_kimg)
        prev: Path | None = None
        for index, stage in enumerate(opts.config.stages):
            sdir = rundir.stage_dir(opts, stage)
            if not rundir.stage_done(opts, stage) and (
                budget.exhausted or not train_stage(opts, info, index, prev, budget, sha)
            ):
                result.outputs["resume"] = str(sdir)
                return result
            result.stages_done.append(stage.name)
            result.outputs[f"{stage.name} weights"] = str(sdir / "weights")
            result.outputs[f"{stage.name} loss plot"] = str(sdir / "loss.png")
            result.outputs[f"{stage.name} samples"] = str(sdir / "images" / "samples-final.png")
            prev = sdir / "weights"
        result.complete = True
        return result
    finally:
        distributed.shutdown()


def build_nets(
    opts: TrainOptions, index: int, device: torch.device, prev: Path | None, verbose: bool = True
) -> Nets:
    """G (from the previous stage's EMA weights if any), fresh D, EMA copy, Adam for both."""
    cfg, stage = opts.config, opts.config.stages[index]
    # identical initial weights on every rank
    torch.manual_seed(seeding.derive_seed(opts.seed, index, "init"))
    G = TriaGANGenerator(cfg.generator_config(stage))
    if prev is not None:
        prev_cfg, state, _ = read_weights_dir(prev)
        if prev_cfg.conditioning_mode != G.cfg.conditioning_mode:
            # a stage grown from weights trained on other maps would silently switch the rule
            raise rundir.RunDirError(
                f"{prev} was trained with conditioning_mode {prev_cfg.conditioning_mode!r}, "
                f"stage {stage.name} is configured {G.cfg.conditioning_mode!r}: set "
                f'conditioning_mode = "{prev_cfg.conditioning_mode}" in the config to continue'
            )
        report = load_matching(G, state)
        if verbose:
            print(f"stage {stage.name}: {len(report.loaded)} tensors from {prev}, "
                  f"{len(report.new) + len(report.mismatched)} new")  # fmt: skip
    fw = Path(opts.feature_weights_dir) if opts.feature_weights_dir else None
    D = ProjectedDiscriminator(cfg.discriminator, weights_dir=fw, seed=opts.seed)
    G, D = G.to(device).train(), D.to(device).train()
    G_ema = make_ema(G)

    def adam(params, o):
        return torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)

    return Nets(G, D, G_ema, adam(G.parameters(), cfg.g_optim),
                adam(list(D.trainable_parameters()), cfg.d_optim))  # fmt: skip


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}  # fmt: skip


def _condition(batch: dict[str, Any], gcfg) -> torch.Tensor:
    """The condition at the generator's resolution, by its conditioning mode."""
    return build_condition(batch["img"], batch["mask"], batch["maskrcnn_mask"],
                           batch["keypoints"], gcfg.resolution,
                           mode=gcfg.conditioning_mode)  # fmt: skip


def train_step(
    nets: Nets,
    batches: list[dict[str, Any]],
    *,
    opts: TrainOptions,
    info: distributed.DistInfo,
    sigma: float,
    augment,
    autocast,
) -> dict[str, float]:
    """One optimiser step of D then G over ``batches`` (the accumulation micro-batches)."""
    cfg, G = opts.config, nets.G
    accum = len(batches)
    conds = [_condition(b, G.cfg) for b in batches]
    loss_fn = build_loss(cfg.loss.kind, cfg.loss.masked_hinge_norm)

    def D(img: torch.Tensor) -> list[list[torch.Tensor]]:  # what D sees: blurred, augmented
        return nets.D(blur(img, sigma, cfg.augment.blur_border), augment)

    out: dict[str, float] = {}
    # D phase: real vs generated (G frozen, w_avg tracked as in the reference's D step).
    d_params = list(nets.D.trainable_parameters())
    nets.d_opt.zero_grad(set_to_none=True)
    for b, cond in zip(batches, conds, strict=True):
        with autocast():
            with torch.no_grad():
                fake = G(cond, update_w_avg=True)["img"]
            d = loss_fn.d_loss(D, b["img"], fake, b["mask"])
        (d.total / accum).backward()
        _add(out, "loss/D_real", d.real, accum)
        _add(out, "loss/D_fake", d.fake, accum)
        _add(out, "scores/real", d.real_score, accum)
        _add(out, "scores/fake", d.fake_score, accum)
    distributed.average_gradients(d_params, info)
    nets.d_opt.step()
    # G phase: fool D (D's heads frozen for this phase; gradients flow through D to G).
    for p in d_params:
        p.requires_grad_(False)
    nets.g_opt.zero_grad(set_to_none=True)
    for cond in conds:
        with autocast():
            fake = G(cond)["img"]
            loss = loss_fn.g_loss(D, fake)
        (loss / accum).backward()
        _add(out, "loss/G", loss, accum)
    for p in d_params:
        p.requires_grad_(True)
    distributed.average_gradients(list(G.parameters()), info)
    nets.g_opt.step()
    distributed.average_buffers(G, info)
    distributed.average_buffers(nets.D, info)
    out["loss/D"] = out["loss/D_real"] + out["loss/D_fake"]
    bad = [k for k, v in out.items() if not np.isfinite(v)]
    if bad:
        raise FloatingPointError(f"non-finite training statistics {bad}: {out}")
    return out


def _add(out: dict[str, float], key: str, value: torch.Tensor, accum: int) -> None:
    out[key] = out.get(key, 0.0) + float(value.detach()) / accum


def _state(nets: Nets, progress: dict[str, Any], rng: list, world: int) -> dict[str, Any]:
    return {
        "G": nets.G.state_dict(),
        "D": nets.D.state_dict(),
        "G_ema": nets.G_ema.state_dict(),
        "G_opt": nets.g_opt.state_dict(),
        "D_opt": nets.d_opt.state_dict(),
        "progress": dict(progress),
        "rng": rng,
        "world_size": world,
    }


def _restore(nets: Nets, state: dict[str, Any], info: distributed.DistInfo, path: Path) -> dict:
    if state["world_size"] != info.world_size:
        raise ValueError(f"{path} was written by {state['world_size']} processes; resume it "
                         f"with the same number (this run has {info.world_size})")  # fmt: skip
    nets.G.load_state_dict(state["G"])
    nets.D.load_state_dict(state["D"])
    nets.G_ema.load_state_dict(state["G_ema"])
    nets.g_opt.load_state_dict(state["G_opt"])
    nets.d_opt.load_state_dict(state["D_opt"])
    seeding.set_rng_state(state["rng"][info.rank])
    return dict(state["progress"])


def _overlay_record(path: str | None) -> dict[str, str] | None:
    if path is None:
        return None
    from triagan_model.data.manifest import file_sha256

    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def _grid_batch(
    opts: TrainOptions, manifest: str, resolution: tuple[int, int], device: torch.device
):
    """The first ``grid_size`` samples of the manifest (no flip) and fixed latents."""
    loader = build_loader(manifest, resolution=resolution, batch_size=opts.grid_size,
                          seed=0, shuffle=False, flip=False, infinite=False,
                          overlay=opts.keypoints_overlay,
                          include_error_samples=opts.include_error_samples)  # fmt: skip
    batch = _to_device(next(iter(loader)), device)
    z = torch.randn(len(batch["key"]), opts.config.generator.z_dim,
                    generator=torch.Generator().manual_seed(opts.seed)).to(device)  # fmt: skip
    return batch, z


@torch.no_grad()
def _write_grid(G_ema, grid, path: Path) -> Path:
    batch, z = grid
    fake = G_ema(_condition(batch, G_ema.cfg), z, noise_mode="const")["img"]
    scale = max(1, 144 // G_ema.cfg.resolution[0])
    return save_grid([batch["condition"], fake, batch["img"]], path, scale=scale)


def _snapshot(opts, nets, progress, rng, info, sdir: Path, grid, images: bool) -> None:
    """Training state, EMA weights (rank 0), and optionally a grid and the loss plot."""
    if not info.is_main:
        return
    checkpoint.save(sdir / "checkpoints", progress["nimg"], _state(nets, progress, rng,
                    info.world_size), keep=opts.keep_checkpoints)  # fmt: skip
    _save_weights(opts, nets, progress, sdir)
    if images:
        _write_grid(nets.G_ema, grid, sdir / "images" / f"samples-{progress['nimg']:09d}.png")
        save_loss_plot(stats_mod.read_jsonl(sdir / "stats.jsonl"), sdir / "loss.png",
                       f"{opts.config.name} {sdir.name}")  # fmt: skip


def _save_weights(opts: TrainOptions, nets: Nets, progress: dict[str, Any], sdir: Path) -> None:
    save_generator(nets.G_ema, sdir / "weights", config_name=opts.config.name,
                   stage=sdir.name, source="triagan train", nimg=progress["nimg"],
                   manifest=str(Path(opts.manifest).resolve()), tiny=opts.config.tiny)  # fmt: skip


def _tensorboard(opts: TrainOptions, sdir: Path, info: distributed.DistInfo):
    if not (opts.tensorboard and info.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exn:
        raise RuntimeError("--tensorboard needs the tensorboard package (pip install "
                           "tensorboard)") from exn  # fmt: skip
    return SummaryWriter(str(sdir / "tensorboard"))


def _progress_bar(opts, info, stage, nimg: int, total: int):
    if not (opts.progress and info.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=nimg, unit="img", desc=f"stage {stage.name}",
                dynamic_ncols=True, smoothing=0.1)  # fmt: skip


def train_stage(
    opts: TrainOptions,
    info: distributed.DistInfo,
    index: int,
    prev: Path | None,
    budget: SliceBudget,
    manifest_sha: str,
) -> bool:
    """Train (or resume) stage ``index``; False when the slice budget stopped it early."""
    cfg, stage = opts.config, opts.config.stages[index]
    sdir, device = rundir.stage_dir(opts, stage), info.device
    plan: BatchPlan = plan_batch(stage, opts.batch_gpu, info.world_size)
    nets = build_nets(opts, index, device, prev, verbose=info.is_main)
    progress = {"nimg": 0, "step": 0, "tick": 0, "batches": 0, "train_s": 0.0}
    latest = checkpoint.load_latest(sdir / "checkpoints")
    if latest is not None:
        rundir.check_resume(opts, stage, plan.__dict__)
        progress = _restore(nets, latest[1], info, latest[0])
        print(f"stage {stage.name}: resuming from {latest[0]} ({progress['nimg']} images)")
    else:
        seeding.seed_all(seeding.derive_seed(opts.seed, index, "rank", info.rank))
    if info.is_main:
        sdir.mkdir(parents=True, exist_ok=True)
        stats_mod.truncate_after(sdir / "stats.jsonl", progress["nimg"])
        if latest is not None and rundir.weights_lag(sdir, progress["nimg"]):
            _save_weights(opts, nets, progress, sdir)  # killed between checkpoint and weights
            save_loss_plot(stats_mod.read_jsonl(sdir / "stats.jsonl"), sdir / "loss.png",
                           f"{opts.config.name} {sdir.name}")  # fmt: skip
        rundir.write_stage_files(opts, stage, index, {
            "batch_plan": plan.__dict__, "world_size": info.world_size, "seed": opts.seed,
            "keypoints_overlay": _overlay_record(opts.keypoints_overlay),
            "previous_stage_weights": None if prev is None else str(prev),
            "manifest": {"path": str(Path(opts.manifest).resolve()), "sha256": manifest_sha},
            "stage_manifest": str(Path(rundir.stage_manifest(opts, stage, manifest_sha))
                                  .resolve()),
        })  # fmt: skip
    data_seed = seeding.derive_seed(opts.seed, index, "data") % 2**31
    manifest = rundir.stage_manifest(opts, stage, manifest_sha)
    loader = build_loader(manifest, resolution=stage.resolution, batch_size=plan.batch_gpu,
                          seed=data_seed, rank=info.rank,
                          world_size=info.world_size, num_workers=opts.num_workers,
                          shuffle_buffer=opts.shuffle_buffer, flip=cfg.augment.hflip,
                          skip_batches=progress["batches"], overlay=opts.keypoints_overlay,
                          pin_memory=device.type == "cuda", verify=opts.verify,
                          include_error_samples=opts.include_error_samples)  # fmt: skip
    with seeding.rng_untouched():
        data = iter(loader)
        grid = _grid_batch(opts, manifest, stage.resolution, device) if info.is_main else None
    augment = diff_augment(cfg.augment.diffaug)
    fade_kimg = stage_blur_fade_kimg(cfg.augment.blur_fade_kimg, stage.kimg, cfg.tiny)
    use_amp = cfg.mixed_precision and device.type == "cuda"

    def autocast():
        if not use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)

    total = int(round(stage.kimg * 1000))
    tick_nimg = max(1, int(round(opts.tick_kimg * 1000)))
    writer = _tensorboard(opts, sdir, info)
    bar = _progress_bar(opts, info, stage, progress["nimg"], total)
    collector = stats_mod.Collector()
    tick_start_nimg, tick_start_t = progress["nimg"], time.monotonic()
    finished = progress["nimg"] >= total
    while not finished:
        if budget.exhausted:  # the same on every rank: they count the same images
            break
        batches = [_to_device(next(data), device) for _ in range(plan.accum)]
        sigma = blur_sigma(progress["nimg"], cfg.augment.blur_init_sigma, fade_kimg)
        beta = cfg.ema.beta_at(progress["nimg"], stage.batch)
        t0 = time.monotonic()
        values = train_step(nets, batches, opts=opts, info=info, sigma=sigma, augment=augment,
                            autocast=autocast)  # fmt: skip
        update_ema(nets.G_ema, nets.G, beta)
        progress["train_s"] += time.monotonic() - t0
        progress["nimg"] += stage.batch
        progress["step"] += 1
        progress["batches"] += plan.accum
        budget.spend(stage.batch)
        for k, v in values.items():
            collector.add(k, v)
        if bar is not None:
            bar.update(stage.batch)
        finished = progress["nimg"] >= total
        if not (finished or progress["nimg"] - tick_start_nimg >= tick_nimg or budget.exhausted):
            continue
        # --- end of a tick: statistics, and snapshots every few ticks ---
        progress["tick"] += 1
        now = time.monotonic()
        means = distributed.average_scalars(collector.means(), info)
        collector.reset()
        record = {"stage": stage.name, "nimg": progress["nimg"], "kimg": progress["nimg"] / 1000,
                  "step": progress["step"], "tick": progress["tick"], "blur_sigma": sigma,
                  "ema_beta": beta, "sec_per_kimg": (now - tick_start_t) * 1000 /
                  max(1, progress["nimg"] - tick_start_nimg), **means}  # fmt: skip
        tick_start_nimg, tick_start_t = progress["nimg"], now
        if info.is_main:
            stats_mod.append_jsonl(sdir / "stats.jsonl", record)
            if writer is not None:
                for k, v in means.items():
                    writer.add_scalar(k, v, progress["nimg"])
        last = finished or budget.exhausted
        if last or progress["tick"] % opts.snapshot_ticks == 0:
            images = last or progress["tick"] % opts.image_ticks == 0
            rng = seeding.gather_rng(info)  # a collective: every rank takes this branch together
            _snapshot(opts, nets, progress, rng, info, sdir, grid, images)
        elif progress["tick"] % opts.image_ticks == 0 and info.is_main:
            _write_grid(nets.G_ema, grid, sdir / "images" / f"samples-{progress['nimg']:09d}.png")
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    if not finished:
        distributed.barrier(info)
        return False
    if info.is_main:  # the last tick wrote the checkpoint, weights, a grid and the loss plot
        final = _write_grid(nets.G_ema, grid, sdir / "images" / "samples-final.png")
        rundir.mark_done(opts, stage, {"stage": stage.name, "nimg": progress["nimg"],
                                       "steps": progress["step"], "weights": "weights",
                                       "samples": str(final.relative_to(sdir))})  # fmt: skip
    distributed.barrier(info)
    return True
