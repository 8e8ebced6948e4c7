"""Benchmark: training-loader throughput per stage, from 288x160 shards vs pre-resized shards.

Low-resolution stages see the most images (Config E: 300M at 18x10), so decoding a 288x160 PNG
for every 18x10 sample would make the loader the bottleneck; `triagan prepare` writes shards at
each stage's resolution. This prints samples/s of `build_loader` (one process, no workers) for
both sources at every stage resolution, on a synthetic FDH split (`fdhclean synth`).

    python bench/loader.py                 # 2 shards x 200 samples, 18/36/72/144
    python bench/loader.py --samples-per-shard 500 --batches 20
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from triagan_model.data.loader import build_loader

HEIGHTS = (18, 36, 72, 144)


def cli(module: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{module} {args[0]} failed:\n{proc.stdout}{proc.stderr}")


def rate(manifest: Path, resolution: tuple[int, int], batch: int, batches: int) -> float:
    loader = build_loader(manifest, resolution=resolution, batch_size=batch, seed=0)
    it = iter(loader)
    next(it)  # warm-up: opens the first shard
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--samples-per-shard", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)  # what each DataLoader worker gets
    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        data = work / "data"
        cli("fdhclean.cli", "synth", "--out", str(data), "--shards", str(args.shards),
            "--val-shards", "1", "--samples-per-shard", str(args.samples_per_shard))  # fmt: skip
        manifest = work / "train.json"
        cli("fdhclean.cli", "manifest", "--data-root", str(data), "--split", "train",
            "--out", str(manifest))  # fmt: skip
        start = time.perf_counter()
        cli("triagan_model.cli", "prepare", "--manifest", str(manifest), "--resolutions",
            ",".join(map(str, HEIGHTS)), "--out", str(work / "prepared"))  # fmt: skip
        n = args.shards * args.samples_per_shard
        print(f"triagan prepare: {n} samples x {len(HEIGHTS)} resolutions in "
              f"{time.perf_counter() - start:.1f} s (one process)")  # fmt: skip
        print(f"{'stage':>8} {'from 288x160':>14} {'pre-resized':>14} {'speed-up':>9}")
        for h in HEIGHTS:
            res = (h, h * 160 // 288)
            full = rate(manifest, res, args.batch, args.batches)
            prepared = work / "prepared" / f"{res[0]}x{res[1]}" / "train.json"
            small = rate(prepared, res, args.batch, args.batches)
            print(
                f"{res[0]:>4}x{res[1]:<3} {full:>10.0f} /s {small:>10.0f} /s {small / full:>8.1f}x"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
