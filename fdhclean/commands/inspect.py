"""`fdhclean inspect`: a contact sheet of chosen samples of a refine run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="contact sheet of a run's samples (image, body-part map, both skeletons)",
        description="Render the samples of OUT/SPLIT that match --where (a pandas query over "
        'the report\'s scalar columns, e.g. "updated and new_frac - orig_frac > 0.3", '
        '"tie", "status != \'ok\'") and/or --keys into one PNG: per sample the image and the '
        "body-part map (E_mask coloured by the part of each pixel's CSE vertex, with the part "
        "table named in OUT/SPLIT/run.json), the original skeleton in red and the estimate in "
        "blue (the chosen one thicker, starred in the caption). Images are read from the "
        "cleaned shards that hold the samples.",
    )
    p.add_argument("out", type=Path, help="the refine output root (OUT)")
    p.add_argument("--split", required=True)
    p.add_argument("--where", help="pandas query over the report columns")
    p.add_argument("--keys", help="comma-separated sample keys")
    p.add_argument("--limit", type=int, default=16, help="at most this many tiles (default 16)")
    p.add_argument("--columns", type=int, default=4, help="tiles per row (default 4)")
    p.add_argument("--scale", type=int, default=1, help="screen pixels per image pixel")
    p.add_argument("--part-table", type=Path, help="replacement for a moved part table")
    p.add_argument("--out", required=True, type=Path, dest="target", help="PNG to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import io

    from fdhclean.inspect.common import split_dir
    from fdhclean.inspect.sheet import build_sheet
    from fdhclean.shards import atomic_write_bytes

    keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
    try:
        sheet = build_sheet(
            split_dir(args.out, args.split),
            where=args.where,
            keys=keys,
            limit=args.limit,
            scale=args.scale,
            columns=args.columns,
            part_table=args.part_table,
        )
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"fdhclean inspect: {exc.args[0] if isinstance(exc, KeyError) else exc}")
        return 2
    buffer = io.BytesIO()
    sheet.image.save(buffer, format="PNG", optimize=True)
    args.target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.target, buffer.getvalue())
    print(
        f"wrote {args.target}: {len(sheet.tiles)} samples, {sheet.image.size[0]}x"
        f"{sheet.image.size[1]} px"
    )
    return 0
