"""`fdhclean parts build|show`: make and inspect the CSE vertex -> body part table.

The table (refine-spec section 1) is built once from DensePose's `smpl_27554` mesh pickle
(loaded with the restricted unpickler) and Meshcapade's SMPL segmentation; its sha256 goes into
every refine report and manifest.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fdhclean.parts import PartTable


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "parts",
        help="build or inspect the CSE vertex -> body part table",
        description="Build or inspect the CSE vertex -> SMPL body part table (.npz).",
    )
    sub = parser.add_subparsers(dest="parts_command", metavar="ACTION", required=True)
    build = sub.add_parser(
        "build",
        help="build a part table from a segmentation and the CSE mesh",
        description=(
            "Build the part table of DensePose's midpoint-subdivided smpl_27554 mesh from a "
            "per-vertex segmentation of SMPL (e.g. Meshcapade's smpl_vert_segmentation.json)."
        ),
    )
    build.add_argument("--segmentation", required=True, help="segmentation JSON (part -> ids)")
    build.add_argument("--cse-mesh", required=True, help="DensePose mesh pickle (smpl_27554.pkl)")
    build.add_argument("--out", required=True, help="output .npz")
    show = sub.add_parser(
        "show",
        help="print a part table's names, counts and hash",
        description="Print a part table's part names, vertex counts per part and sha256.",
    )
    show.add_argument("table", help="part table .npz")
    parser.set_defaults(func=run)


def _print_summary(table: PartTable) -> None:
    import numpy as np

    counts = np.bincount(table.parts_per_vertex(), minlength=4)
    print(f"vertices: {table.num_vertices}")
    print(
        "vertices by number of parts: " + ", ".join(f"{k}: {int(c)}" for k, c in enumerate(counts))
    )
    print(f"sha256: {table.sha256}")


def _run_build(args: argparse.Namespace) -> int:
    from fdhclean.parts import build_part_table, load_cse_mesh, load_segmentation

    segmentation = load_segmentation(args.segmentation)
    vertices, faces = load_cse_mesh(args.cse_mesh)
    try:
        table = build_part_table(segmentation, faces, num_vertices=vertices.shape[0])
    except ValueError as exc:  # the two inputs do not fit together: name both
        raise ValueError(f"{args.segmentation} with {args.cse_mesh}: {exc}") from None
    n_orig = max(int(ids.max()) for ids in segmentation.values() if ids.size) + 1
    table.save(args.out)
    print(f"mesh: {vertices.shape[0]} vertices, {faces.shape[0]} faces")
    print(f"original vertices: {n_orig}, midpoints: {table.num_vertices - n_orig}")
    _print_summary(table)
    print(f"wrote {args.out}")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from fdhclean.parts import PartTable

    table = PartTable.load(args.table)
    width = max(len(name) for name in table.part_names)
    for bit, (name, count) in enumerate(zip(table.part_names, table.count_per_part(), strict=True)):
        print(f"{bit:2d}  {name:<{width}}  {int(count)}")
    _print_summary(table)
    return 0


def run(args: argparse.Namespace) -> int:
    from fdhclean.safe_pickle import UnsafePickleError

    try:
        if args.parts_command == "build":
            return _run_build(args)
        return _run_show(args)
    except (OSError, ValueError, UnsafePickleError) as exc:  # messages name the file
        print(f"fdhclean parts {args.parts_command}: error: {exc}", file=sys.stderr)
        return 2  # a user error: the input files, not the program
