"""`fdhclean revote`: a new version of a cleaned split from its report, without the estimator."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "revote",
        help="decide again from a run's report with other thresholds, tie policy or rules",
        description="Vote again on OUT/SPLIT from its report's stored keypoints (orig_keypoints, "
        "new_keypoints) and its cleaned shards' E_mask and vertex maps, without the estimator, "
        "and write a new version (shards, report, manifest with OUT/SPLIT/manifest.json as "
        "parent, run.json) under OUT2/SPLIT. Unset settings are the parent run's. A sample "
        "that is no longer updated gets its original keypoints.npy back (in the shard's units "
        "and dtype); samples with an error status stay as they are. Rerunning resumes. "
        "--report-only decides again from the report alone (no shard read or written) and "
        "writes OUT2/SPLIT/fdh_keypoints_SPLIT.json, a keypoint overlay for `triagan train "
        "--keypoints-overlay`, with OUT2/SPLIT/overlay_manifest.json (settings, counts, "
        "sha256, parent manifest); it replays a tie policy and thresholds at or above the "
        "run's, and refuses --rules or lower thresholds, which need the body-part maps.",
    )
    p.add_argument("out", type=Path, help="the refine output root being revoted (OUT)")
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True, type=Path, dest="target", help="new root (OUT2)")
    p.add_argument("--tie-policy", choices=("new", "original"))
    p.add_argument("--new-min-score", type=float)
    p.add_argument("--orig-min-score", type=float)
    p.add_argument("--rules", type=Path, help="TOML keypoint -> accepted parts table")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default 0)")
    p.add_argument(
        "--report-only", action="store_true",
        help="write a keypoint overlay + manifest from the report; no shard is rewritten",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="redo OUT2 made with other settings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.report_only:
        return run_report_only(args)
    from fdhclean.inspect.common import split_dir
    from fdhclean.inspect.revote import revote_settings
    from fdhclean.refine.runner import ConfigurationMismatchError, run_refine, summary_lines
    from fdhclean.refine.signals import RefineInterrupted

    try:
        settings = revote_settings(
            split_dir(args.out, args.split),
            args.target,
            tie_policy=args.tie_policy,
            new_min_score=args.new_min_score,
            orig_min_score=args.orig_min_score,
            rules=args.rules,
            workers=args.workers,
            overwrite=args.overwrite,
        )
        outcome = run_refine(settings)
    except RefineInterrupted as exc:  # SIGTERM / Ctrl-C: unfinished shards are redone on rerun
        print(f"fdhclean revote: {exc}; rerun the same command to resume")
        return exc.exit_code
    except (ConfigurationMismatchError, FileNotFoundError, ValueError) as exc:
        print(f"fdhclean revote: {exc}")
        return 2
    except OSError as exc:  # OUT2 read-only, disk full, a file where a directory goes...
        print(f"fdhclean revote: cannot write {args.target}: {exc}; choose a writable --out")
        return 2
    for name, message in outcome.failed.items():
        print(f"FAILED {name}: {message}")
    if outcome.manifest is not None:
        print(f"manifest: {settings.split_out / 'manifest.json'}")
        for line in summary_lines(outcome.manifest.totals):
            print(line)
    return outcome.exit_code


def run_report_only(args: argparse.Namespace) -> int:
    from fdhclean.inspect.common import split_dir
    from fdhclean.inspect.revote import OVERLAY_MANIFEST, write_overlay

    try:
        record = write_overlay(
            split_dir(args.out, args.split), args.target, tie_policy=args.tie_policy,
            new_min_score=args.new_min_score, orig_min_score=args.orig_min_score,
            rules=args.rules,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        print(f"fdhclean revote: {exc}")
        return 2
    except OSError as exc:
        print(f"fdhclean revote: cannot write {args.target}: {exc}; choose a writable --out")
        return 2
    except KeyboardInterrupt:
        print("fdhclean revote: interrupted; nothing half-written is left, rerun to redo")
        return 130
    t = record["totals"]
    where = args.target / record["split"]
    print(
        f"overlay: {where / record['overlay']} ({t['written']} samples, {t['updated']} updated, "
        f"{t['changed']} decided differently from the run, {t['left_out']} left out without "
        f"readable keypoints); manifest: {where / OVERLAY_MANIFEST}"
    )
    return 0
