"""`triagan evaluate`: FID, FID_CLIP and OKS of a trained generator on a manifest."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Evaluate a generator on the samples of a manifest (triagan-spec "Evaluation"); each result is
appended as a JSON line to OUT/metric-<name>.jsonl.

  fid, fid_clip      one generated image per real one (from that sample's conditioning), no
                     truncation; Inception (torch-fidelity) / CLIP ViT-B/32 features from LOCAL
                     weight files ($TRIAGAN_WEIGHTS); real statistics cached per manifest
                     sha256 in --cache-dir. fid:<extractor> picks any registered extractor.
  oks                needs --keypoints-results: a COCO keypoint results file estimated on the
                     images `triagan generate --truncation 0` wrote (image_id = int(key), or
                     mapped by --index). For the whole pipeline with ViTPose see
                     pipelines/eval_oks.py.

examples:
  triagan evaluate --weights runs/E/288x160/weights --manifest val.json --metrics fid,fid_clip \\
      --out runs/E/288x160
  triagan generate --weights W --manifest val.json --truncation 0 --out gen0
  (estimate keypoints on gen0/images -> results.json)
  triagan evaluate --weights W --manifest val.json --metrics oks \\
      --keypoints-results results.json --out runs/E/288x160
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="FID / FID_CLIP / OKS of a generator",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--weights", required=True, help="generator weights directory")
    p.add_argument("--manifest", required=True, help="evaluation manifest (e.g. val)")
    p.add_argument("--metrics", default="fid,fid_clip", help="comma-separated metric names")
    p.add_argument("--out", required=True, help="directory of the metric-<name>.jsonl files")
    p.add_argument("--keypoints-results", help="COCO keypoint results on generated images (oks)")
    p.add_argument("--index", help="`triagan generate` index.json mapping image_id -> key")
    p.add_argument(
        "--oks-area",
        choices=("crop", "region"),
        default="crop",
        help="OKS object area: the whole crop (paper) or the region to generate",
    )
    p.add_argument("--num", type=int, default=None, help="only the first N samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--cache-dir",
        default=None,
        help="real-statistics cache (default ~/.cache/triagan/fid-stats)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from triagan_model import evaluation as E
    from triagan_model.data.manifest import manifest_sha256
    from triagan_model.devices import resolve_device
    from triagan_model.metrics.clip_loader import ClipWeightsError
    from triagan_model.weights import WeightsError, load_generator, read_weights_dir

    try:
        metrics = E.parse_metrics(args.metrics)
        if "oks" in metrics and not args.keypoints_results:
            raise ValueError("--metrics oks needs --keypoints-results (or use "
                             "pipelines/eval_oks.py, which runs ViTPose itself)")  # fmt: skip
    except ValueError as exn:
        print(f"triagan evaluate: error: {exn}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    cache = args.cache_dir or str(Path.home() / ".cache" / "triagan" / "fid-stats")
    try:
        G = load_generator(args.weights, device)
        doc = read_weights_dir(args.weights)[2]
        info = {"weights": str(args.weights), "weights_sha256": doc.get("weights_sha256"),
                "manifest": str(args.manifest), "manifest_sha256": manifest_sha256(args.manifest),
                "resolution": list(G.cfg.resolution), "num": args.num}  # fmt: skip
        fids = [m for m in metrics if m != "oks"]
        results = {}
        if fids:
            results = E.fid_metrics(
                G,
                args.manifest,
                fids,
                batch_size=args.batch_size,
                max_samples=args.num,
                cache_dir=cache,
                seed=args.seed,
            )
        for name, value in results.items():
            path = E.append_result(args.out, name, value, truncation=1.0, **info)
            print(f"{name}: {value:.4f} -> {path}")
        if "oks" in metrics:
            value, n = E.oks_from_results(args.manifest, args.keypoints_results,
                                          G.cfg.resolution, area=args.oks_area,
                                          index=args.index, num=args.num)  # fmt: skip
            path = E.append_result(args.out, "oks", value, scored=n, area=args.oks_area,
                                   keypoints_results=args.keypoints_results, truncation=0.0,
                                   **info)  # fmt: skip
            print(f"oks: {value:.4f} over {n} samples -> {path}")
    except (WeightsError, ClipWeightsError) as exn:  # the user's files: exit 2, naming them
        print(f"triagan evaluate: error: {exn}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError) as exn:
        print(f"triagan evaluate: error: {exn}", file=sys.stderr)
        return 1
    return 0
