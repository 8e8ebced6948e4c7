"""The run directory: what a run records about itself, and the per-stage layout.

    RUN/run.json              config name, manifest path + sha256, options, package version
    RUN/config.toml           the resolved TrainConfig (reads back with `--config RUN/config.toml`)
    RUN/<stage>/config.toml   the same, per stage, with stage.json describing the stage
    RUN/<stage>/stats.jsonl   one line per tick
    RUN/<stage>/checkpoints/state-<nimg>.safetensors   resumable training state (latest 2)
    RUN/<stage>/weights/      EMA generator: generator.safetensors + generator.json
    RUN/<stage>/images/       sample grids (condition | generated | real) per snapshot
    RUN/<stage>/loss.png      loss curves
    RUN/<stage>/stage-complete.json   written last: the stage is finished
A rerun with the same run directory must use the same config and the same manifest bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from triagan_model import __version__
from triagan_model.atomic import atomic_write_text
from triagan_model.configs import CONFIGS, StageConfig, TrainConfig
from triagan_model.provenance import git_commit, utc_now
from triagan_model.toml_io import dumps_config
from triagan_model.training.options import TrainOptions, write_json

RUN_FILE = "run.json"
DONE_FILE = "stage-complete.json"


class RunDirError(ValueError):
    """The run directory belongs to another config or manifest."""


def resolved_toml(cfg: TrainConfig) -> str:
    """Every field of ``cfg`` as TOML; ``base`` only has to be registered (all fields override
    it), so a config with its own name reads back from the file alone."""
    base = cfg.name if cfg.name in CONFIGS else ("A-tiny" if cfg.tiny else "A")
    return dumps_config(cfg, base=base)


def stage_dir(opts: TrainOptions, stage: StageConfig) -> Path:
    return Path(opts.run_dir) / stage.name


def stage_done(opts: TrainOptions, stage: StageConfig) -> bool:
    return (stage_dir(opts, stage) / DONE_FILE).is_file()


def prepare(opts: TrainOptions, manifest_sha: str, world_size: int) -> dict[str, Any]:
    """Create or check RUN/run.json and RUN/config.toml (rank 0 only)."""
    run = Path(opts.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    toml = resolved_toml(opts.config)
    existing = run / RUN_FILE
    if existing.is_file():
        doc = json.loads(existing.read_text())
        if doc["manifest"]["sha256"] != manifest_sha:
            raise RunDirError(
                f"{existing}: this run trained on manifest {doc['manifest']['path']} (sha256 "
                f"{doc['manifest']['sha256'][:12]}...), not {opts.manifest} (sha256 "
                f"{manifest_sha[:12]}...); use another --run-dir"
            )
        old_toml = (run / "config.toml").read_text() if (run / "config.toml").is_file() else ""
        if old_toml.split("\n", 1)[-1] != toml.split("\n", 1)[-1]:
            raise RunDirError(f"{run}: the run was started with another config (see "
                              f"{run / 'config.toml'}); use another --run-dir")  # fmt: skip
        return doc
    doc = {
        "format": "triagan-run",
        "version": 1,
        "created": utc_now(),
        "config": opts.config.name,
        "tiny": opts.config.tiny,
        "manifest": {"path": str(Path(opts.manifest).resolve()), "sha256": manifest_sha},
        "options": opts.to_json(),
        "world_size": world_size,
        "package_version": __version__,
        "git_commit": git_commit(),
    }
    atomic_write_text(run / "config.toml", toml)
    write_json(existing, doc)
    return doc


def write_stage_files(opts: TrainOptions, stage: StageConfig, index: int, extra: dict) -> None:
    d = stage_dir(opts, stage)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "config.toml", resolved_toml(opts.config))
    # include_error_samples changes which samples the stream holds: check_resume compares it
    write_json(d / "stage.json", {"stage": stage.name, "index": index, "batch": stage.batch,
                                  "kimg": stage.kimg,
                                  "include_error_samples": opts.include_error_samples,
                                  **extra})  # fmt: skip


def check_resume(opts: TrainOptions, stage: StageConfig, batch_plan: dict[str, Any]) -> None:
    """A resumed stage must read the data stream it started: the loader skips the batches
    already seen, which is only right with the same per-GPU batch, seed and set of samples
    (``--include-error-samples``). ``--verify`` only checks the shards, so it may change."""
    path = stage_dir(opts, stage) / "stage.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    was = (before.get("batch_plan", {}).get("batch_gpu"), before.get("seed"))
    now = (batch_plan["batch_gpu"], opts.seed)
    if was != now:
        raise RunDirError(
            f"stage {stage.name} of {opts.run_dir} started with --batch-gpu {was[0]} and --seed "
            f"{was[1]}, not {now[0]} and {now[1]}: resuming would read another data stream"
        )
    had = before.get("include_error_samples")  # absent: a stage.json older than this check
    if had is not None and bool(had) != bool(opts.include_error_samples):
        flag = "with" if had else "without"
        raise RunDirError(
            f"stage {stage.name} of {opts.run_dir} started {flag} --include-error-samples "
            f"(see {path}): resuming {'without' if had else 'with'} it would read another data "
            f"stream; rerun {flag} it, or use another --run-dir"
        )


def mark_done(opts: TrainOptions, stage: StageConfig, doc: dict[str, Any]) -> None:
    write_json(stage_dir(opts, stage) / DONE_FILE, doc)


def weights_lag(sdir: Path, nimg: int) -> bool:
    """Whether the stage's EMA weights are not those of its resumed checkpoint (``nimg``).

    A run killed between a checkpoint and its weights leaves older weights (or none); a stage
    whose last checkpoint is its final one would then be marked complete with them, and the
    next stage would start from them. The caller rewrites them from the resumed EMA generator.
    """
    doc = sdir / "weights" / "generator.json"
    try:
        have = json.loads(doc.read_text()).get("nimg")
    except (OSError, ValueError, AttributeError):
        have = None  # missing or unreadable: rewritten too
    if have == nimg:
        return False
    print(f"stage {sdir.name}: weights are at {have} images, the checkpoint at {nimg}: "
          f"rewriting {sdir / 'weights'} from the checkpoint")  # fmt: skip
    return True


def stage_manifest(opts: TrainOptions, stage: StageConfig, manifest_sha: str) -> str:
    """The manifest a stage reads: the pre-resized one `triagan prepare` wrote for the stage's
    resolution (`--prepared DIR`: DIR/<H>x<W>/<split>.json) when there is one, else the
    training manifest (resized on the fly). A prepared manifest must name the training
    manifest's bytes as its parent, so a stale preparation is refused, not silently used."""
    if opts.prepared is None:
        return opts.manifest
    from triagan_model.data.manifest import read_manifest

    split = read_manifest(opts.manifest).split or "data"
    candidate = Path(opts.prepared) / stage.name / f"{split}.json"
    if not candidate.is_file():
        return opts.manifest
    prepared = read_manifest(candidate)
    parent = (prepared.provenance.get("parent") or {}).get("sha256")
    if parent != manifest_sha:
        raise RunDirError(
            f"{candidate} was prepared from another manifest (parent sha256 {str(parent)[:12]}"
            f"...), not {opts.manifest}; rerun `triagan prepare` or drop --prepared"
        )
    if prepared.resolution != tuple(stage.resolution):
        raise RunDirError(f"{candidate} holds {prepared.resolution}, not stage {stage.name}")
    return str(candidate)
