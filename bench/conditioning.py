"""Conditioning modes: how far ``flip-exact`` is from DeepPrivacy2's maps, and what each costs.

Prints, per resolution: differing values of each mode against DP2's own vectors
(shared/data/dp2_conditioning_vectors.npz; ``reference`` must be 0), the share of uniformly
random keypoints that land on another pixel under ``flip-exact``, and the CPU time of the maps
for a batch.

    python bench/conditioning.py                     # vectors from ../shared/data
    python bench/conditioning.py --batch 128 --iters 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

RESOLUTIONS = ((18, 10), (36, 20), (72, 40), (144, 80), (288, 160))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--vectors", default=os.environ.get("TRIAGAN_SHARED_DATA", default),
                   help="directory with dp2_conditioning_vectors.npz")  # fmt: skip
    p.add_argument("--batch", type=int, default=128, help="samples per timed batch")
    p.add_argument("--iters", type=int, default=3, help="timed repeats (the best is printed)")
    return p.parse_args(argv)


def _best_ms(fn, iters: int) -> float:
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from triagan_model.networks import conditioning as C

    ref = np.load(Path(args.vectors) / "dp2_conditioning_vectors.npz", allow_pickle=False)
    raw = torch.from_numpy(ref["keypoints_raw"])
    rand = torch.rand(args.batch, 17, 3, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    rand[..., 2] = 1
    timed = raw[torch.arange(args.batch) % raw.shape[0]]
    for h, w in RESOLUTIONS:
        name, line = f"{h}x{w}", []
        for mode in C.CONDITIONING_MODES:
            kp = C.keypoint_maps(raw, (h, w), mode).to(torch.uint8).numpy()
            limbs = C.limb_maps(raw, (h, w), mode).to(torch.uint8).numpy()
            dk = int((kp != ref[f"keypoint_maps_{name}"]).sum())
            dl = int((limbs != ref[f"limb_maps_{name}"]).sum())
            ms = _best_ms(lambda m=mode, hw=(h, w): (C.keypoint_maps(timed, hw, m),
                                                     C.limb_maps(timed, hw, m)),
                          args.iters)  # fmt: skip
            line.append(f"{mode}: {dk} kp / {dl} limb values differ from DP2, {ms:.0f} ms")
        a, b = (C.keypoint_maps(rand, (h, w), m) for m in C.CONDITIONING_MODES)
        moved = (a != b).flatten(2).any(-1).float().mean().item()
        print(f"{name}  " + "; ".join(line)
              + f"; random keypoints on another pixel (flip-exact): {moved:.1%}")  # fmt: skip
    print(f"(timings: keypoint + limb maps of {args.batch} samples, CPU, best of {args.iters})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
