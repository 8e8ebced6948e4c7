"""The one table of `bench/gpu.sh`: every figure its parts wrote, beside the issue's targets.

Reads DIR/results.jsonl (one JSON line per figure, from the benches' `--json`, plus one
`{"part": "_status", ...}` line per part from gpu.sh), DIR/pytest.xml (junit) and
DIR/refine_util.csv (nvidia-smi samples: utilisation %, memory MiB). Targets (issue 11, item
6), for an H100-class GPU: ViTPose-H with the flip test >= 983 images/s (50 % of a 990 TFLOP/s
bf16 peak at 503.3 GFLOP per flip-tested image; the 1,829,496-image train split in <= 31 min),
and refine end to end keeping up with that rate. In a --smoke run (CPU, tiny models) no
verdict is given.

    python bench/gpu_table.py DIR
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

VITPOSE_TARGET = 983.0  # images/s, ViTPose-H with the flip test
PAPER_G_ANCHOR = 25.0  # Config E images/s at batch 1 on an RTX 3090 (triagan-spec)


def _verdict(value: float, target: float, smoke: bool) -> str:
    if smoke:
        return "n/a (smoke)"
    return "PASS" if value >= target else "FAIL"


def vitpose_rows(r: dict) -> list[list[str]]:
    flip = "on" if r["flip"] else "off"
    case = f"ViTPose-{r['variant'][0].upper()} {r['path']}, batch {r['batch']}, flip {flip}"
    case += f", {r['dtype']}" + (f", --workers {r['workers']}" if r["path"] == "samples" else "")
    target, verdict = "-", ""
    if r["flip"] and r["variant"] in ("huge", "tiny"):
        target = f">= {VITPOSE_TARGET:.0f}"
        verdict = _verdict(r["images_per_s"], VITPOSE_TARGET, r["smoke"])
    return [["vitpose", case, f"{r['images_per_s']:.1f} images/s", target, verdict]]


def _mean_util(path: Path) -> str:
    if not path.is_file():
        return "n/a (no nvidia-smi)"
    values = []
    for line in path.read_text().splitlines():
        token = line.strip().split(",")[0].strip().rstrip("%").strip()
        if token.isdigit():
            values.append(int(token))
    if not values:
        return "n/a (no samples)"
    busy = [v for v in values if v > 0]
    return f"mean {sum(values) / len(values):.0f} %, {len(busy)}/{len(values)} samples busy"


def _peak_memory(path: Path, workers: int) -> str:
    """The most GPU memory in use (nvidia-smi's second column, MiB) and its share per model
    replica (each refine worker holds one)."""
    if not path.is_file():
        return "n/a (no nvidia-smi)"
    peaks = []
    for line in path.read_text().splitlines():
        fields = line.split(",")
        token = fields[1].strip().removesuffix("MiB").strip() if len(fields) > 1 else ""
        if token.isdigit():
            peaks.append(int(token))
    if not peaks:
        return "n/a (no samples)"
    return f"peak {max(peaks)} MiB, {max(peaks) / max(1, workers):.0f} MiB per worker's replica"


def refine_rows(r: dict, out: Path) -> list[list[str]]:
    """Whole command on all shards, and the steady rate: (all - first round) samples over
    (all - first round) seconds, which cancels the start-up both runs pay (a round: one shard
    per worker)."""
    whole = r["samples"] / r["seconds"]
    extra_s = r["seconds"] - r["seconds_1"]
    steady = (r["samples"] - r["samples_1"]) / extra_s if extra_s > 0 else float("nan")
    where = f"--workers {r['workers']}, {r['device']}"
    target = f">= {VITPOSE_TARGET:.0f}"
    return [
        ["refine", f"whole command, {r['samples']} samples, {where}",
         f"{whole:.1f} samples/s ({r['seconds']:.1f} s)", "-", ""],
        ["refine", f"steady rate ({r['samples']} minus {r['samples_1']} samples), {where}",
         f"{steady:.1f} samples/s ({extra_s:.1f} s)", target,
         _verdict(steady, VITPOSE_TARGET, r["smoke"])],
        ["refine", "GPU utilisation during the whole-command run",
         _mean_util(out / "refine_util.csv"), "-", ""],
        ["refine", "GPU memory during the whole-command run",
         _peak_memory(out / "refine_util.csv", r["workers"]), "-", ""],
    ]  # fmt: skip


def generator_rows(r: dict) -> list[list[str]]:
    case = f"Config {r['config']} G {r['stage']} batch {r['batch']} {r['mode']} {r['dtype']}"
    target, verdict = "-", ""
    if r["batch"] == 1 and r["stage"] == "288x160":
        target = f">= {PAPER_G_ANCHOR:.0f} (paper, RTX 3090)"
        verdict = _verdict(r["images_per_s"], PAPER_G_ANCHOR, r["smoke"])
    return [["generator", case, f"{r['images_per_s']:.1f} images/s", target, verdict]]


def train_rows(r: dict) -> list[list[str]]:
    case = f"Config {r['config']} train step {r['stage']} batch {r['batch']} {r['mode']}"
    return [["train step", f"{case} {r['amp']}", f"{r['images_per_s']:.1f} images/s", "-", ""]]


def anonymize_rows(r: dict) -> list[list[str]]:
    case = f"{r['config']} {r['stage']} {r['precision']}, {r['persons']} persons/frame"
    rate = f"{r['persons_per_s']:.1f} persons/s, {r['frames_per_s']:.2f} frames/s"
    rows = [["anonymize", case, rate, "-", ""]]
    diff = r.get("batched_vs_sequential_max_grey")
    if diff is not None:
        verdict = "PASS" if diff <= 1 else "FAIL"
        rows.append(["anonymize", f"{case}: batched vs sequential", f"max {diff} grey levels",
                     "<= 1", verdict])  # fmt: skip
    return rows


def pytest_rows(out: Path) -> list[list[str]]:
    path = out / "pytest.xml"
    if not path.is_file():
        return [["pytest", "gpu tests", "no junit file (did not run)", "all pass", "FAIL"]]
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    figure = f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped"
    ok = n["failures"] + n["errors"] == 0 and passed > 0
    return [["pytest", "gpu tests (tests/test_gpu.py and any `gpu` mark)", figure, "all pass",
             "PASS" if ok else "FAIL"]]  # fmt: skip


def status_rows(r: dict) -> list[list[str]]:
    if r["rc"] == 0:
        return []
    if r["rc"] < 0:  # gpu.sh did not start it
        return [[r["name"], "part not run", "the 8-minute budget was spent", "-", "FAIL"]]
    why = "timed out" if r["rc"] in (124, 137) else f"exit {r['rc']}"
    return [[r["name"], "part did not finish", f"{why} after {r['seconds']:.0f} s (see log)",
             "-", "FAIL"]]  # fmt: skip


def table(out: Path) -> list[list[str]]:
    records = []
    results = out / "results.jsonl"
    if results.is_file():
        records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    rows = pytest_rows(out)
    makers = {"vitpose": vitpose_rows, "generator": generator_rows, "train_step": train_rows,
              "anonymize": anonymize_rows, "_status": status_rows}  # fmt: skip
    for r in records:
        rows += refine_rows(r, out) if r["part"] == "refine" else makers[r["part"]](r)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python bench/gpu_table.py RESULTS_DIR (what bench/gpu.sh wrote)")
        return 2
    rows = table(Path(argv[0]))
    head = ["part", "case", "measured", "target", "verdict"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
