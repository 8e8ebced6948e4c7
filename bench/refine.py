"""Benchmark: is the cleaning work outside the estimator fast enough not to bottleneck a GPU run?

Times, in one run on the same synthetic shards (made by `fdhclean synth`), in CPU time (process
time: user + system, all threads and worker processes) and wall time:
  1. the floor: the project's own reader (`ShardReader`, sha256 of the input while reading) and
     `ShardWriter` (sha256 of the output while writing, fsync) writing the same bytes back:
     what any rewrite of a shard costs at least;
  2. `fdhclean refine` with precomputed predictions (decode the members the vote needs, score,
     vote, write shard + report + marker), in-process and with worker processes;
and prints samples per CPU-second of each and the ratio refine / floor (target: >= 0.5).
With --estimator it then times the ViTPose estimator against transformers' per-image pipeline
on the same random weights (bench/estimator.py: ViTPose-B at batch 1 and 32 on CPU; with a GPU,
pass e.g. `--estimator-args "--variant huge --batch 64 --images 2048 --workers 8"`).

    python bench/refine.py                        # 4 shards x 500 samples
    python bench/refine.py --shards 8 --samples-per-shard 500 --workers 2
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def floor_copy(src_dir: Path, dst_dir: Path) -> int:
    """Read every sample of every shard and write it back with the project's own reader and
    writer (hashing both while the bytes pass, fsync on close): the floor of any rewrite."""
    from fdhclean.shards import ShardReader, ShardWriter

    dst_dir.mkdir(parents=True, exist_ok=True)
    samples = 0
    for shard in sorted(src_dir.glob("out-*.tar")):
        reader = ShardReader(shard)
        with ShardWriter(dst_dir / shard.name) as writer:
            for raw in reader:
                writer.write(raw.key, raw.members)
                samples += 1
        assert reader.sha256 == writer.sha256, f"{shard}: the copy differs"  # same bytes
    return samples


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for descendants included
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args) -> tuple[float, float, object]:
    """(wall s, CPU s of this process and the children it waited for, result)."""
    cpu, children, wall = time.process_time(), _children_cpu(), time.perf_counter()
    result = fn(*args)
    cpu_used = time.process_time() - cpu + _children_cpu() - children
    return time.perf_counter() - wall, cpu_used, result


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

    rows = []  # (name, wall s, CPU s)
    wall, cpu, _ = timed(floor_copy, data / "train", work / "floor")  # also warms the page cache
    wall, cpu, _ = timed(floor_copy, data / "train", work / "floor")
    rows.append(("floor: ShardReader + ShardWriter, fsync", wall, cpu))
    for workers in (0, args.workers):
        out = work / f"clean-w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        wall, cpu, _ = timed(run_cli, "refine", "--split", "train", "--data-root", str(data),
                             "--out", str(out), "--part-table", str(parts),
                             "--predictions", str(data / "predictions_train.json"),
                             "--workers", str(workers))  # fmt: skip
        rows.append((f"refine --workers {workers}, whole command", wall, cpu))
        if workers == 0:  # the per-shard work alone: what a 600-shard run is made of
            summary = json.loads((out / "train" / "refine_summary.json").read_text())
            shard_wall = sum(s["seconds"] for s in summary["shards"])
            shard_cpu = sum(s.get("cpu_seconds", float("nan")) for s in summary["shards"])
            rows.append(("refine --workers 0, shard work only", shard_wall, shard_cpu))

    print(f"\n{n} samples in {args.shards} shards ({size_mb:.0f} MiB), work dir {work}")
    floor_rate = n / rows[0][2]
    print(f"{'':42s} {'wall s':>7s} {'CPU s':>7s} {'samples/CPU-s':>14s} {'vs floor':>8s}")
    for name, wall, cpu in rows:
        rate = n / cpu
        print(f"{name:42s} {wall:7.2f} {cpu:7.2f} {rate:14.1f} {rate / floor_rate:8.2f}")
    print("(CPU: process time, user + system, worker processes included; whole command: Python")
    print(" start-up, imports and loading the predictions included; shard work: the per-shard")
    print(" times in refine_summary.json, CPU where refine records `cpu_seconds`, else nan)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.estimator:
        print()
        estimator = Path(__file__).with_name("estimator.py")
        subprocess.run([sys.executable, str(estimator), *args.estimator_args.split()], check=True)


if __name__ == "__main__":
    main()
