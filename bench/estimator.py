"""Benchmark: the batched ViTPose estimator against transformers' own per-image pipeline.

Same random-init weights, same crops (synthetic FDH samples, person box from E_mask):
  - library: `VitPoseImageProcessor` + `VitPoseForPoseEstimation` + `post_process_pose_estimation`,
    one image at a time (the way its documentation runs it);
  - ours: `fdhclean.estimators` vitpose-hf at batch 1 and at a large batch, flip test off (the
    library has none) and on (what refine runs), through `estimate_samples` (crop workers).
Prints images/s of each. On CPU the default is ViTPose-B (hidden 768, 12 layers); with a GPU,
`--variant huge --batch 64` is the paper's ViTPose-H in bf16 (the full 1.83M-image train split
in well under an hour needs > 510 images/s).

Then the CPU stages without a model (what crop/decode workers do per person): the official
cv2.warpAffine crop reproduced in numpy vs transformers' scipy crop, the three decodings, and
`estimate_boxes`-style cropping of P persons from one 1280x720 frame (no frame copy) against
copying the frame per person as `estimate` on stacked copies needs (peak traced memory).

    python bench/estimator.py                                   # ViTPose-B, CPU, 64 images
    python bench/estimator.py --stages-only                     # the model-free stages only
    python bench/estimator.py --reference   # each decoding/crop against the official vectors
    python bench/estimator.py --variant huge --device cuda --batch 64 --images 2048 --workers 8
    python bench/estimator.py --variant huge --device cuda --batches 32 64 128 --no-library \
        --no-stages --model-rate --dtype bf16 --json out.jsonl   # what bench/gpu.sh runs
    python bench/estimator.py --smoke                # tiny model, CPU, one iteration of each
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {  # hidden size, layers, heads, MLP ratio: the ViTPose backbones
    "tiny": (64, 2, 4, 4),  # not a ViTPose model: --smoke's stand-in, to exercise the code path
    "base": (768, 12, 12, 4),
    "huge": (1280, 32, 16, 4),
}


def make_model(variant: str, path: Path) -> None:
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    hidden, layers, heads, ratio = VARIANTS[variant]
    backbone = VitPoseBackboneConfig(hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, mlp_ratio=ratio,
                                     out_indices=[layers])  # fmt: skip
    config = VitPoseConfig(backbone_config=backbone, use_simple_decoder=False, num_labels=17)
    torch.manual_seed(0)
    VitPoseForPoseEstimation(config).eval().save_pretrained(path)


def samples(n: int, work: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(key, image, box) of n synthetic FDH samples."""
    from fdhclean.estimators.inputs import decode_for_pose, pose_members
    from fdhclean.shards import read_shard

    per_shard = max(8, min(n, 256))  # beyond 256 the same crops repeat: speed is what counts
    subprocess.run([sys.executable, "-m", "fdhclean.cli", "synth", "--out", str(work / "data"),
                    "--shards", "1", "--samples-per-shard", str(per_shard)],
                   check=True, capture_output=True)  # fmt: skip
    raw = read_shard(work / "data" / "val" / "out-000000.tar")[:n]
    items = [(s.key, *decode_for_pose(pose_members(s.find, s.get))) for s in raw]
    return [items[i % len(items)] for i in range(n)]


def library_rate(path: Path, items, device: str) -> float:
    from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor

    model = VitPoseForPoseEstimation.from_pretrained(path, local_files_only=True).to(device)
    proc = VitPoseImageProcessor()
    start = time.perf_counter()
    for _, image, (x0, y0, x1, y1) in items:
        boxes = [[[x0, y0, x1 - x0, y1 - y0]]]  # box numbers unchanged (official frame)
        inputs = proc(images=[image], boxes=boxes, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model(**inputs)
        proc.post_process_pose_estimation(out, boxes=boxes)
    return len(items) / (time.perf_counter() - start)


_LOADED: dict[tuple, object] = {}


def _estimator(path: Path, device: str, batch: int, flip: bool, dtype: str = "auto"):
    """One load per (weights, device, dtype): ViTPose-H is 2.5 GB, and loading it for each
    batch size and flip setting would cost more than timing them. Batch size and flip test are
    plain attributes of the vitpose-hf backend, read at each call."""
    from fdhclean.estimators import build_estimator

    key = (str(path), device, dtype)
    if key not in _LOADED:
        _LOADED[key] = build_estimator("vitpose-hf", checkpoint=path, device=device,
                                       batch_size=batch, flip_test=flip, dtype=dtype)  # fmt: skip
    est = _LOADED[key]
    est.batch_size, est.flip_test = batch, flip
    return est


def our_rate(path: Path, items, device: str, batch: int, flip: bool, workers: int,
             dtype: str = "auto") -> float:  # fmt: skip
    from fdhclean.estimators import estimate_samples

    est = _estimator(path, device, batch, flip, dtype)
    if device.startswith("cuda"):  # CUDA context, autotuning, allocator growth: start-up costs
        for _ in estimate_samples(est, items[:batch], batch_size=batch, progress=False):
            pass
    start = time.perf_counter()
    for _ in estimate_samples(est, items, batch_size=batch, workers=workers, progress=False):
        pass
    return len(items) / (time.perf_counter() - start)


def model_rate(path: Path, items, device: str, batch: int, flip: bool, dtype: str,
               iters: int) -> float:  # fmt: skip
    """The model alone (`predict_heatmaps`: host->device copy, forward(s), heatmaps back to the
    host) on one prepared batch, repeated: the GPU's ceiling, without cropping or decoding."""
    est = _estimator(path, device, batch, flip, dtype)
    prepared = [est.preprocess(image, box) for _, image, box in items[:batch]]
    x = np.stack([prepared[i % len(prepared)][0] for i in range(batch)])
    est.predict_heatmaps(x)  # warm-up (heatmaps come back to the host: an implicit sync)
    start = time.perf_counter()
    for _ in range(iters):
        est.predict_heatmaps(x)
    return batch * iters / (time.perf_counter() - start)


def estimate_rate(path: Path, items, device: str, batch: int, flip: bool, dtype: str) -> float:
    """`estimate` (stacked images, one box each): crop, model and decode in this process.
    That is CPU-bound (~3.5 ms of crop and decode per person), so 512 images give its rate."""
    est = _estimator(path, device, batch, flip, dtype)
    items = items[:512]
    images = np.stack([image for _, image, _ in items])
    boxes = np.stack([np.asarray(box, dtype=np.float64) for _, _, box in items])
    est.estimate(images[:batch], boxes[:batch])  # warm-up
    start = time.perf_counter()
    est.estimate(images, boxes)
    return len(items) / (time.perf_counter() - start)


def _per_call_ms(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return 1e3 * (time.perf_counter() - start) / repeat


def stage_rates(repeat: int = 40) -> list[tuple[str, str]]:
    """Model-free per-person costs and the frame-copy memory of many persons on one frame."""
    import tracemalloc

    from fdhclean.estimators import decoding, topdown

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    meta = topdown.box_meta(np.array([500.0, 200.0, 640.0, 560.0]))
    rows = [
        ("crop, official cv2.warpAffine (numpy)",
         f"{_per_call_ms(lambda: topdown.crop(frame, meta, 'cv2'), repeat):.2f} ms/person"),
        ("crop, transformers (scipy)",
         f"{_per_call_ms(lambda: topdown.crop(frame, meta, 'scipy'), repeat):.2f} ms/person"),
    ]  # fmt: skip
    maps = (rng.random((8, 17, 64, 48)) ** 8).astype(np.float32)
    metas = np.stack([meta] * 8)
    for mode in decoding.DECODINGS:
        ms = _per_call_ms(lambda m=mode: decoding.decode(maps, metas, m), repeat // 4) / 8
        rows.append((f"decode, {mode}", f"{ms:.2f} ms/person"))
    for persons in (1, 5, 20):
        boxes = [topdown.box_meta(np.array([40.0 * i, 10.0, 40.0 * i + 120, 330.0]))
                 for i in range(persons)]  # fmt: skip
        for label, copies in (("estimate_boxes (one frame)", False), ("stacked copies", True)):
            tracemalloc.start()
            stack = np.stack([frame] * persons) if copies else None
            crops = [topdown.crop(stack[i] if copies else frame, b) for i, b in enumerate(boxes)]
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            del stack, crops
            rows.append((f"{persons} persons on 1280x720, {label}", f"peak {peak / 2**20:.1f} MiB"))
    return rows


def reference_table() -> list[tuple[str, str]]:
    """Each decoding mode and crop against shared/data/vitpose_reference_vectors.npz (the
    official ViTPose code's numbers): max |error| in image px by kind of heatmap."""
    from fdhclean.estimators import decoding, topdown

    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    d = np.load(path / "vitpose_reference_vectors.npz")
    metas = np.concatenate([d["center"], d["scale"]], 1)
    avg = (d["heatmaps"] + topdown.unflip_heatmaps(d["heatmaps_flipped"])) * np.float32(0.5)
    flags, positive = d["map_flags"], d["scores"] > 0
    kinds = {"plain": flags == 0, "border": (flags & 1) > 0, "low": ((flags & 2) > 0) & positive}
    kinds |= {"all max > 0": positive, "all": flags >= 0}
    rows = []
    for mode in decoding.DECODINGS:
        err = np.abs(decoding.decode(avg, metas, mode)[..., :2] - d["keypoints"]).max(-1)
        figures = ", ".join(f"{k} {err[m].max():.4g}" for k, m in kinds.items())
        rows.append((f"decoding {mode} (flip test), max px", figures))
    for method in ("cv2", "scipy"):
        diffs = [np.abs(topdown.crop(d["images"][d["image_index"][n]], metas[n], method)
                        .astype(int) - d["crops"][n]) for n in range(len(metas))]  # fmt: skip
        rows.append((f"crop {method}, grey levels",
                     f"mean {np.mean(diffs):.3f}, max {np.max(diffs)}"))  # fmt: skip
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="crop/decode processes (0 on a 2-core CPU, 8+ on a GPU node)",
    )
    parser.add_argument("--stages-only", action="store_true", help="skip the model runs")
    parser.add_argument("--reference", action="store_true", help="only the official-vector table")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes of our runs (default: 1 and --batch)")  # fmt: skip
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="autocast of our runs (auto: bf16 CUDA, fp32 CPU)")  # fmt: skip
    parser.add_argument("--no-library", action="store_true", help="skip the library pipeline")
    parser.add_argument("--no-stages", action="store_true", help="skip the model-free stages")
    parser.add_argument("--model-rate", action="store_true",
                        help="also the model alone and in-process `estimate`")  # fmt: skip
    parser.add_argument("--iters", type=int, default=10, help="batches timed by --model-rate")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="keep the random model here (reused when it exists)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per figure")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, CPU, 8 images: proves the code runs")  # fmt: skip
    args = parser.parse_args(argv)
    if args.smoke:
        args.variant, args.device, args.images, args.iters = "tiny", "cpu", 8, 1
        args.batches, args.no_library, args.no_stages = [2, 4], True, True
    return args


def _record(args, path: str, batch: int, flip: bool, rate: float) -> dict:
    return {"part": "vitpose", "variant": args.variant, "path": path, "batch": batch,
            "flip": flip, "dtype": args.dtype, "device": args.device, "smoke": args.smoke,
            "images": args.images, "workers": args.workers,
            "images_per_s": round(rate, 3)}  # fmt: skip


def _one_rate(args, model: Path, items, path: str, batch: int, flip: bool) -> float:
    if path == "model":
        return model_rate(model, items, args.device, batch, flip, args.dtype, args.iters)
    if path == "estimate":
        return estimate_rate(model, items, args.device, batch, flip, args.dtype)
    return our_rate(model, items, args.device, batch, flip, args.workers, args.dtype)


def model_rows(args, model: Path, items) -> list[tuple[str, float, dict]]:
    """(label, images/s, JSON record) of each of our runs."""
    paths = ("samples", "model", "estimate") if args.model_rate else ("samples",)
    rows = []
    for batch in args.batches or (1, args.batch):
        for flip in (False, True):
            for path in paths:
                rate = _one_rate(args, model, items, path, batch, flip)
                label = f"fdhclean vitpose-hf {path}, batch {batch}, flip test " + (
                    "on" if flip else "off"
                )
                rows.append((label, rate, _record(args, path, batch, flip, rate)))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.reference:
        for name, figure in reference_table():
            print(f"{name:40s} {figure}")
        return
    if args.stages_only:
        for name, figure in stage_rates():
            print(f"{name:48s} {figure}")
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench-estimator-") as tmp:
        work = Path(tmp)
        model = args.model_dir or work / "model"
        if not (model / "config.json").is_file():
            make_model(args.variant, model)
        items = samples(args.images, work)
        device = (
            f"{args.device} ({torch.cuda.get_device_name()})" if args.device == "cuda" else "CPU"
        )
        print(f"ViTPose-{args.variant[0].upper()} random init, {len(items)} images, {device}")
        rows = []
        if not args.no_library:
            rate = library_rate(model, items, args.device)
            rows.append(("library per-image pipeline, batch 1", rate, None))
        rows += model_rows(args, model, items)
        for name, rate, record in rows:
            print(f"{name:56s} {rate:8.2f} images/s", flush=True)
            if args.json and record:
                with args.json.open("a") as f:
                    f.write(json.dumps(record) + "\n")
    if not args.no_stages:
        for name, figure in stage_rates():
            print(f"{name:48s} {figure}")


if __name__ == "__main__":
    main()
