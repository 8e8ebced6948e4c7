"""Benchmark: report, export and inspect on a report the size of a full FDH train run.

Fabricates `OUT/train/report/out-%06d.parquet` (3000 rows per file, like the 610 train shards;
1,829,496 rows) with the real schema (`fdhclean.refine.report.REPORT_SCHEMA`, zstd, random but
consistent values: correct masks within considered masks, fracs from the masks, 0.5 % error
rows with null scores, about 65 % updated) and a `run.json`, then times as subprocesses
(Python start-up and imports included), each with its wall time, CPU time and peak RSS
(`/usr/bin/time`): `fdhclean report` (with plots), `fdhclean export --format dp2-json` and
`--format coco`, and inspect's selection (`select_rows` + `with_keypoints` of a `--where`
query; the contact sheet itself needs the cleaned shards, which a fabricated report has not).

    python bench/report.py                       # 1,829,496 rows in a temporary directory
    python bench/report.py --rows 300000 --keep /tmp/report-bench
    python bench/report.py --keep /tmp/report-bench --steps report,dp2-json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRAIN_ROWS = 1_829_496


def fabricate_file(path: Path, first: int, rows: int, rng: np.random.Generator) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fdhclean.refine.report import REPORT_SCHEMA

    ok = rng.random(rows) > 0.005
    considered = {s: rng.integers(0, 1 << 17, rows) | 0x1F for s in ("orig", "new")}
    correct = {s: considered[s] & rng.integers(0, 1 << 17, rows) for s in considered}
    count = {
        k: np.bitwise_count(v)
        for k, v in {**considered, **{"c" + s: correct[s] for s in correct}}.items()
    }
    frac = {s: count["c" + s] / count[s] for s in ("orig", "new")}
    updated = ok & (rng.random(rows) < 0.65)
    tie = ok & (rng.random(rows) < 0.02)

    def nullable(values):
        return pa.array(values, mask=~ok)

    def keypoints(v_column):
        kp = rng.random((rows, 17, 3), dtype=np.float32)
        kp[..., 2] = v_column
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * 51)
        return pa.ListArray.from_arrays(offsets, pa.array(kp.reshape(-1)), mask=pa.array(~ok))

    boxes = np.sort(rng.integers(0, 160, (rows, 4)), axis=1)
    columns = {
        "key": pa.array([str(100_000_000 + first + i) for i in range(rows)]),
        "shard": pa.array([path.with_suffix(".tar").name] * rows),
        "index": pa.array(np.arange(rows, dtype=np.int32)),
        "status": pa.array(np.where(ok, "ok", "no-estimate")),
        "error": pa.array([None if o else "no prediction for this key" for o in ok], pa.string()),
        "updated": pa.array(updated),
        "tie": pa.array(tie),
        "orig_correct": nullable(count["corig"]),
        "orig_considered": nullable(count["orig"]),
        "orig_correct_mask": nullable(correct["orig"]),
        "orig_considered_mask": nullable(considered["orig"]),
        "new_correct": nullable(count["cnew"]),
        "new_considered": nullable(count["new"]),
        "new_correct_mask": nullable(correct["new"]),
        "new_considered_mask": nullable(considered["new"]),
        "orig_frac": nullable(frac["orig"]),
        "new_frac": nullable(frac["new"]),
        "orig_keypoints": keypoints(np.float32(2.0)),
        "new_keypoints": keypoints(rng.random((rows, 17), dtype=np.float32)),
        "box": pa.ListArray.from_arrays(
            pa.array(np.arange(rows + 1, dtype=np.int32) * 4), pa.array(boxes.reshape(-1))
        ),
        "box_source": pa.array(np.where(rng.random(rows) < 0.999, "e_mask", "mask")),
        "keypoint_units": pa.array(["normalized"] * rows),
    }
    arrays = [columns[f.name].cast(f.type) for f in REPORT_SCHEMA]
    table = pa.Table.from_arrays(arrays, schema=REPORT_SCHEMA)
    pq.write_table(table, path, compression="zstd")


def fabricate(out: Path, rows: int, per_file: int, seed: int = 0) -> Path:
    report = out / "train" / "report"
    report.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index, first in enumerate(range(0, rows, per_file)):
        fabricate_file(report / f"out-{index:06d}.parquet", first, min(per_file, rows - first), rng)
    return out


def timed(name: str, command: list[str]) -> None:
    """Run `command` under /usr/bin/time; print wall, CPU and peak RSS."""
    fmt = "%e %U %S %M"
    env = {**os.environ, "COLUMNS": "100"}
    done = subprocess.run(["/usr/bin/time", "-f", fmt, *command], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        print(f"{name}: exit {done.returncode}: {done.stderr.strip()[-500:]}", flush=True)
        return
    wall, user, system, kib = done.stderr.strip().splitlines()[-1].split()
    print(
        f"{name}: {float(wall):.1f} s wall, {float(user) + float(system):.1f} s CPU, "
        f"peak RSS {int(kib) / 2**20:.2f} GiB",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=TRAIN_ROWS)
    p.add_argument("--rows-per-file", type=int, default=3000)
    p.add_argument("--keep", type=Path, help="fabricate into (or reuse) this directory")
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each command")
    p.add_argument("--steps", default="report,dp2-json,coco,inspect")
    args = p.parse_args(argv)
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="report-bench-")
        out = Path(tmp.name)
    else:
        out = args.keep
    report = out / "train" / "report"
    start = time.perf_counter()
    if not report.is_dir():
        fabricate(out, args.rows, args.rows_per_file)
        print(f"fabricated {args.rows} rows in {time.perf_counter() - start:.1f} s", flush=True)
    size = sum(f.stat().st_size for f in report.iterdir()) / 2**20
    print(f"report: {len(list(report.iterdir()))} files, {size:.0f} MiB")

    run_json = out / "train" / "run.json"
    if not run_json.is_file():  # what export reads: the threshold the vote used
        run_json.write_text(json.dumps({"settings": {"new_min_score": 0.3}}))
    exe = str(Path(sys.executable).with_name("fdhclean"))
    select = (
        "import sys; from pathlib import Path; "
        "from fdhclean.inspect.select import select_rows, with_keypoints; "
        "split = Path(sys.argv[1]); "
        "frame = select_rows(split, where='updated and new_frac - orig_frac > 0.3', limit=16); "
        "print(len(with_keypoints(split, frame)), 'samples selected')"
    )
    steps = {
        "report": [exe, "report", str(out), "--split", "train"],
        "dp2-json": [exe, "export", str(out), "--split", "train", "--format", "dp2-json",
                     "--out", str(out / "fdh_keypoints_train.json")],
        "coco": [exe, "export", str(out), "--split", "train", "--format", "coco",
                 "--out", str(out / "coco_train.json")],
        "inspect": [sys.executable, "-c", select, str(out / "train")],
    }  # fmt: skip
    for name in filter(None, args.steps.split(",")):
        for i in range(args.repeat):
            timed(f"{name} (run {i + 1})", steps[name])
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
