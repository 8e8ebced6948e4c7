"""`triagan prepare`: pre-resized shard copies (and manifests) for the low-resolution stages."""

from __future__ import annotations

import argparse
import sys
import time


def _heights(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"--resolutions takes comma-separated heights like 18,36: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values:
        raise argparse.ArgumentTypeError("--resolutions is empty")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="write pre-resized shards for the low-resolution stages",
        description=(
            "Read every shard of MANIFEST once and write, per stage height H (width H*160/288), "
            "DIR/<H>x<W>/out-%%06d.tar with image, masks, condition (unknown region 127) and "
            "unchanged keypoints, plus a manifest DIR/<H>x<W>/<split>.json naming the parent. "
            "Completed shards are skipped on a rerun unless --overwrite."
        ),
    )
    parser.add_argument("--manifest", required=True, help="input manifest (docs/manifest.md)")
    parser.add_argument("--resolutions", type=_heights, default=[18, 36, 72, 144],
                        help="comma-separated stage heights (default 18,36,72,144)")  # fmt: skip
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing shards")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from triagan_model.data.manifest import ManifestError
    from triagan_model.data.prepare import prepare

    def progress(stream, total):
        return tqdm(stream, total=total, unit="shard", desc="prepare", file=sys.stderr)

    start = time.monotonic()
    try:
        summary = prepare(args.manifest, args.resolutions, args.out, workers=args.workers,
                          overwrite=args.overwrite, progress=progress)  # fmt: skip
    except (ManifestError, ValueError, FileNotFoundError) as exn:
        print(f"triagan prepare: error: {exn}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - start
    print(f"prepared {summary.shards} shards ({summary.skipped_shards} already complete), "
          f"{summary.samples} samples in {elapsed:.1f} s")  # fmt: skip
    for (h, w), path in summary.manifests.items():
        print(f"  {h}x{w}: {path}")
    return 0
