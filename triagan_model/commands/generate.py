"""`triagan generate`: images, grids and an index from a trained generator."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Generate one image per sample of a manifest (in manifest order, no flips), or for one input
given as files, with a trained generator (a weights directory written by `triagan train` or
`triagan import-dp2`). Writes OUT/images/<key>.png, OUT/grids/grid-NNNN.png (original |
condition | generated) and OUT/index.json (image_id -> key, size, conditioning keypoints, box of
the region to generate) for external pose estimators and `triagan evaluate --metrics oks`.

Truncation: --truncation PSI in [0, 1] pulls w toward w_avg (1 = none, 0 = the average; a psi
outside [0, 1], which DeepPrivacy2 clamps silently, is refused); with --clusters FILE (from
`triagan clusters`, or the w_centers.safetensors `triagan import-dp2` writes) each w is pulled
toward a k-means centre instead: --centre-rule nearest (default, the paper's) takes the centre
nearest to w, index takes centre (i mod K) for sample i, as DeepPrivacy2's anonymiser
(z_idx % K).

examples:
  triagan generate --weights runs/E/288x160/weights --manifest val.json --out gen --num 64
  triagan generate --weights W --manifest val.json --out gen0 --truncation 0
  triagan generate --weights W --image a.png --mask a_mask.png --keypoints a.npy --out one
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate images for a manifest or one input",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--weights", required=True, help="generator weights directory")
    p.add_argument("--manifest", help="manifest of the samples to condition on")
    p.add_argument("--image", help="single input: RGB PNG")
    p.add_argument("--mask", help="single input: mask PNG (nonzero = known background)")
    p.add_argument("--person-mask", help="single input: person mask PNG (default: --mask)")
    p.add_argument("--keypoints", help="single input: 17 x [x, y, v] as .npy or .json")
    p.add_argument("--keypoint-units", choices=("normalized", "pixels"), default="normalized")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--truncation", type=float, default=1.0, help="psi (default 1: none)")
    p.add_argument("--clusters", help="k-means centres of w (multi-modal truncation)")
    p.add_argument("--centre-rule", choices=("nearest", "index"), default="nearest",
                   help="the centre nearest to w (default) or DP2's i %% K")  # fmt: skip
    p.add_argument("--num", type=int, default=None, help="at most N samples of the manifest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


class CentresError(ValueError):
    """The --clusters file is missing, unreadable or of another w_dim (the user's input)."""


def _centres(path: str, w_dim: int):
    from triagan_model.sampling.truncation import load_centres

    try:
        return load_centres(path, w_dim)[0]
    except (FileNotFoundError, ValueError) as exn:
        raise CentresError(f"--clusters {exn}") from None


def run(args: argparse.Namespace) -> int:
    single = [args.image, args.mask, args.keypoints]
    if bool(args.manifest) == any(single) or (any(single) and not all(single)):
        print("triagan generate: error: give --manifest, or all of --image/--mask/--keypoints",
              file=sys.stderr)  # fmt: skip
        return 2
    if not 0.0 <= args.truncation <= 1.0:
        lo_hi = min(max(args.truncation, 0.0), 1.0)
        print(f"triagan generate: error: --truncation {args.truncation} is outside [0, 1] "
              f"(DeepPrivacy2 would clamp it to {lo_hi}; pass that if you meant it)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.centre_rule != "nearest" and not args.clusters:
        print("triagan generate: error: --centre-rule needs --clusters FILE", file=sys.stderr)
        return 2

    from triagan_model.devices import resolve_device
    from triagan_model.sampling.generate import (
        Truncation,
        manifest_batches,
        single_input_batch,
        write_outputs,
    )
    from triagan_model.weights import WeightsError, load_generator

    device = resolve_device(args.device)
    try:
        G = load_generator(args.weights, device)
        centres = _centres(args.clusters, G.cfg.w_dim) if args.clusters else None
        if args.manifest:
            batches = manifest_batches(args.manifest, G.cfg.resolution, args.batch_size, args.num)
        else:
            batches = iter([single_input_batch(args.image, args.mask, args.keypoints,
                                               G.cfg.resolution, args.person_mask,
                                               args.keypoint_units)])  # fmt: skip
        meta = {"weights": str(args.weights), "manifest": args.manifest,
                "clusters": args.clusters}  # fmt: skip
        trunc = Truncation(args.truncation, centres, args.centre_rule)
        index = write_outputs(batches, G, args.out, trunc=trunc, seed=args.seed, meta=meta)
    except (WeightsError, CentresError) as exn:  # the user's files: exit 2, naming the file
        print(f"triagan generate: error: {exn}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError) as exn:
        print(f"triagan generate: error: {exn}", file=sys.stderr)
        return 1
    print(f"images: {args.out}/images\ngrids: {args.out}/grids\nindex: {index}")
    return 0
