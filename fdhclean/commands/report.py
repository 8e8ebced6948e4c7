"""`fdhclean report`: summary tables, summary.json and plots of a cleaning run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="summarise a refine run's report (tables, summary.json, plots)",
        description="Read OUT/SPLIT/report (only the needed columns) and print samples, updated, "
        "ties, errors by code, box sources, keypoint units and, per keypoint, how often the "
        "original and the estimate were considered and correct, with the mean displacement "
        "between them over updated samples. Writes OUT/SPLIT/summary.json and PNG plots in "
        "OUT/SPLIT/plots/.",
    )
    p.add_argument("out", type=Path, help="the refine output root (OUT)")
    p.add_argument("--split", required=True)
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from fdhclean.inspect.common import split_dir
    from fdhclean.inspect.summary import SUMMARY_FILE, print_summary, summarise_split
    from fdhclean.shards import atomic_write_bytes

    console = Console()
    try:
        split = split_dir(args.out, args.split)
        summary = summarise_split(split)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: reports of another run
        console.print(f"[red]fdhclean report: {exc}[/red]")
        return 2
    print_summary(summary.data, console)
    path = split / SUMMARY_FILE
    atomic_write_bytes(path, (json.dumps(summary.data, indent=1) + "\n").encode())
    console.print(f"wrote {path}")
    if not args.no_plots:
        from fdhclean.inspect.plots import write_plots

        for plot in write_plots(summary, split / "plots"):
            console.print(f"wrote {plot}")
    return 0
