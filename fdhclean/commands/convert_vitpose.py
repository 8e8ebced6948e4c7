"""`fdhclean convert-vitpose`: an official ViTPose / mmpose ViTPose .pth -> transformers format."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Convert an official ViTPose (github.com/ViTAE-Transformer/ViTPose) or mmpose 1.x ViTPose
checkpoint (.pth, loaded with torch.load(weights_only=True); numpy scalars and dtypes in mmcv's
`meta` are allowed by name, nothing that runs code) into a transformers
VitPoseForPoseEstimation directory (config.json, model.safetensors, preprocessor_config.json)
that `--estimator vitpose-hf --checkpoint DIR` runs without mmpose. The weights' sha256 is
printed; pass it as --checkpoint-sha256 to later runs.

The paper's estimator is ViTPose-H*: the single-head ViTPose-H trained on COCO + AI Challenger
+ MPII + CrowdPose. From the ViTPose repository's model zoo ("multi-task training" table,
ViTPose-H*, the COCO+AIC+MPII+CrowdPose checkpoint) download the .pth yourself; its COCO head
(keypoint_head) is kept and the other datasets' heads (associate_keypoint_heads.*) are dropped.
Single-dataset checkpoints (e.g. mmpose's td-hm_ViTPose-huge_8xb64-210e_coco-256x192-*.pth)
convert the same way. ViTPose++ (mixture-of-experts) checkpoints keep expert --expert (0 = COCO)
appended to mlp.fc2, as ViTPose's tools/model_split.py does; that script's coco.pth (fc2 already
concatenated) converts as it is. An unreadable file, a refused pickle or tensors of the wrong
shape exit 2 with a message naming the file.

example:
  fdhclean convert-vitpose vitpose-h-multi-coco.pth --out weights/vitpose-h-star --variant huge
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-vitpose",
        help="convert a ViTPose/mmpose .pth into a transformers VitPose directory",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pth", help="official ViTPose or mmpose 1.x ViTPose checkpoint (.pth)")
    p.add_argument("--out", required=True, help="output directory (created atomically)")
    p.add_argument(
        "--variant",
        choices=["small", "base", "large", "huge"],
        help="checked against the tensors; sets the head count (default: by width)",
    )
    p.add_argument("--num-heads", type=int, help="attention heads for a non-standard width")
    p.add_argument(
        "--expert", type=int, default=0, help="ViTPose++: expert appended to mlp.fc2 (0 = COCO)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fdhclean.estimators.convert import convert_vitpose
    from fdhclean.estimators.weights import sha256_checkpoint

    try:
        conv = convert_vitpose(
            args.pth, args.out, variant=args.variant, num_attention_heads=args.num_heads,
            expert=args.expert, overwrite=args.overwrite,
        )  # fmt: skip
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"convert-vitpose: {e}", file=sys.stderr)
        return 2  # a user error: the file, the variant or --out
    print(
        f"converted {args.pth} ({conv.layout} layout, width {conv.hidden_size}, "
        f"{conv.num_hidden_layers} layers, {conv.num_attention_heads} heads; "
        f"{len(conv.dropped)} keys dropped) -> {conv.out_dir}"
    )
    print(f"weights sha256 {sha256_checkpoint(conv.out_dir)}")
    return 0
