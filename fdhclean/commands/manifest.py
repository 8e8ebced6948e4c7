"""`fdhclean manifest` and `fdhclean verify`: describe raw FDH shards, check a manifest.

`manifest` writes the manifest of an existing split (raw FDH: `provenance.parent` is null), so
that training and `fdhclean refine` can take a manifest instead of a glob (docs/manifest.md).
`verify` re-checks every shard a manifest lists (exists, size, sha256, optionally samples).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    build = subparsers.add_parser(
        "manifest",
        help="write the manifest of an existing (raw) split of FDH shards",
        description=(
            "Describe ROOT/SPLIT/out-NNNNNN.tar in a manifest (samples, bytes, sha256, keypoint "
            "units per shard; provenance.parent = null). Shard paths are relative to the "
            "manifest's directory when the shards lie under it, else to --root (default: the "
            "absolute data root)."
        ),
    )
    build.add_argument("--data-root", required=True, help="dataset root holding SPLIT/")
    build.add_argument("--split", required=True, help="split name, e.g. train or val")
    build.add_argument("--out", required=True, help="manifest JSON to write")
    build.add_argument(
        "--root",
        default=None,
        help="record this root (e.g. '$FDH_ROOT') with paths relative to --data-root",
    )
    build.add_argument("--workers", type=int, default=1, help="shards described in parallel")
    build.set_defaults(func=run_manifest)

    verify = subparsers.add_parser(
        "verify",
        help="check that every shard of a manifest exists with its size and sha256",
        description="Check each shard a manifest lists; print the problems; exit 1 if any.",
    )
    verify.add_argument("manifest", help="manifest JSON")
    verify.add_argument("--no-hash", action="store_true", help="check sizes only (fast)")
    verify.add_argument(
        "--samples", action="store_true", help="also count samples (reads the tar headers)"
    )
    verify.set_defaults(func=run_verify)


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def _layout(data_root: Path, split: str, out: Path, root: str | None) -> tuple[Path, str | None]:
    """(directory the shard paths are relative to, the manifest's `root` field)."""
    if root is not None:
        return data_root.resolve(), root
    split_dir = (data_root / split).resolve()
    if split_dir.is_relative_to(out.resolve().parent):
        return out.resolve().parent, None
    return data_root.resolve(), str(data_root.resolve())


def run_manifest(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from fdhclean.manifest import base_provenance, build_manifest, listing_hash, shard_entry
    from fdhclean.shards import ShardReadError, list_shards

    data_root, out = Path(args.data_root), Path(args.out)
    try:
        shards = list_shards(data_root, args.split)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    base, root = _layout(data_root, args.split, out, args.root)
    entries, failures = {}, []

    def describe(path: Path) -> None:
        try:
            entries[path] = shard_entry(path, base=base)
        except ShardReadError as exc:  # one bad shard fails alone; the others are still checked
            failures.append(str(exc))

    with _progress() as progress, ThreadPoolExecutor(max(1, args.workers)) as pool:
        task = progress.add_task(f"{args.split} shards", total=len(shards))
        for _ in pool.map(describe, shards):
            progress.advance(task)
    for message in sorted(failures):
        print(f"error: {message}", file=sys.stderr)
    if failures:
        print(f"no manifest written: {len(failures)} of {len(shards)} shards unreadable")
        return 1
    ordered = [entries[path] for path in shards]
    provenance = base_provenance("fdhclean manifest")
    provenance.update(data_root=str(data_root.resolve()), listing_hash=listing_hash(ordered))
    manifest = build_manifest(
        ordered, split=args.split, base_dir=base, provenance=provenance, root=root
    )
    manifest.write(out)
    units = sorted({e.keypoint_units for e in ordered})
    print(
        f"wrote {out}: {len(ordered)} shards, {manifest.totals['samples']} samples, "
        f"{manifest.totals['bytes']} bytes, keypoint units {', '.join(units)}"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from fdhclean.manifest import Manifest, ManifestError

    try:
        manifest = Manifest.read(args.manifest)
        manifest.base_dir(args.manifest)  # an unset $FDH_ROOT is one clear error, not N
    except (OSError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with _progress() as progress:
        task = progress.add_task("verify", total=len(manifest.shards))
        problems = manifest.verify(
            args.manifest,
            check_hash=not args.no_hash,
            check_samples=args.samples,
            progress=lambda _entry: progress.advance(task),
        )
    for problem in problems:
        print(problem)
    checked = "size" + ("" if args.no_hash else ", sha256") + (", samples" if args.samples else "")
    if problems:
        print(f"{len(problems)} problem(s) in {args.manifest}")
        return 1
    print(f"OK: {len(manifest.shards)} shards ({checked}) match {args.manifest}")
    return 0
