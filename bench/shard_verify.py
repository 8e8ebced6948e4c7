"""Benchmark: what `triagan train --verify sha256` (the default) costs over `--verify size`.

With sha256, each loader process hashes a shard once, before its first sample is used (first
epoch only; later epochs reuse the check). This prints the hash rate of `sha256_file` and the
time of one first epoch of `build_loader` (one process, no workers) with each mode, from
288x160 shards and from `triagan prepare` 18x10 shards (the cheapest samples to decode, so
the largest relative cost), on a synthetic FDH split.

    python bench/shard_verify.py                       # 2 shards x 200 samples, 3 repeats
    python bench/shard_verify.py --samples-per-shard 500 --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from fdhclean.cli import main as fdhclean_main
from triagan_model.atomic import sha256_file
from triagan_model.data.loader import build_loader
from triagan_model.data.manifest import read_manifest
from triagan_model.data.prepare import prepare


def epoch_seconds(manifest: Path, resolution: tuple[int, int], verify: str) -> float:
    start = time.perf_counter()
    loader = build_loader(manifest, resolution=resolution, batch_size=32, seed=0,
                          infinite=False, verify=verify)  # fmt: skip
    for _ in loader:
        pass
    return time.perf_counter() - start


def hash_rate(manifest: Path) -> float:
    shards = [s.path for s in read_manifest(manifest).shards]
    start = time.perf_counter()
    for p in shards:
        sha256_file(p)
    return sum(p.stat().st_size for p in shards) / (time.perf_counter() - start) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--samples-per-shard", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # what each DataLoader worker gets
    work = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    try:
        data, manifest = work / "data", work / "train.json"
        assert fdhclean_main(["synth", "--out", str(data), "--shards", str(args.shards),
                              "--val-shards", "1", "--samples-per-shard",
                              str(args.samples_per_shard)]) == 0  # fmt: skip
        assert fdhclean_main(["manifest", "--data-root", str(data), "--split", "train",
                              "--out", str(manifest)]) == 0  # fmt: skip
        small = prepare(manifest, [18], work / "prepared").manifests[(18, 10)]
        for name, m, res in (("288x160 shards", manifest, (18, 10)),
                             ("prepared 18x10", small, (18, 10))):  # fmt: skip
            mib = sum(s.path.stat().st_size for s in read_manifest(m).shards) / 2**20
            rates = [hash_rate(m) for _ in range(args.repeats)]
            print(f"{name}: {mib:.1f} MiB, sha256_file {min(rates):.0f}-{max(rates):.0f} MiB/s")
            for _ in range(args.repeats):  # interleaved, so machine load hits both alike
                size, sha = epoch_seconds(m, res, "size"), epoch_seconds(m, res, "sha256")
                print(f"  first epoch: --verify size {size:.2f} s, sha256 {sha:.2f} s "
                      f"({100 * (sha - size) / size:+.1f} %)")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
