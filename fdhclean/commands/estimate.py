"""`fdhclean estimate`: the GPU step alone, writing predictions (refine-spec section 7).

Reads the split's shards (this rank's share), decodes image + E_mask (+ mask when E_mask is
empty), takes the person box of section 5, runs the estimator and writes
`[{"image_id", "category_id": 1, "keypoints": [x, y, score] * 17, "score": mean score}]` in
pixels of the 288x160 image (`--out FILE.json`), or the same entries as a prediction store
(`--out DIR`: key-sorted parquet that `refine --predictions DIR` reads without an import),
plus `<out>.meta.json` with the estimator's provenance. Entries are written as they come
(bounded memory). Samples
that fail to decode are skipped and counted (refine reports them as no-estimate); a shard that
cannot be read fails alone and makes the exit code non-zero.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

_ERRORS = ("missing-member", "failed", "non-integer-key", "failed-shards")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "estimate",
        help="run a pose estimator over a split and write COCO results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--split", required=True)
    p.add_argument("--data-root", required=True, help="ROOT holding ROOT/SPLIT/out-NNNNNN.tar")
    p.add_argument("--estimator", required=True, choices=["vitpose-hf", "vitpose-mmpose"])
    p.add_argument("--checkpoint", required=True, help="local weights (directory or .pth)")
    p.add_argument("--checkpoint-sha256", help="refuse weights with another sha256")
    p.add_argument("--mmpose-config", help="vitpose-mmpose: config file (default: ViTPose-H)")
    p.add_argument(
        "--out", required=True,
        help="FILE.json (COCO results) or DIR (a prediction store refine reads directly); "
        "with --world-size > 1 use {rank}",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="crop/decode processes (0: inline)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--no-flip-test", dest="flip_test", action="store_false")
    p.add_argument("--rank", type=int, help="default: $RANK or 0")
    p.add_argument("--world-size", type=int, help="default: $WORLD_SIZE or 1")
    p.add_argument("--limit", type=int, help="stop after N samples (quick checks)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def _samples(shards: list[Path], counts: Counter, limit: int | None) -> Iterator[tuple]:
    """(key, raw pose members, None) of every sample: PNG decoding and the person box happen
    in the estimator's crop workers (`estimators.inputs`); a missing member is counted here."""
    from fdhclean import fdh
    from fdhclean.estimators.inputs import pose_members
    from fdhclean.shards import ShardReadError, iter_shard

    for shard in shards:
        try:
            for sample in iter_shard(shard):
                if limit is not None and counts["samples"] >= limit:
                    return
                counts["samples"] += 1
                if sample.find(fdh.MEMBER_IMAGE) is None or sample.find(fdh.MEMBER_EMASK) is None:
                    counts["missing-member"] += 1
                    continue
                yield sample.key, pose_members(sample.find, sample.get), None
        except ShardReadError as e:
            counts["failed-shards"] += 1
            print(f"estimate: {e}")


def _out_path(out: str, rank: int, world_size: int) -> Path:
    if world_size > 1:
        if "{rank}" not in out:
            raise ValueError("--out must contain {rank} when --world-size > 1")
        return Path(out.format(rank=rank))
    return Path(out)


def run(args: argparse.Namespace) -> int:
    from fdhclean.estimators import build_estimator, estimate_samples
    from fdhclean.estimators.topdown import FDH_FRAME
    from fdhclean.predictions_store import open_writer
    from fdhclean.shards import atomic_write_bytes, list_shards, rank_from_env, shards_for_rank

    try:
        rank, world = rank_from_env(args.rank, args.world_size)
        out = _out_path(args.out, rank, world)
        shards = shards_for_rank(list_shards(args.data_root, args.split), rank, world)
        options = {"frame": FDH_FRAME}  # COCO results in FDH's pixel frame (refine-spec)
        options.update({"config": args.mmpose_config} if args.mmpose_config else {})
        estimator = build_estimator(
            args.estimator, checkpoint=args.checkpoint, checkpoint_sha256=args.checkpoint_sha256,
            device=args.device, batch_size=args.batch_size, flip_test=args.flip_test,
            dtype=args.dtype, **options,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"estimate: {e}")
        return 2
    counts: Counter = Counter()
    try:
        writer = open_writer(out, {"estimator": estimator.name, "split": args.split, "rank": rank})
    except (OSError, ValueError) as e:  # a file where the store goes, unwritable parent...
        print(f"estimate: cannot write --out {out}: {e}")
        return 2
    stream = estimate_samples(
        estimator, _samples(shards, counts, args.limit), batch_size=args.batch_size,
        workers=args.workers, progress=args.progress,
    )  # fmt: skip
    try:  # entries go to disk as they come (bounded memory), never held for one json.dump
        for key, kps in stream:
            if kps is None:
                counts["failed"] += 1  # undecodable member or estimator failure
                continue
            try:
                writer.add(key, kps, float(kps[:, 2].mean()))
                counts["estimated"] += 1
            except ValueError:
                counts["non-integer-key"] += 1  # no COCO image_id can name it
    except BaseException:
        writer.abort()
        raise
    try:
        writer.close()
    except (OSError, ValueError) as e:  # disk full at the merge, a path replaced meanwhile
        print(f"estimate: cannot write --out {out}: {e}; free space or choose another --out")
        return 2
    meta = {
        "estimator": estimator.name, "weights_sha256": estimator.weights_sha256,
        "checkpoint": str(args.checkpoint), "flip_test": args.flip_test, "split": args.split,
        "rank": rank, "world_size": world, "shards": [s.name for s in shards],
        "samples": counts["samples"], "estimated": counts["estimated"],
        "errors": {k: counts[k] for k in _ERRORS},
        "provenance": estimator.provenance(),  # decoding, frame, dtype: the PoseEstimator says
    }  # fmt: skip
    meta_path = out.with_name(out.name + ".meta.json")
    atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())
    print(
        f"estimated {counts['estimated']} of {counts['samples']} samples with {estimator.name} "
        f"(weights sha256 {estimator.weights_sha256}); skipped: {counts['missing-member']} "
        f"with a missing member, {counts['failed']} undecodable or failed, "
        f"{counts['non-integer-key']} with a non-integer key; "
        f"{counts['failed-shards']} unreadable shards -> {out}"
    )
    return 1 if counts["failed-shards"] else 0
