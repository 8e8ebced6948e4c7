"""Training-step throughput (images/s of one D phase + G phase), per stage resolution.

One step = the loop's `train_step`: D on real and generated images (masked hinge or hinge),
then G through D, with DiffAugment and blur, on a synthetic batch (random images, masks and
keypoints; speed does not depend on the data). D's feature networks are RANDOMLY initialised
(same compute as the pretrained ones, no weight files needed). Eager and torch.compile (G and
D compiled separately); GPU runs use the config's bf16 autocast.

    python bench/train_step.py                                    # E-tiny, CPU, all stages
    python bench/train_step.py --config A --stages 72x40 --batch 1 --modes eager --steps 2
    python bench/train_step.py --config E --device cuda --batch 32  # the real one, on a GPU
    python bench/train_step.py --smoke        # E-tiny 18x10, CPU, batch 2, one step (code path)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
import warnings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="E-tiny", help="config name or TOML (default E-tiny)")
    p.add_argument("--stages", nargs="+", default=None, help="stage names (default: all)")
    p.add_argument("--batch", type=int, default=None,
                   help="images per step (default: min(stage batch, 4 CPU / 32 GPU))")  # fmt: skip
    p.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps (compile happens here)")
    p.add_argument("--blur-sigma", type=float, default=0.0, help="D input blur (0 after fade)")
    p.add_argument("--json", default=None, help="also append each JSON line to this file")
    p.add_argument("--smoke", action="store_true", help="E-tiny 18x10, CPU, batch 2, 1 step")
    args = p.parse_args(argv)
    if args.smoke:
        args.config, args.stages, args.batch, args.modes = "E-tiny", ["18x10"], 2, ["eager"]
        args.device, args.steps, args.warmup = "cpu", 1, 0
    return args


def synthetic_batch(b: int, hw: tuple[int, int], device):
    import torch

    g = torch.Generator().manual_seed(0)
    h, w = hw
    mask = torch.ones(b, 1, h, w)
    mask[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 0
    kp = torch.rand(b, 17, 3, generator=g)
    kp[..., 2] = 2.0
    batch = {"img": torch.rand(b, 3, h, w, generator=g) * 2 - 1, "mask": mask,
             "maskrcnn_mask": mask.clone(), "keypoints": kp}  # fmt: skip
    return {k: v.to(device) for k, v in batch.items()}


def bench_stage(cfg, index: int, batch: int, mode: str, args, device) -> float:
    import torch

    from triagan_model.training import distributed, loop
    from triagan_model.training.augment import diff_augment
    from triagan_model.training.options import TrainOptions

    opts = TrainOptions(config=cfg, manifest="-", run_dir="-")
    nets = loop.build_nets(opts, index, device, None)
    if mode == "compile":
        nets.G, nets.D = torch.compile(nets.G), torch.compile(nets.D)
    data = synthetic_batch(batch, cfg.stages[index].resolution, device)
    use_amp = cfg.mixed_precision and device.type == "cuda"

    def autocast():
        if not use_amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def one_step():
        loop.train_step(nets, [data], opts=opts, info=distributed.DistInfo(device=device),
                        sigma=args.blur_sigma, augment=diff_augment(cfg.augment.diffaug),
                        autocast=autocast)  # fmt: skip

    for _ in range(args.warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * args.steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    import torch

    from triagan_model.configs import load_config

    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny-config and random-feature-network warnings
        cfg = load_config(args.config, warn_tiny=False)
        cfg = dataclasses.replace(
            cfg, discriminator=dataclasses.replace(cfg.discriminator, pretrained=False)
        )
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        amp = "bf16 autocast" if cfg.mixed_precision and device.type == "cuda" else "fp32"
        print(f"config {cfg.name}, {where}, {torch.get_num_threads()} threads, {amp}")
        names = args.stages or [s.name for s in cfg.stages]
        default_batch = 32 if device.type == "cuda" else 4
        for name in names:
            index = [s.name for s in cfg.stages].index(name)
            batch = args.batch or min(cfg.stages[index].batch, default_batch)
            for mode in args.modes:
                rate = bench_stage(cfg, index, batch, mode, args, device)
                record = {"config": cfg.name, "stage": name, "batch": batch, "mode": mode,
                          "device": where, "images_per_s": round(rate, 3)}  # fmt: skip
                print(json.dumps(record), flush=True)
                if args.json:
                    record |= {"part": "train_step", "amp": amp, "smoke": args.smoke}
                    with open(args.json, "a") as f:
                        f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
