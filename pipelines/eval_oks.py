"""OKS of a TriA-GAN generator with fdhclean's ViTPose backend (triagan-spec "Evaluation").

Glue between the two packages (only files in pipelines/ import both): generate at truncation 0
with `triagan_model`, estimate keypoints on the generated images (upsampled to the 288x160 crop)
with `fdhclean.estimators` vitpose-hf, the person box being the box of the region to generate
(the mask), then OKS against the conditioning keypoints (COCO formula, ground truth = the
conditioning; area = the whole crop by default, as the paper). The result is appended to
OUT/metric-oks.jsonl.

    python pipelines/eval_oks.py --weights runs/E/288x160/weights \\
        --manifest data_manifests/fdh/val.json --vitpose ~/weights/vitpose-h --out runs/E/288x160

The ViTPose checkpoint is a local transformers directory (`fdhclean convert-vitpose` converts an
official .pth); the paper uses ViTPose-H.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--weights", required=True, help="generator weights directory")
    p.add_argument("--manifest", required=True, help="evaluation manifest (e.g. val)")
    p.add_argument("--vitpose", required=True, help="local transformers ViTPose directory")
    p.add_argument("--vitpose-sha256", default=None, help="expected sha256 of its weights")
    p.add_argument("--out", required=True, help="directory of metric-oks.jsonl")
    p.add_argument("--area", choices=("crop", "region"), default="crop")
    p.add_argument("--num", type=int, default=None, help="only the first N samples")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-flip-test", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from fdhclean.estimators import build_estimator
    from triagan_model import evaluation
    from triagan_model.data.manifest import manifest_sha256
    from triagan_model.devices import resolve_device
    from triagan_model.weights import load_generator, read_weights_dir

    device = resolve_device(args.device)
    G = load_generator(args.weights, device)
    estimator = build_estimator("vitpose-hf", checkpoint=args.vitpose,
                                checkpoint_sha256=args.vitpose_sha256, device=device,
                                batch_size=args.batch_size,
                                flip_test=not args.no_flip_test)  # fmt: skip
    value, n = evaluation.oks_with_estimator(G, args.manifest, estimator.estimate, area=args.area,
                                             num=args.num, batch_size=args.batch_size,
                                             seed=args.seed)  # fmt: skip
    path = evaluation.append_result(
        args.out, "oks", value, scored=n, area=args.area, truncation=0.0,
        estimator=estimator.name, estimator_checkpoint=str(args.vitpose),
        estimator_sha256=estimator.weights_sha256, flip_test=not args.no_flip_test,
        weights=str(args.weights), weights_sha256=read_weights_dir(args.weights)[2].get(
            "weights_sha256"), manifest=str(args.manifest),
        manifest_sha256=manifest_sha256(args.manifest), resolution=list(G.cfg.resolution),
    )  # fmt: skip
    print(f"oks: {value:.4f} over {n} samples -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
