"""`triagan anonymize`: replace every person in images, folders and videos."""

from __future__ import annotations

import argparse
import json
import os
import sys

DESCRIPTION = """\
Replace every person in images, folders (mirrored into --out, resumed by rerunning) and videos
with a synthetic person in the same pose, made by a TriA-GAN generator (a weights directory from
`triagan train` or `triagan import-dp2`). Pixels outside the dilated person masks never change.
Every person gets a report row (OUT/report/persons/persons-RANK.parquet): anonymized, held (video
hold-over) or too-small (obscured by --small-person, never left untouched silently).

Detections: --detections FILE.json (COCO results or annotations, file_name relative to the
input root, `frame` for videos) or --detector torchvision-maskrcnn --detector-weights FILE.
Keypoints: --pose from-detections | none | an installed backend (vitpose-hf, vitpose-mmpose,
with --pose-weights). Identity: one latent per person (image) or track (video), from --seed.
Truncation: psi (--truncation, default 0) toward the nearest w centre (--clusters, or
G_DIR/w_centers.safetensors); without centres at psi 0 the run is refused (exit 2).

Rerunning the same command resumes; an --out made with other settings is refused unless
--overwrite (which redoes every file); an output never replaces an input.

exit status: 0 all done; 1 some input failed (named in the report, the rest done); 2 a
configuration error (missing weights or centres, sha256 mismatch, bad flag, --out holding
other settings or an input, bf16 without CUDA).

examples:
  triagan anonymize photo.jpg --out anon/ --weights W --detections dets.json --clusters C
  triagan anonymize photos/ --out anon/ --weights W --detector torchvision-maskrcnn \\
      --detector-weights maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth --pose vitpose-hf \\
      --pose-weights vitpose-h-coco-hf --clusters C
  triagan anonymize clip.mp4 --out anon/ --weights W --detections dets.json --keep-audio
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("anonymize", help="anonymise persons in images, folders, videos",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image, video or directory")
    p.add_argument("--out", required=True, help="output directory (mirrors the inputs)")
    p.add_argument("--weights", required=True, help="generator weights directory")
    g = p.add_argument_group("detection and keypoints")
    g.add_argument("--detector", choices=("coco", "torchvision-maskrcnn"), default=None)
    g.add_argument("--detections", help="COCO detections JSON (the coco detector)")
    g.add_argument("--detector-weights", help="Mask R-CNN v2 state dict (local file)")
    g.add_argument("--detector-sha256", help="expected sha256 (prefix) of --detector-weights")
    g.add_argument(
        "--detector-min-size",
        type=int,
        default=800,
        help="Mask R-CNN input short side (torchvision's min_size)",
    )
    g.add_argument(
        "--detector-max-persons",
        type=int,
        default=100,
        help="Mask R-CNN detections per image (torchvision's box_detections_per_img)",
    )
    g.add_argument(
        "--max-res",
        type=int,
        default=None,
        help="shrink the Mask R-CNN input to this longer side (outputs keep their size)",
    )
    g.add_argument("--score-threshold", type=float, default=0.3)
    g.add_argument("--pose", default="auto", help="from-detections | none | installed backend")
    g.add_argument("--pose-weights", help="the pose backend's checkpoint (local)")
    g.add_argument("--keypoint-threshold", type=float, default=0.3)
    s = p.add_argument_group("synthesis")
    s.add_argument("--truncation", type=float, default=0.0, help="psi (default 0)")
    s.add_argument("--multi-modal", choices=("auto", "on", "off"), default="auto")
    s.add_argument("--clusters", help="w centres from `triagan clusters`")
    s.add_argument(
        "--centre-rule",
        choices=("nearest", "index"),
        default="nearest",
        help="nearest centre (paper) or hash(identity) %% K (DP2)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-box-area", type=int, default=32 * 32)
    s.add_argument(
        "--small-person", choices=("blur", "pixelate", "maskout", "keep"), default="blur"
    )
    s.add_argument(
        "--crop-interpolation",
        choices=("reference", "padded"),
        default="reference",
        help="NEAREST vs BICUBIC chosen on the box clamped to the image (DP2) or on "
        "the padded crop (differs only for boxes leaving the image)",
    )
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    s.add_argument("--device", default="auto")
    s.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default; 1 is far faster on a shared CPU)",
    )
    v = p.add_argument_group("video and files")
    v.add_argument("--track-iou", type=float, default=0.3)
    v.add_argument("--hold-frames", type=int, default=2)
    v.add_argument("--codec", choices=("libx264", "mpeg4", "ffv1"), default="libx264")
    v.add_argument("--crf", type=int, default=18)
    v.add_argument("--keep-audio", action="store_true", help="copy the audio (default: drop)")
    v.add_argument("--keep-metadata", action="store_true", help="keep EXIF minus GPS")
    v.add_argument("--jpeg-quality", type=int, default=95)
    v.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)))
    v.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    v.add_argument("--overwrite", action="store_true",
                   help="redo every file of an --out made with other settings")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings")
    p.set_defaults(func=run)


def _fail(msg: str) -> int:
    print(f"triagan anonymize: error: {msg}", file=sys.stderr)
    return 2


def _detector(args) -> tuple[str, str]:
    from triagan_model.anonymize.identity import ConfigError

    kind = args.detector or ("coco" if args.detections else "torchvision-maskrcnn")
    path = args.detections if kind == "coco" else args.detector_weights
    if not path:
        flag = "--detections" if kind == "coco" else "--detector-weights"
        raise ConfigError(f"the {kind} detector needs {flag} FILE")
    return kind, path


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.rank < args.world_size:
        return _fail(f"--rank {args.rank} is not in [0, --world-size {args.world_size})")
    import warnings

    import torch

    from triagan_model.anonymize.api import Anonymizer, AnonymizeSettings
    from triagan_model.anonymize.identity import ConfigError
    from triagan_model.anonymize.pose import PoseError
    from triagan_model.devices import resolve_device

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    settings = AnonymizeSettings(
        truncation=args.truncation, multi_modal=args.multi_modal, clusters=args.clusters,
        centre_rule=args.centre_rule, seed=args.seed, score_threshold=args.score_threshold,
        keypoint_threshold=args.keypoint_threshold, min_box_area=args.min_box_area,
        small_person=args.small_person, batch_size=args.batch_size, precision=args.precision,
        device=device, track_iou=args.track_iou, hold_frames=args.hold_frames,
        crop_interpolation=args.crop_interpolation)  # fmt: skip
    warnings.simplefilter("default")
    try:
        detector = _detector(args)
        pose = _pose_name(args, detector)
        anon = Anonymizer.from_files(args.weights, detector=detector, pose=pose,
                                     pose_weights=args.pose_weights, settings=settings,
                                     detector_sha256=args.detector_sha256,
                                     detector_min_size=args.detector_min_size,
                                     detector_max_persons=args.detector_max_persons,
                                     max_res=args.max_res)  # fmt: skip
        return _run_files(args, anon)
    except (ConfigError, PoseError) as exn:
        return _fail(str(exn))


def _pose_name(args, detector) -> str:
    if args.pose != "auto":
        return args.pose
    if detector[0] == "coco":
        from triagan_model.anonymize.detectors import CocoDetections

        return "from-detections" if CocoDetections(detector[1]).has_keypoints else "none"
    return "vitpose-hf"


def _run_files(args, anon) -> int:
    import time
    from pathlib import Path

    from triagan_model.anonymize.identity import ConfigError
    from triagan_model.anonymize.runner import _done as done_marker
    from triagan_model.anonymize.runner import collect, fingerprint, process_file, write_reports
    from triagan_model.provenance import git_commit

    out = Path(args.out)
    items = collect(args.inputs, out)
    names = getattr(anon.detector, "file_names", lambda: set())()
    unknown = sorted(names - {it.rel for it in items})
    if unknown:
        raise ConfigError(f"{args.detections} names images that are not among the inputs: "
                          f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}; file_name must be "
                          "relative to the input root (for a single file: its name)")  # fmt: skip
    opts = {"codec": args.codec, "crf": args.crf, "keep_audio": args.keep_audio,
            "keep_metadata": args.keep_metadata, "jpeg_quality": args.jpeg_quality}  # fmt: skip
    resolved = {**anon.settings_dict(), **opts, "provenance": anon.provenance}
    fp = fingerprint({k: v for k, v in resolved.items() if k != "device"})
    if args.dry_run:
        print(json.dumps({**resolved, "fingerprint": fp, "inputs": len(items)}, indent=2,
                         default=str))  # fmt: skip
        return 0
    mine = items[args.rank :: args.world_size]
    run_doc = {"settings": resolved, "fingerprint": fp, "commit": git_commit(),
               "world_size": args.world_size}  # fmt: skip
    from triagan_model.atomic import atomic_path

    _claim(out, run_doc, args.overwrite)
    with atomic_path(out / "run.json") as tmp:
        Path(tmp).write_text(json.dumps(run_doc, indent=2, default=str) + "\n")
    t0, docs, new, skipped = time.perf_counter(), [], [], 0
    for it in mine:
        doc = done_marker(out, it, fp)
        if doc is None:
            doc = process_file(anon, it, out, fp, opts)
            new.append(doc)
            if doc["file"]["status"] == "failed":
                print(f"triagan anonymize: {it.path}: {doc['file']['error']}", file=sys.stderr)
        else:
            skipped += 1
        docs.append(doc)
    summary = write_reports(out, docs, args.rank, args.world_size, time.perf_counter() - t0,
                            new=new)  # fmt: skip
    print(f"anonymised {len(mine) - skipped} file(s), {skipped} already done; files "
          f"{summary['files']}, persons {summary['persons']}\noutputs: {out}\n"
          f"report: {out}/report/persons, {out}/report/files")  # fmt: skip
    return 1 if summary["files"].get("failed") else 0


def _claim(out, run_doc: dict, overwrite: bool) -> None:
    """Refuse an --out made with other settings unless --overwrite (as `fdhclean refine`):
    resuming it would mix outputs of two configurations."""
    from triagan_model.anonymize.identity import ConfigError

    path = out / "run.json"
    if overwrite or not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except ValueError:
        return  # an unreadable record protects nothing; the markers still decide per file
    if previous.get("fingerprint") in (None, run_doc["fingerprint"]):
        return
    old, new = previous.get("settings", {}), json.loads(json.dumps(run_doc["settings"],
                                                                   default=str))  # fmt: skip
    changed = [k for k in sorted(set(old) | set(new)) if k != "device" and old.get(k) != new.get(k)]
    raise ConfigError(f"{out} holds a run made with other settings (changed: "
                      f"{', '.join(changed) or 'provenance'}); use a new --out, or --overwrite "
                      "to redo every file with the new settings")  # fmt: skip
