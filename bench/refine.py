"""Benchmark: is the cleaning work outside the estimator fast enough not to bottleneck a GPU run?

Times, in one run on the same synthetic shards (made by `fdhclean synth`), in CPU time (process
time: user + system, all threads and worker processes) and wall time:
  1. the floor: the project's own reader (`ShardReader`, sha256 of the input while reading) and
     `ShardWriter` (sha256 of the output while writing, fsync) writing the same bytes back:
     what any rewrite of a shard costs at least;
  2. `fdhclean refine` with precomputed predictions (decode the members the vote needs, score,
     vote, write shard + report + marker), in-process and with worker processes, opening a
     prediction store imported once before (the import has its own row: once per split);
and prints samples per CPU-second of each and the ratio refine / floor (target: >= 0.5).
With --estimator it then times the ViTPose estimator against transformers' per-image pipeline
on the same random weights (bench/estimator.py: ViTPose-B at batch 1 and 32 on CPU; with a GPU,
pass e.g. `--estimator-args "--variant huge --batch 64 --images 2048 --workers 8"`).

    python bench/refine.py                        # 2 shards x 3,000 samples (FDH's shard size)
    python bench/refine.py --shards 4 --samples-per-shard 500 --workers 2   # quicker

The per-shard figures (`shard work`) are what a real split is made of: a refine process
pays its fixed cost (start-up, imports, opening the store, finalize; printed below) once,
however many of the ~610 shards of the train split it cleans.
"""

from __future__ import annotations

import argparse
import json
import os
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


def read_only(src_dir: Path, hash_: bool) -> int:
    """The reader alone (what refine's read costs), with or without the streaming sha256."""
    from fdhclean.shards import ShardReader

    return sum(
        1 for shard in sorted(src_dir.glob("out-*.tar")) for _ in ShardReader(shard, hash=hash_)
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for descendants included
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args) -> tuple[float, float, object]:
    """(wall s, CPU s of this process and the children it waited for, result)."""
    cpu, children, wall = time.process_time(), _children_cpu(), time.perf_counter()
    result = fn(*args)
    cpu_used = time.process_time() - cpu + _children_cpu() - children
    return time.perf_counter() - wall, cpu_used, result


FLOOR = "floor: ShardReader + ShardWriter, fsync"
WHOLE = "refine --workers 0, whole command"
SHARD_WORK = "refine --workers 0, shard work only"


STORE_ENV = "FDHCLEAN_PREDICTION_STORE"


def import_predictions(data: Path, store_root: Path) -> None:
    """The once-per-split import of the COCO results into a prediction store (its own row:
    a real split imports once for all its ~610 shards, ranks and workers; the rounds below
    reuse it through $FDHCLEAN_PREDICTION_STORE, as every later run of the split does)."""
    shutil.rmtree(store_root, ignore_errors=True)
    code = (
        "from pathlib import Path; from fdhclean.predictions_store import PredictionStore; "
        f"PredictionStore.open(Path({str(data / 'predictions_train.json')!r}), "
        f"Path({str(store_root)!r}))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def measure_round(data: Path, parts: Path, work: Path, workers: int) -> dict[str, tuple]:
    """One round: the floor and refine at --workers 0 and N, back to back, so that the load of
    a shared machine weighs on all of them alike. name -> (wall s, CPU s)."""
    # every timed writer starts from an empty output directory: replacing an earlier
    # run's files would charge the floor for freeing their pages, and not refine
    shutil.rmtree(work / "floor", ignore_errors=True)
    row = {FLOOR: timed(floor_copy, data / "train", work / "floor")[:2]}
    row["predictions import (once per split)"] = timed(
        import_predictions, data, work / "prediction-store"
    )[:2]
    for hash_ in (True, False):
        row[f"reader only, sha256 {'on' if hash_ else 'off'}"] = timed(
            read_only, data / "train", hash_
        )[:2]
    for n_workers in (0, workers):
        out = work / f"clean-w{n_workers}"
        shutil.rmtree(out, ignore_errors=True)
        row[WHOLE if n_workers == 0 else f"refine --workers {n_workers}, whole command"] = timed(
            run_cli, "refine", "--split", "train", "--data-root", str(data), "--out", str(out),
            "--part-table", str(parts), "--predictions", str(data / "predictions_train.json"),
            "--workers", str(n_workers),
        )[:2]  # fmt: skip
        if n_workers == 0:  # the per-shard work alone: what a 600-shard run is made of
            summary = json.loads((out / "train" / "refine_summary.json").read_text())
            shards = summary["shards"]
            cpu = (
                sum(s["cpu_seconds"] for s in shards)
                if all("cpu_seconds" in s for s in shards)
                else float("nan")
            )
            row[SHARD_WORK] = (sum(s["seconds"] for s in shards), cpu)
    return row


def print_rounds(rounds: list[dict[str, tuple]], n: int) -> None:
    """Best (least) CPU of each row over the rounds, its rate and ratio to the best floor, and
    the range of the ratio measured within one round."""
    print(
        f"{'':42s} {'wall s':>7s} {'CPU s':>7s} {'samples/CPU-s':>14s} {'vs floor':>8s}  per round"
    )
    floor = min(r[FLOOR][1] for r in rounds)
    for name in rounds[0]:
        wall = min(r[name][0] for r in rounds)
        cpu = min(r[name][1] for r in rounds)
        ratios = [r[FLOOR][1] / r[name][1] for r in rounds]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{name:42s} {wall:7.2f} {cpu:7.2f} {n / cpu:14.1f} {floor / cpu:8.2f}  {spread}")
    fixed = min(r[WHOLE][1] - r[SHARD_WORK][1] for r in rounds)
    shard_work = min(r[SHARD_WORK][1] for r in rounds)
    print(f"fixed cost of one refine process (whole command - shard work): {fixed:.2f} CPU-s,")
    print(f" {100 * fixed / shard_work:.0f} % of these {n} samples' shard work; a process that")
    print(" cleans k shards of a real split pays it once")
    print(f"(best of {len(rounds)} rounds; CPU: process time, user + system, worker processes")
    print(" included; whole command: Python start-up, imports and opening the prediction")
    print(" store included, its import not (its own row, once per split); shard work:")
    print(" per-shard times in refine_summary.json, CPU where refine records `cpu_seconds`)")


def run_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fdhclean.cli", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--samples-per-shard", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2, help="refine --workers for run 3")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best of each row")
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

    floor_copy(data / "train", work / "floor")  # warms the page cache: every round reads from it
    os.environ[STORE_ENV] = str(work / "prediction-store")  # (inherited by the refine runs)
    rounds = [measure_round(data, parts, work, args.workers) for _ in range(args.repeat)]
    print(f"\n{n} samples in {args.shards} shards ({size_mb:.0f} MiB), work dir {work}")
    print_rounds(rounds, n)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.estimator:
        print()
        estimator = Path(__file__).with_name("estimator.py")
        subprocess.run([sys.executable, str(estimator), *args.estimator_args.split()], check=True)


if __name__ == "__main__":
    main()
