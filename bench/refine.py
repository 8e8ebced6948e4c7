"""Benchmark: is the cleaning work outside the estimator fast enough not to bottleneck a GPU run?

Times, in one run on the same synthetic shards (made by `fdhclean synth`):
  1. a plain tar copy: read every member of every shard and write it to a new tar;
  2. `fdhclean refine` with precomputed predictions (decode the members the vote needs, score,
     vote, write shard + report + marker), in-process and with worker processes;
and prints samples/s of each and the ratio refine / copy (target: >= 0.5).
With --estimator it then times the ViTPose estimator against transformers' per-image pipeline
on the same random weights (bench/estimator.py: ViTPose-B at batch 1 and 32 on CPU; with a GPU,
pass e.g. `--estimator-args "--variant huge --batch 64 --images 2048 --workers 8"`).

    python bench/refine.py                        # 4 shards x 500 samples
    python bench/refine.py --shards 8 --samples-per-shard 500 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def plain_copy(src_dir: Path, dst_dir: Path, durable: bool = False) -> int:
    """Read every member of every shard and write it out: the I/O floor of any rewrite.

    `durable` also fsyncs each output shard, as refine does for every file it writes (how much
    that costs depends on the disk, and is most of this benchmark's run-to-run noise)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    members = 0
    for shard in sorted(src_dir.glob("out-*.tar")):
        with open(dst_dir / shard.name, "wb") as fh:
            with tarfile.open(shard) as src, tarfile.open(fileobj=fh, mode="w") as dst:
                for info in src:
                    data = src.extractfile(info).read()
                    dst.addfile(info, io.BytesIO(data))
                    members += 1
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
    return members


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def run_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fdhclean.cli", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="refine --workers for run 3")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("--estimator", action="store_true", help="also run bench/estimator.py")
    parser.add_argument("--estimator-args", default="", help="arguments for bench/estimator.py")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-refine-"))
    data, parts = work / "data", work / "parts.npz"
    if not (data / "synth.json").exists():
        print(f"generating {args.shards} x {args.samples_per_shard} synthetic samples ...")
        run_cli("synth", "--out", str(data), "--shards", str(args.shards), "--val-shards", "1",
                "--samples-per-shard", str(args.samples_per_shard), "--overwrite")  # fmt: skip
        run_cli("parts", "build", "--segmentation", str(data / "segmentation.json"),
                "--cse-mesh", str(data / "mesh.pkl"), "--out", str(parts))  # fmt: skip
    n = args.shards * args.samples_per_shard
    size_mb = sum(p.stat().st_size for p in (data / "train").glob("*.tar")) / 2**20

    rows = []
    t, _ = timed(plain_copy, data / "train", work / "copy")
    rows.append(("plain tar copy (in-process)", t))
    t, _ = timed(plain_copy, data / "train", work / "copy-fsync", True)
    rows.append(("plain tar copy + fsync per shard", t))
    for workers in (0, args.workers):
        out = work / f"clean-w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t, _ = timed(run_cli, "refine", "--split", "train", "--data-root", str(data),
                     "--out", str(out), "--part-table", str(parts),
                     "--predictions", str(data / "predictions_train.json"),
                     "--workers", str(workers))  # fmt: skip
        rows.append((f"refine --workers {workers}, whole command", t))
        if workers == 0:  # the per-shard work alone: what a 600-shard run is made of
            summary = json.loads((out / "train" / "refine_summary.json").read_text())
            shard_seconds = sum(s["seconds"] for s in summary["shards"])
            rows.append(("refine --workers 0, shard work only", shard_seconds))

    print(f"\n{n} samples in {args.shards} shards ({size_mb:.0f} MiB), work dir {work}")
    copy_rate = n / rows[0][1]
    for name, seconds in rows:
        rate = n / seconds
        print(f"{name:42s} {seconds:7.2f} s  {rate:8.1f} samples/s  ratio {rate / copy_rate:.2f}")
    print("(whole command: Python start-up, imports and loading the predictions included;")
    print(" shard work: the sum of the per-shard times in refine_summary.json)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.estimator:
        print()
        estimator = Path(__file__).with_name("estimator.py")
        subprocess.run([sys.executable, str(estimator), *args.estimator_args.split()], check=True)


if __name__ == "__main__":
    main()
