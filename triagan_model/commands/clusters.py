"""`triagan clusters`: k-means centres of mapped w for multi-modal truncation."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "clusters",
        help="k-means centres of w for multi-modal truncation",
        description="Map --num-samples latents z through the generator's mapping network and "
        "run k-means (k-means++ seeding, Lloyd iterations) on the w; writes the centres as "
        "safetensors for `triagan generate --clusters`. The reference used 512 centres from "
        "600K samples.",
    )
    p.add_argument("--weights", required=True, help="generator weights directory")
    p.add_argument("--num-centres", type=int, default=512)
    p.add_argument("--num-samples", type=int, default=600_000)
    p.add_argument("--iters", type=int, default=50, help="maximum Lloyd iterations")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from triagan_model.devices import resolve_device
    from triagan_model.sampling.truncation import kmeans, save_centres
    from triagan_model.weights import WeightsError, load_generator, sha256_file

    device = resolve_device(args.device)
    try:
        G = load_generator(args.weights, device)
        if not 0 < args.num_centres <= args.num_samples:
            raise ValueError("need 0 < --num-centres <= --num-samples")
        gen = torch.Generator().manual_seed(args.seed)
        ws = []
        with torch.no_grad():
            for start in range(0, args.num_samples, 8192):
                n = min(8192, args.num_samples - start)
                ws.append(G.mapping(torch.randn(n, G.cfg.z_dim, generator=gen).to(device)))
        centres, assign = kmeans(torch.cat(ws), args.num_centres, iters=args.iters, seed=args.seed)
        meta = {"weights": str(args.weights), "num_samples": args.num_samples, "seed": args.seed,
                "weights_sha256": sha256_file(f"{args.weights}/generator.safetensors")}  # fmt: skip
        out = save_centres(args.out, centres, num_centres=args.num_centres, **meta)
    except WeightsError as exn:  # the user's weights directory: exit 2, naming the file
        print(f"triagan clusters: error: {exn}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exn:
        print(f"triagan clusters: error: {exn}", file=sys.stderr)
        return 1
    sizes = torch.bincount(assign, minlength=args.num_centres)
    print(f"{args.num_centres} centres from {args.num_samples} w (cluster sizes "
          f"{int(sizes.min())}..{int(sizes.max())}): {out}")  # fmt: skip
    return 0
