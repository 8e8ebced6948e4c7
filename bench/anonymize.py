"""`triagan anonymize` throughput by stage: persons/s and frames/s at 1, 5 and 20 persons per
1280x720 frame (synthetic scenes from `fdhclean synth` figures, random generator weights: speed
does not depend on the weights).

Stages: detect (the `coco` backend decoding RLE masks, or a random-weight Mask R-CNN v2 with
--detector maskrcnn), pose (from-detections: free; an installed backend with --pose/--pose-weights),
crop (boxes, masks, dilation, the small-person fallback), generate (conditioning + G), paste,
encode (libx264 CRF 18 through PyAV, per frame).

    python bench/anonymize.py                                     # CPU, E-tiny at 72x40
    python bench/anonymize.py --device cuda --config E --stage 288x160 --precision bf16
    python bench/anonymize.py --device cuda --config E --stage 288x160 --check-batching
    python bench/anonymize.py --smoke        # 1 person, 1 frame, E-tiny 72x40, CPU (code path)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _scenes():
    """pipelines/anon_scenes.py (registered before it runs: its dataclasses look it up)."""
    if "anon_scenes" not in sys.modules:
        path = ROOT / "pipelines" / "anon_scenes.py"
        spec = importlib.util.spec_from_file_location("anon_scenes", path)
        sys.modules["anon_scenes"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["anon_scenes"])
    return sys.modules["anon_scenes"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--persons", nargs="+", type=int, default=[1, 5, 20])
    p.add_argument("--frames", type=int, default=3, help="timed frames per case")
    p.add_argument("--config", default="E-tiny")
    p.add_argument("--stage", default="72x40")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--detector", default="coco", choices=["coco", "maskrcnn"])
    p.add_argument("--pose", default="from-detections")
    p.add_argument("--pose-weights", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument(
        "--check-batching",
        action="store_true",
        help="also compare batched with one-by-one generation (max grey-level diff)",
    )
    p.add_argument("--json", default=None, help="append one JSON line per case to this file")
    p.add_argument("--smoke", action="store_true", help="E-tiny 72x40, 1-2 persons, 1 frame, CPU")
    args = p.parse_args(argv)
    if args.smoke:
        args.config, args.stage, args.persons, args.frames = "E-tiny", "72x40", [1, 2], 1
        args.device, args.precision = "cpu", "fp32"
    return args


def scene_frames(n_persons: int, n_frames: int):
    """n_frames 1280x720 scenes with n_persons figures each (scales 0.6-1.6, some overlap)."""
    S = _scenes()
    rng = np.random.default_rng(n_persons)
    frames = []
    for f in range(n_frames):
        placements = []
        for i in range(n_persons):
            sp = S.make_sprite(1000 * n_persons + i)
            s = rng.uniform(0.6, 1.6)
            x = int(rng.uniform(-0.05, 0.95) * 1280)
            y = int(720 - sp.rgb.shape[0] * s * rng.uniform(0.8, 1.1))
            placements.append((sp, s, x + 4 * f, y, i))
        frames.append(S.paste_scene(S.background((720, 1280), f), placements))
    return frames


def build(args, tmp: Path):
    import torch

    from triagan_model.anonymize.api import Anonymizer, AnonymizeSettings
    from triagan_model.configs import get_config
    from triagan_model.networks.generator import TriaGANGenerator
    from triagan_model.sampling.truncation import save_centres
    from triagan_model.weights import save_generator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = get_config(args.config).generator_config(args.stage)
    torch.manual_seed(0)
    g = TriaGANGenerator(cfg)
    w = save_generator(g, tmp / "g", config_name=args.config, stage=args.stage)
    with torch.no_grad():
        save_centres(w / "w_centers.safetensors", g.mapping(torch.randn(8, cfg.z_dim)))
    detector = None
    if args.detector == "maskrcnn":
        from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

        m = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
        torch.save(m.state_dict(), tmp / "mrcnn.pth")
        detector = ("torchvision-maskrcnn", str(tmp / "mrcnn.pth"))
    settings = AnonymizeSettings(device=args.device, precision=args.precision,
                                 batch_size=args.batch_size)  # fmt: skip
    return Anonymizer.from_files(str(w), detector=detector, pose=args.pose,
                                 pose_weights=args.pose_weights, settings=settings)  # fmt: skip


def run_case(anon, frames, args) -> dict:
    import av

    from triagan_model.anonymize.compose import Person

    if args.detector == "coco":  # the frames' ground truth as a COCO file: detect = RLE decode
        from triagan_model.anonymize.detectors import CocoDetections

        S = _scenes()
        path = S.write_json(Path(tempfile.mkdtemp()) / "dets.json", S.coco_results("bench", frames))
        anon.detector = CocoDetections(path)
    anon.timings.clear()
    dets = [[Person(m, k) for m, k in zip(s.masks, s.keypoints, strict=True)] for s in frames]
    anon.image(frames[0].image, persons=[Person(p.mask, p.keypoints) for p in dets[0]])  # warm-up
    anon.timings.clear()
    n_persons, t_total = 0, 0.0
    with tempfile.TemporaryDirectory() as d:
        out = av.open(str(Path(d) / "b.mp4"), "w")
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt, vs.options = 1280, 720, "yuv420p", {"crf": "18"}
        for i, (sc, persons) in enumerate(zip(frames, dets, strict=True)):
            t0 = time.perf_counter()
            if anon.detector is not None:
                persons = anon.detect(sc.image, "bench", i)
            res = anon.image(sc.image, persons=persons, key="bench", frame=i)
            _sync(args.device)
            t1 = time.perf_counter()
            vf = av.VideoFrame.from_ndarray(res.image, format="rgb24")
            vf.pts = i
            for p in vs.encode(vf):
                out.mux(p)
            anon.timings["encode"] = anon.timings.get("encode", 0.0) + time.perf_counter() - t1
            t_total += time.perf_counter() - t0
            n_persons += sum(r["status"] != "too-small" for r in res.persons)
        for p in vs.encode(None):
            out.mux(p)
        out.close()
    return {"persons": n_persons, "frames": len(frames), "seconds": t_total,
            "stages": dict(anon.timings)}  # fmt: skip


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def check_batching(anon, frames) -> int:
    """Max |batched - one by one| grey level over the frames (0 for a deterministic G)."""
    from triagan_model.anonymize.compose import Person

    worst = 0
    for sc in frames:
        outs = []
        for bs in (anon.settings.batch_size, 1):
            anon.settings.batch_size = bs
            persons = [Person(m, k) for m, k in zip(sc.masks, sc.keypoints, strict=True)]
            outs.append(anon.image(sc.image, persons=persons, key="b").image.astype(int))
        worst = max(worst, int(np.abs(outs[0] - outs[1]).max()))
        anon.settings.batch_size = max(anon.settings.batch_size, 16)
    return worst


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    stages = ("detect", "pose", "crop", "generate", "paste", "encode")
    with tempfile.TemporaryDirectory() as d:
        anon = build(args, Path(d))
        print(f"# {args.config} @ {args.stage}, {args.device} {args.precision}, batch "
              f"{args.batch_size}, detector {args.detector}, pose {args.pose}, "
              f"{torch.get_num_threads()} CPU threads; 1280x720 frames")  # fmt: skip
        head = ["persons/frame", "frames/s", "persons/s"] + [f"{s} ms/frame" for s in stages]
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for n in args.persons:
            frames = scene_frames(n, args.frames)
            r = run_case(anon, frames, args)
            ms = [1000 * r["stages"].get(s, 0.0) / r["frames"] for s in stages]
            row = [
                f"{n}",
                f"{r['frames'] / r['seconds']:.2f}",
                f"{r['persons'] / r['seconds']:.2f}",
            ]
            print("| " + " | ".join(row + [f"{v:.1f}" for v in ms]) + " |", flush=True)
            diff = check_batching(anon, frames) if args.check_batching else None
            if diff is not None:
                print(f"  batched vs one by one, max grey-level difference: {diff}")
            if args.json:
                _write_json(args, n, r, diff)
    return 0


def _write_json(args, n: int, r: dict, diff: int | None) -> None:
    record = {"part": "anonymize", "config": args.config, "stage": args.stage, "persons": n,
              "device": args.device, "precision": args.precision, "smoke": args.smoke,
              "frames_per_s": round(r["frames"] / r["seconds"], 3),
              "persons_per_s": round(r["persons"] / r["seconds"], 3),
              "batched_vs_sequential_max_grey": diff}  # fmt: skip
    with open(args.json, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    sys.exit(main())
