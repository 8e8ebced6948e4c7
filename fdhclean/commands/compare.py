"""`fdhclean compare`: agreement with the authors' published refined keypoints (spec 8)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare a run's choices with the authors' fdh_keypoints_SPLIT.json",
        description="For every sample of OUT/SPLIT: whether the authors' keypoints are closer "
        "to our original or our estimate (mean pixel distance over the keypoints they mark "
        "visible), whether that agrees with our choice, and the mean pixel distance between "
        "their keypoints and ours over keypoints visible in both. Writes "
        "OUT/SPLIT/compare.parquet and OUT/SPLIT/compare_summary.json.",
    )
    p.add_argument("out", type=Path, help="the refine output root (OUT)")
    p.add_argument("--split", required=True)
    p.add_argument(
        "--with",
        required=True,
        type=Path,
        dest="authors",
        help="the authors' fdh_keypoints_SPLIT.json ({key: [[x, y, v] x 17]})",
    )
    p.add_argument(
        "--tie-px",
        type=float,
        default=0.5,
        help="distances within this many pixels count as 'both' (default 0.5)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fdhclean.inspect.common import split_dir
    from fdhclean.inspect.compare import compare_split, write_comparison

    console = Console()
    try:
        split = split_dir(args.out, args.split)
        frame, summary = compare_split(split, args.authors, args.tie_px)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]fdhclean compare: {exc}[/red]")
        return 2
    table = Table(title=f"split {args.split} vs {args.authors.name}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in summary.items():
        if name in ("split", "authors_file"):
            continue
        if isinstance(value, float):
            value = f"{value:.2f}"
        table.add_row(name.replace("_", " "), str(value))
    console.print(table)
    for path in write_comparison(split, frame, summary):
        console.print(f"wrote {path}")
    return 0
