"""`fdhclean synth`: write a small deterministic FDH-format dataset for tests and demos."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Generate a synthetic FDH dataset (fdh-format.md layout) whose correct keypoint cleaning is
known, for tests, benchmarks and the demo. Same arguments -> byte-identical files.

Outputs under --out:
  train/out-%06d.tar, val/out-%06d.tar
      webdataset shards; per sample (8-9 digit integer key): image.png (288x160 painted
      figure on a textured background), mask.png (1 = known background, person dilated 4 px
      is 0), maskrcnn_mask.png (1 = not person), E_mask.png (1 = body surface),
      vertices.npy (CSE vertex id per pixel, each body pixel's vertex lies on that pixel's
      part), keypoints.npy (float32 17x3 COCO "original" annotation, possibly corrupted).
  mesh.pkl             subdivided mesh in DensePose's pickle layout {"vertices", "faces"}:
                       base ids first, then one midpoint per base edge (V + 3V - 6 vertices)
  segmentation.json    Meshcapade-style {part: [base vertex ids]} with the 24 SMPL part
                       names (alphabetical key order; some border vertices in 2-3 parts)
  predictions_{train,val}.json
                       "estimated" keypoints, COCO results format in pixels: mostly accurate,
                       some low scores (< 0.3), recorded corruptions, a few keys with two
                       entries (the higher score is the good one), a few keys without any,
                       and a few entries for keys that are not in the split
  truth_{train,val}.parquet
                       one row per sample: key, shard, keypoint_units, true_keypoints (51,
                       normalised), orig_corruptions / est_corruptions (swap_pair, swap_all,
                       off_body, missing; "" = clean), has_prediction, and better
                       (original | estimate | unclear): the annotation the vote of
                       refine-spec sections 3-4 must keep ("unclear" when both or neither
                       are corrupted, or without a prediction); also index, est_low_score,
                       est_duplicate, facing_camera, visible
  synth.json           the arguments, mesh sizes, per-shard storage variant, counts
"""

EPILOG = """\
Storage variants rotate over the shards of a split (all appear with 4+ shards per split;
the default 2+2 shards show them all across both splits): vertices.npy (288,160) or
(1,288,160) as uint16/int32/int64; E_mask member named E_mask.png or e_mask.png; masks stored
0/1 or 0/255; keypoints normalised or in pixels (every split with 2+ shards has a pixel shard).

examples:
  fdhclean synth --out /tmp/fdh-synth
  fdhclean synth --out /tmp/fdh-bench --shards 8 --val-shards 2 --samples-per-shard 250
  fdhclean synth --out /tmp/fdh-real --real-mesh-size   # 6890 + 20664 = 27554 CSE vertices
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a deterministic synthetic FDH dataset with known answers",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output directory (created if needed)")
    parser.add_argument("--shards", type=int, default=2, help="shards per split (default 2)")
    parser.add_argument(
        "--val-shards", type=int, default=None, help="val shards (default: same as --shards)"
    )
    parser.add_argument(
        "--samples-per-shard", type=int, default=16, help="samples in each shard (default 16)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--real-mesh-size",
        action="store_true",
        help="6890 base vertices like SMPL (27554 CSE vertices); default: 642 (2562)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the shards of an earlier run in --out"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from fdhclean.synth.generate import SynthConfig, generate

    config = SynthConfig(
        out=Path(args.out),
        shards=args.shards,
        val_shards=args.val_shards,
        samples_per_shard=args.samples_per_shard,
        seed=args.seed,
        real_mesh_size=args.real_mesh_size,
        overwrite=args.overwrite,
    )
    start = time.perf_counter()
    try:
        summary = generate(config)
    except (ValueError, FileExistsError, RuntimeError) as exc:
        print(f"fdhclean synth: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    total = sum(s["samples"] for s in summary["splits"].values())
    for split, info in summary["splits"].items():
        better = ", ".join(f"{k} {v}" for k, v in info["better"].items())
        print(f"{split}: {len(info['shards'])} shards, {info['samples']} samples ({better})")
    mesh = summary["mesh"]
    print(f"mesh: {mesh['base_vertices']} base + midpoints = {mesh['vertices']} vertices")
    print(f"wrote {total} samples to {config.out} in {seconds:.1f} s")
    return 0
