"""`fdhclean export`: a run's chosen keypoints as the reference overlay JSON or COCO file."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a run's chosen keypoints as dp2-json ({key: [[x, y, v] x 17]}) or COCO",
        description="Export the keypoints a refine run wrote (the estimate with v = score above "
        "--new-min-score for updated samples, else the original), rebuilt from OUT/SPLIT/report "
        "and run.json without opening a shard. dp2-json: the reference implementation's "
        "fdh_keypoints_SPLIT.json overlay, normalised. coco: a COCO keypoints annotation file "
        "(pixels, v 2 = visible, bbox from the person box). Samples with an error status are "
        "exported with their original keypoints; non-finite keypoints as not visible.",
    )
    p.add_argument("out", type=Path, help="the refine output root (OUT)")
    p.add_argument("--split", required=True)
    p.add_argument("--format", required=True, choices=("dp2-json", "coco"), dest="fmt")
    p.add_argument("--out", required=True, type=Path, dest="target", help="file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fdhclean.inspect.common import split_dir
    from fdhclean.inspect.export import export

    try:
        counts = export(split_dir(args.out, args.split), args.fmt, args.target)
    except (FileNotFoundError, ValueError) as exc:
        print(f"fdhclean export: {exc}")
        return 2
    except OSError as exc:  # a file where the target's directory goes, read-only, disk full
        print(f"fdhclean export: cannot write {args.target}: {exc}; choose a writable --out")
        return 2
    except KeyboardInterrupt:  # writes are atomic: no partial file is left
        print("fdhclean export: interrupted; nothing was written")
        return 130
    print(f"wrote {args.target}: {counts.written} samples ({args.fmt})")
    if counts.left_out:
        print(f"left out {counts.left_out} samples whose keypoints could not be read")
    return 0
