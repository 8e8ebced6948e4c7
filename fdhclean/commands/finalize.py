"""`fdhclean finalize` and `fdhclean register`: the manifest after an array job, and its entry
in the repository's `data_manifests/`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finalize",
        help="write OUT/SPLIT/manifest.json once every shard is complete",
        description="Write the manifest, merged summary and dataset card of a refine run whose "
        "shards were cleaned by several ranks (e.g. a SLURM array). Exits 1 and names the "
        "first missing shard when some shard is not complete yet.",
    )
    p.add_argument("out", type=Path, help="the refine output root (OUT)")
    p.add_argument("--split", required=True)
    p.set_defaults(func=run_finalize)

    r = subparsers.add_parser(
        "register",
        help="copy a manifest to data_manifests/NAME/SPLIT.json (paths relative to $FDH_ROOT)",
        description="Register a cleaned split in the repository: its manifest is copied to "
        'REPO/data_manifests/NAME/SPLIT.json with `root` = "$FDH_ROOT" and every shard path '
        "relative to the data root, so training can find the shards on any machine that sets "
        "FDH_ROOT.",
    )
    r.add_argument("out", type=Path, help="the refine output root (OUT)")
    r.add_argument("--split", required=True)
    r.add_argument("--name", required=True, help="dataset version name, e.g. fdh-clean-v1")
    r.add_argument(
        "--data-root", type=Path, help="data root the paths are relative to (default $FDH_ROOT)"
    )
    r.add_argument(
        "--manifests-dir",
        type=Path,
        default=Path("data_manifests"),
        help="where registered manifests live (default ./data_manifests)",
    )
    r.set_defaults(func=run_register)


def run_finalize(args: argparse.Namespace) -> int:
    from fdhclean.refine.finalize import IncompleteSplitError, finalize_split
    from fdhclean.refine.runner import summary_lines

    try:
        manifest = finalize_split(args.out / args.split)
    except (IncompleteSplitError, FileNotFoundError, ValueError) as exc:
        print(f"fdhclean finalize: {exc}")
        return 1
    print(f"manifest: {args.out / args.split / 'manifest.json'} ({len(manifest.shards)} shards)")
    for line in summary_lines(manifest.totals):
        print(line)
    return 0


def run_register(args: argparse.Namespace) -> int:
    import os

    from fdhclean.refine.register import register_manifest

    data_root = args.data_root or (
        Path(os.environ["FDH_ROOT"]) if "FDH_ROOT" in os.environ else None
    )
    if data_root is None:
        print("fdhclean register: give --data-root or set FDH_ROOT")
        return 2
    try:
        target = register_manifest(
            args.out / args.split / "manifest.json",
            data_root,
            args.manifests_dir / args.name / f"{args.split}.json",
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"fdhclean register: {exc}")
        return 1
    print(f"registered {target}")
    return 0
