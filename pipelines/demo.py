"""The whole project in a few minutes on a CPU: clean a synthetic FDH set, then train TriA-GAN.

    python pipelines/demo.py --out /tmp/triagan-demo

1. `fdhclean synth`: a small synthetic FDH dataset (train + val) with recorded corruptions and
   "estimated" keypoints (COCO results) standing in for ViTPose;
2. `fdhclean parts build`: the CSE vertex -> body part table;
3. `fdhclean refine` on train and val with those predictions: cleaned shards + manifests;
4. `fdhclean report` and `fdhclean inspect`: what the cleaning changed, with a contact sheet;
   `fdhclean register`: the cleaned manifests under OUT/data_manifests (paths relative to
   FDH_ROOT=OUT);
5. `triagan train` with pipelines/demo_tiny.toml (a TINY config, NOT the paper's model) over
   two progressive stages 18x10 -> 36x20 on OUT/clean/train/manifest.json;
6. `triagan generate` on the cleaned val manifest: a grid of generated samples;
7. `triagan clusters` + `triagan anonymize` (pipelines/anon_demo.py): a synthetic multi-person
   scene and clip with COCO annotations, anonymised with the tiny generator, and a before |
   after picture.
Every step is a CLI call through subprocess, so the two packages stay separate. Rerunning with
the same --out resumes/skips finished steps. Exit status: non-zero as soon as a step fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def step(title: str, module: str, *args: str, check: bool = True) -> int:
    cmd = [sys.executable, "-m", module, *args]
    print(f"\n== {title}\n$ {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.run(cmd, check=False).returncode
    print(f"-- {title}: exit {rc} in {time.monotonic() - t0:.1f} s", flush=True)
    if check and rc != 0:
        raise SystemExit(f"demo: step '{title}' failed with exit status {rc}")
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default=str(HERE / "demo_tiny.toml"), help="training config")
    p.add_argument("--samples-per-shard", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    out = Path(args.out).resolve()
    synth, clean, run = out / "synth", out / "clean", out / "run"
    start = time.monotonic()
    fd, tg = "fdhclean.cli", "triagan_model.cli"
    if not (synth / "synth.json").is_file():
        per_shard = str(args.samples_per_shard)
        step("synthetic FDH", fd, "synth", "--out", str(synth), "--shards", "2",
             "--samples-per-shard", per_shard, "--seed", str(args.seed))  # fmt: skip
    if not (synth / "parts.npz").is_file():
        step("part table", fd, "parts", "build", "--segmentation", str(synth / "segmentation.json"),
             "--cse-mesh", str(synth / "mesh.pkl"), "--out", str(synth / "parts.npz"))  # fmt: skip
    for split in ("train", "val"):
        step(f"refine {split}", fd, "refine", "--split", split, "--data-root", str(synth),
             "--out", str(clean), "--part-table", str(synth / "parts.npz"),
             "--predictions", str(synth / f"predictions_{split}.json"))  # fmt: skip
    for split in ("train", "val"):
        step(f"report {split}", fd, "report", str(clean), "--split", split)
    step("contact sheet", fd, "inspect", str(clean), "--split", "val", "--where",
         "updated", "--limit", "8", "--out", str(out / "contact_sheet.png"))  # fmt: skip
    os.environ["FDH_ROOT"] = str(out)  # registered paths are relative to the data root
    for split in ("train", "val"):
        step(f"register {split}", fd, "register", str(clean), "--split", split, "--name",
             "synthetic-demo", "--manifests-dir", str(out / "data_manifests"))  # fmt: skip
    step("train", tg, "train", "--config", args.config, "--manifest",
         str(clean / "train" / "manifest.json"), "--run-dir", str(run), "--device", "cpu",
         "--workers", "0", "--tick-kimg", "0.004", "--snapshot-ticks", "4", "--image-ticks", "4",
         "--grid-size", "6", "--seed", str(args.seed))  # fmt: skip
    stages = sorted(
        (d for d in run.iterdir() if (d / "stage-complete.json").is_file()),
        key=lambda d: int(d.name.split("x")[0]),
    )  # by height: "144x80" after "72x40"
    if not stages:
        raise SystemExit(f"demo: no completed training stage in {run}")
    last = stages[-1]
    samples = out / "samples"
    step("generate", tg, "generate", "--weights", str(last / "weights"), "--manifest",
         str(clean / "val" / "manifest.json"), "--out", str(samples), "--num", "8",
         "--device", "cpu")  # fmt: skip
    from anon_demo import run as anonymise_demo  # pipelines/ is this script's directory

    anon_rows = anonymise_demo(out / "anonymize", last / "weights")
    print(f"\n== demo done in {time.monotonic() - start:.0f} s. Outputs:")
    rows = [("cleaned train manifest", clean / "train" / "manifest.json"),
            ("cleaned val manifest", clean / "val" / "manifest.json"),
            ("cleaning report (parquet)", clean / "train" / "report"),
            ("cleaning summary", clean / "train" / "summary.json"),
            ("cleaning plots", clean / "train" / "plots"),
            ("contact sheet (updated val samples)", out / "contact_sheet.png"),
            ("registered manifests", out / "data_manifests" / "synthetic-demo"),
            ("run record (manifest sha256)", run / "run.json")]  # fmt: skip
    for d in stages:
        rows += [(f"{d.name} loss plot", d / "loss.png"),
                 (f"{d.name} training grid (condition | generated | real)",
                  d / "images" / "samples-final.png"),
                 (f"{d.name} EMA generator weights", d / "weights")]  # fmt: skip
    rows += [
        (
            "val samples grid (original | condition | generated)",
            samples / "grids" / "grid-0000.png",
        ),
        ("val samples index", samples / "index.json"),
    ] + anon_rows
    for what, path in rows:
        print(f"  {what}: {path}{'' if path.exists() else '  (missing!)'}")
    print("NOTE: a TINY test config with random feature networks: NOT the paper's model.")
    return 0 if all(path.exists() for _, path in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
