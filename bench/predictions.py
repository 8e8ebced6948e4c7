"""Benchmark: a split's predictions file at the real size (1,829,496 entries, ~1.0 GiB).

Fabricates COCO results with one entry per train key (keys as in `bench/report.py`, in shard
order, shuffled within each 3,000-key shard; float32 shortest-repr numbers like `fdhclean
estimate` writes), then measures each step in its own subprocess (time, CPU and the child's own
peak RSS from `resource.getrusage`):

- `legacy`: what refine did per process before the store: `json.load` of the whole file plus a
  dict of per-key arrays (the old `load_predictions`), for the "before" figures;
- `import`: the streaming import into the key-sorted parquet store (once per split, ever);
- `open`: opening the store again from the recorded sha256 (what every worker and finalize do);
- `open-hash`: opening it again from the file alone (sha256 of the 1 GiB file, then the cache);
- `lookup`: one shard's 3,000 keys looked up, for 20 shards spread over the split;
- `outside`: finalize's count of stored keys outside the split (1,829,496 split keys);
- `refine` (with `--refine`): `fdhclean refine` of one synthetic shard of `--refine-samples`
  samples whose predictions sit inside the big file, import included, then a second run into a
  new OUT sharing the store (`FDHCLEAN_PREDICTION_STORE`).

    python bench/predictions.py --keep /tmp/pred-bench            # all but legacy and refine
    python bench/predictions.py --keep /tmp/pred-bench --steps legacy
    python bench/predictions.py --keep /tmp/pred-bench --refine --steps refine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TRAIN_ROWS = 1_829_496
PER_SHARD = 3000
FIRST_KEY = 100_000_000
STEPS = ("import", "open", "open-hash", "lookup", "outside")


def fabricate(path: Path, rows: int, seed: int = 0) -> None:
    """One entry per key, written block by block (the bench itself stays small)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write("[")
        for first in range(0, rows, PER_SHARD):
            n = min(PER_SHARD, rows - first)
            keys = FIRST_KEY + first + rng.permutation(n)
            # digits as float32's shortest repr gives (~8 significant): ~0.55 kB per entry
            xy = (rng.random((n, 17, 2)) * [160, 288]).round(5)
            v = rng.random((n, 17, 1)).round(8)
            kps = np.concatenate([xy, v], axis=2).reshape(n, 51)
            parts = []
            for key, row, score in zip(keys.tolist(), kps, v.mean(axis=(1, 2)), strict=True):
                values = ",".join(map(repr, row.tolist()))
                parts.append(
                    f'{{"image_id":{key},"category_id":1,"keypoints":[{values}],'
                    f'"score":{round(float(score), 8)!r}}}'
                )
            f.write(("," if first else "") + ",".join(parts))
        f.write("]")


def child(step: str, path: Path, cache: Path, rows: int) -> dict:
    """One step, in this (child) process."""
    from fdhclean.predictions_store import PredictionStore

    start = time.perf_counter()
    out: dict = {}
    if step == "legacy":
        from fdhclean.estimators.predictions import parse_entry

        with open(path) as f:
            data = json.load(f)
        table = {}
        for i, entry in enumerate(data):
            key, kps, _ = parse_entry(i, entry, path)
            table[str(key)] = kps
        out["keys"] = len(table)
    elif step == "import":
        store = PredictionStore.open(path, cache)
        out["keys"] = len(store)
        out["store_mib"] = round(sum(p.stat().st_size for p in store.directory.iterdir()) / 2**20)
    elif step in ("open", "open-hash"):
        sha = None
        if step == "open":
            sha = json.loads(next(cache.glob("*/store.json")).read_text())["source_sha256"]
        out["keys"] = len(PredictionStore.open(path, cache, sha))
    elif step == "lookup":
        store = PredictionStore(next(cache.glob("*/store.json")).parent)
        shards = np.linspace(0, rows // PER_SHARD - 1, 20).astype(int)
        times = []
        for s in shards.tolist():
            keys = [str(FIRST_KEY + s * PER_SHARD + i) for i in range(PER_SHARD)]
            t = time.perf_counter()
            found, _, _ = store.lookup(keys)
            times.append(time.perf_counter() - t)
            assert found.all()
        out["per_shard_ms"] = round(1000 * float(np.median(times)), 1)
    elif step == "outside":
        store = PredictionStore(next(cache.glob("*/store.json")).parent)
        split = [str(FIRST_KEY + i) for i in range(rows - 1000)]  # 1000 keys "foreign"
        out["outside"] = store.keys_outside(split)
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # this step's peak
    return out


def run_child(step: str, args) -> None:
    command = [sys.executable, __file__, "--child", step, "--keep", str(args.keep)]
    command += ["--rows", str(args.rows)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"{step:10s} wall {wall:6.1f} s (step {result.pop('seconds')} s), CPU {cpu:6.1f} s, "
        f"peak RSS {result.pop('rss_kib') / 2**20:5.2f} GiB  {result}",
        flush=True,
    )


def refine_bench(args) -> None:
    """`fdhclean refine` of one synthetic shard, its predictions inside the 1.83M-entry file."""
    root = args.keep / "synth"
    exe = [sys.executable, "-m", "fdhclean.cli"]
    if not root.is_dir():
        subprocess.run([*exe, "synth", "--out", str(root), "--shards", "1", "--val-shards", "1",
                        "--samples-per-shard", str(args.refine_samples)],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run([*exe, "parts", "build", "--segmentation", str(root / "segmentation.json"),
                        "--cse-mesh", str(root / "mesh.pkl"), "--out", str(root / "parts.npz")],
                       check=True, capture_output=True)  # fmt: skip
    big = args.keep / "refine_predictions.json"
    if not big.is_file():
        own = (root / "predictions_train.json").read_text().strip()
        other = (args.keep / "predictions.json").read_text()  # read once, not timed
        big.write_text(own[:-1] + "," + other[1:])
        del other
    for run, env in (("first (import)", {}), ("second (store)", {})):
        out = args.keep / f"refine-out-{run.split()[0]}"
        env = {**os.environ, "FDHCLEAN_PREDICTION_STORE": str(args.keep / "refine-store")}
        command = ["/usr/bin/time", "-f", "%e s wall, %U+%S s CPU, %M KiB peak", *exe, "refine",
                   "--split", "train", "--data-root", str(root), "--out", str(out),
                   "--part-table", str(root / "parts.npz"), "--predictions", str(big),
                   "--overwrite"]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        print(f"refine {run}: {done.stderr.strip().splitlines()[-1]} (exit {done.returncode})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=TRAIN_ROWS)
    p.add_argument("--keep", type=Path, required=True, help="work directory (reused)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"of legacy,{','.join(STEPS)},refine")
    p.add_argument("--refine-samples", type=int, default=500)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    path, cache = args.keep / "predictions.json", args.keep / "store"
    if args.child:
        print(json.dumps(child(args.child, path, cache, args.rows)))
        return 0
    args.keep.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        start = time.perf_counter()
        fabricate(path, args.rows)
        print(f"fabricated {args.rows} entries, {path.stat().st_size / 2**30:.2f} GiB "
              f"in {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    for step in args.steps.split(","):
        if step == "refine":
            refine_bench(args)
        else:
            run_child(step, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
