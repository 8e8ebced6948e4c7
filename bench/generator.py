"""Generator throughput (images/s), eager and torch.compile, CPU fp32 and GPU bf16.

The paper's anchor (triagan-spec "Sampling"): Config E synthesises about 25 images/s on an
RTX 3090 at batch 1 in unoptimised PyTorch. Random weights (speed does not depend on them);
the 30-channel input is built once outside the timed loop.

    python bench/generator.py --configs E --iters 3                  # CPU, quick
    python bench/generator.py --configs E --device cuda --dtype bf16 --large-batch 128
    python bench/generator.py --smoke        # E-tiny at 18x10, CPU, one iteration (code path)
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["E"], help="config names (default: E)")
    p.add_argument("--resolutions", nargs="+", default=["72x40", "288x160"])
    p.add_argument("--large-batch", type=int, default=None, help="default: 16 CPU, 128 GPU")
    p.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: bf16 on GPU")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per case")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None, help="append one JSON line per case to this file")
    p.add_argument("--smoke", action="store_true", help="E-tiny 18x10, CPU, 1 iteration, eager")
    args = p.parse_args(argv)
    if args.smoke:
        args.configs, args.resolutions, args.modes = ["E-tiny"], ["18x10"], ["eager"]
        args.device, args.iters, args.warmup, args.large_batch = "cpu", 1, 0, 2
        args.dtype = "fp32"
    return args


def bench_case(g, cond, iters: int, warmup: int, device, dtype) -> float:
    import torch

    z = torch.randn(cond.shape[0], g.cfg.z_dim, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype != torch.float32):
        for _ in range(warmup):
            g(cond, z)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            g(cond, z)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return cond.shape[0] * iters / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    import torch

    from triagan_model.configs import get_config
    from triagan_model.networks.conditioning import build_condition
    from triagan_model.networks.generator import TriaGANGenerator

    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    large = args.large_batch or (128 if device.type == "cuda" else 16)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {where}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("paper anchor: Config E ~25 images/s at batch 1 on an RTX 3090 (unoptimised PyTorch)")
    for name in args.configs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = get_config(name)
        for res in args.resolutions:
            if res not in [s.name for s in cfg.stages]:
                print(f"{name} {res}: no such stage, skipped")
                continue
            g = TriaGANGenerator(cfg.generator_config(res)).to(device).eval()
            h, w = g.cfg.resolution
            for mode in args.modes:
                net = torch.compile(g) if mode == "compile" else g
                for batch in (1, large):
                    kp = torch.rand(batch, 17, 3, device=device)
                    img = torch.rand(batch, 3, h, w, device=device) * 2 - 1
                    mask = (torch.rand(batch, 1, h, w, device=device) > 0.5).float()
                    cond = build_condition(img, mask, mask, kp, (h, w))
                    t0 = time.perf_counter()
                    ips = bench_case(net, cond, args.iters, args.warmup, device, dtype)
                    total = time.perf_counter() - t0
                    print(
                        f"config {name} {res} batch {batch:4d} {mode:7s} {device.type} "
                        f"{dtype_name}: {ips:9.2f} images/s  (case wall {total:.1f} s)",
                        flush=True,
                    )
                    if args.json:
                        record = {"part": "generator", "config": name, "stage": res,
                                  "batch": batch, "mode": mode, "device": device.type,
                                  "dtype": dtype_name, "smoke": args.smoke,
                                  "images_per_s": round(ips, 3)}  # fmt: skip
                        with open(args.json, "a") as f:
                            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
