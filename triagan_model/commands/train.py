"""`triagan train`: a thin CLI that builds the typed options and calls the training loop."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Train TriA-GAN on the shards a manifest lists: every stage of one config (e.g. Config E:
18x10 -> 36x20 -> 72x40 -> 144x80 -> 288x160), each stage starting from the previous stage's
EMA generator with a fresh discriminator. Rerunning the same command resumes from the newest
checkpoint (training state and inference weights are separate files); --slice-kimg bounds one
invocation to a job's wall time. Multi-GPU/multi-node: launch under torchrun (one process per
GPU; only rank 0 writes). Exit status 0 when the run (or the slice) finished, 1 on any failure,
2 on bad arguments or bad data (a shard that differs from its manifest, a sample that does not
decode: the message names the shard and the sample).

Data checks: every shard's size at the start; with --verify sha256 (the default) also each
shard's sha256 before its first sample is used. Samples the manifest lists as refine errors
(totals.error_samples: bad-member, bad-keypoints, no-estimate) are skipped and counted unless
--include-error-samples.

outputs per stage in RUN_DIR/<stage>/: config.toml, stage.json, stats.jsonl, checkpoints/,
weights/ (EMA generator: generator.safetensors + generator.json), images/ (condition |
generated | real), loss.png, stage-complete.json; RUN_DIR/run.json records the manifest path
and sha256.

examples:
  triagan train --config pipelines/triagan_E.toml --manifest data_manifests/fdh/train.json \\
      --run-dir runs/E --batch-gpu 32
  torchrun --nproc-per-node 8 -m triagan_model.cli train --config E --manifest M --run-dir R
  triagan train --config E-tiny --manifest M --run-dir /tmp/run --device cpu
"""


def _error_samples_line(manifest, include: bool, prepared: str | None) -> str:
    """What training does with the samples refine flagged; ValueError where --include-error-
    samples cannot do what it says."""
    from triagan_model.data.manifest import error_sample_counts

    counts = error_sample_counts(manifest)
    total = sum(counts.values())
    if include and prepared:  # `triagan prepare` always leaves them out of its shards
        raise ValueError("--include-error-samples cannot be combined with --prepared: the "
                         "prepared shards never hold the manifest's error samples")  # fmt: skip
    if not total:
        return "error samples: the manifest lists none"
    what = ", ".join(f"{k} {v}" for k, v in counts.items())
    if include:
        return f"error samples: training on the {total} the manifest lists ({what})"
    return (f"error samples: skipping the {total} the manifest lists ({what}); "
            "--include-error-samples trains on them")  # fmt: skip


def _last_line(exn: BaseException) -> str:
    """The original message: an error raised in a DataLoader worker arrives with the worker's
    traceback as its text, whose last line is `module.Class: message`."""
    text = str(exn).strip()
    if "Traceback (most recent call last)" not in text:
        return text
    last = text.splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train (or resume) every stage of a config",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", required=True, help="registered name (A..E, E-tiny) or TOML file")
    p.add_argument("--manifest", required=True, help="training manifest (docs/manifest.md)")
    p.add_argument("--run-dir", required=True, help="output directory (rerun to resume)")
    p.add_argument("--keypoints-overlay", default=None,
                   help="refined-keypoint JSON {key: [[x, y, v] x 17]} (normalised), e.g. the "
                   "authors' fdh_keypoints_train.json or `fdhclean export --format dp2-json`: "
                   "replaces the shards' keypoints for the keys it holds")  # fmt: skip
    p.add_argument("--prepared", default=None,
                   help="`triagan prepare` output directory: stages whose resolution it holds "
                   "read its pre-resized shards instead of decoding 288x160 PNGs")  # fmt: skip
    p.add_argument("--verify", choices=("size", "sha256"), default="sha256",
                   help="shard checks: sizes at the start (size), and each shard's sha256 before "
                   "its first use (sha256, default; one extra read per shard and loader "
                   "process in the first epoch)")  # fmt: skip
    p.add_argument("--include-error-samples", action="store_true",
                   help="train also on the samples the manifest lists as errors")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-gpu", type=int, default=None,
                   help="images per forward pass per GPU (gradient accumulation makes up the "
                   "configured batch); default: the whole per-GPU share")  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="data loader workers per process")
    p.add_argument("--tick-kimg", type=float, default=4.0, help="kimg per statistics tick")
    p.add_argument("--snapshot-ticks", type=int, default=50,
                   help="checkpoint + EMA weights every N ticks (and at the end)")  # fmt: skip
    p.add_argument("--image-ticks", type=int, default=50, help="sample grid every N ticks")
    p.add_argument("--slice-kimg", type=float, default=None,
                   help="stop (resumably) after this many kimg in this invocation")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--feature-weights",
        default=None,
        help="directory of D's feature-network weights (default $TRIAGAN_WEIGHTS)",
    )
    p.add_argument("--grid-size", type=int, default=8, help="samples per grid")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN/<stage>/tensorboard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.set_defaults(func=run)


def build_options(args: argparse.Namespace):
    from triagan_model.configs import load_config
    from triagan_model.training.options import TrainOptions

    return TrainOptions(
        config=load_config(args.config), manifest=args.manifest, run_dir=args.run_dir,
        seed=args.seed, batch_gpu=args.batch_gpu, num_workers=args.workers,
        tick_kimg=args.tick_kimg, snapshot_ticks=args.snapshot_ticks,
        image_ticks=args.image_ticks, slice_kimg=args.slice_kimg, device=args.device,
        tensorboard=args.tensorboard, grid_size=args.grid_size,
        feature_weights_dir=args.feature_weights, progress=not args.no_progress,
        prepared=args.prepared, keypoints_overlay=args.keypoints_overlay,
        verify=args.verify, include_error_samples=args.include_error_samples,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import os

    try:
        opts = build_options(args)
        if args.snapshot_ticks < 1 or args.image_ticks < 1 or args.tick_kimg <= 0:
            raise ValueError("--snapshot-ticks/--image-ticks must be >= 1, --tick-kimg > 0")
        from triagan_model.data.manifest import read_manifest
        from triagan_model.training.options import describe_plan

        manifest = read_manifest(opts.manifest)
        plan = describe_plan(opts, int(os.environ.get("WORLD_SIZE", "1")))
        plan += "\n" + _error_samples_line(manifest, opts.include_error_samples, opts.prepared)
    except (KeyError, FileNotFoundError, ValueError) as exn:
        print(f"triagan train: error: {exn}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan)
        return 0
    if int(os.environ.get("RANK", "0")) == 0:
        print(plan.rsplit("\n", 1)[-1])
    from triagan_model.data.loader import ShardError
    from triagan_model.data.manifest import ManifestError
    from triagan_model.data.transforms import SampleError
    from triagan_model.training.loop import train
    from triagan_model.training.rundir import RunDirError
    from triagan_model.weights import WeightsError

    # RunDirError: the --run-dir belongs to other options (manifest, config, resume stream)
    data_errors = (ManifestError, ShardError, SampleError, WeightsError, RunDirError)
    try:
        result = train(opts)
    except data_errors as exn:  # the user's data: a message naming shard / sample, exit 2
        print(f"triagan train: error: {_last_line(exn)}", file=sys.stderr)
        return 2
    except Exception as exn:  # report and exit non-zero (the reference exited 0 on failure)
        import traceback

        traceback.print_exc()
        print(f"triagan train: failed: {type(exn).__name__}: {exn}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        for what, path in result.outputs.items():
            print(f"{what}: {path}")
        state = "complete" if result.complete else "stopped early (rerun the command to resume)"
        print(f"run {opts.run_dir}: {state}; stages done: {result.stages_done}")
    return 0
