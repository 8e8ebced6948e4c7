"""The demo's anonymisation part: a synthetic multi-person scene and a short synthetic clip,
made on the spot from `fdhclean synth` figures with COCO annotations (RLE masks, keypoints)
written beside them, anonymised by `triagan anonymize` with the demo's tiny generator.

    python pipelines/anon_demo.py --out OUT/anonymize --weights OUT/run/36x20/weights

Called by pipelines/demo.py after training. The tiny generator is NOT the paper's model: the
synthetic persons are blobs; the point is the pipeline (boxes, masks, identities, tracking,
report, video I/O). Writes OUT/before_after.png (scene and clip frames, before | after).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anon_scenes as S  # noqa: E402


def _step(title: str, *args: str) -> None:
    cmd = [sys.executable, "-m", "triagan_model.cli", *args]
    print(f"\n== {title}\n$ {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.run(cmd, check=False).returncode
    print(f"-- {title}: exit {rc} in {time.monotonic() - t0:.1f} s", flush=True)
    if rc != 0:
        raise SystemExit(f"demo: step '{title}' failed with exit status {rc}")


def make_inputs(inp: Path, seed: int = 0) -> Path:
    """OUT/in/scene.png, OUT/in/clip.mkv (FFV1 + audio) and OUT/detections.json."""
    scene = S.still_scene((540, 960), seed=seed)
    inp.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.image).save(inp / "scene.png")
    clip = S.moving_clip(n_frames=12, seed=seed)
    S.write_video(inp / "clip.mkv", [s.image for s in clip], fps=8, audio=True)
    dets = S.coco_results("scene.png", [scene]) + S.coco_results("clip.mkv", clip)
    return S.write_json(inp.parent / "detections.json", dets)


def before_after(inp: Path, out: Path, dst: Path) -> Path:
    """Scene before | after, above three clip frames before | after."""
    import av

    rows = [np.concatenate([np.asarray(Image.open(d / "scene.png").convert("RGB"))
                            for d in (inp, out)], 1)]  # fmt: skip
    frames = []
    for d in (inp, out):
        with av.open(str(d / "clip.mkv")) as c:
            frames.append([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    picks = [0, len(frames[0]) // 2, len(frames[0]) - 1]
    strip = np.concatenate([np.concatenate([frames[0][i], frames[1][i]], 1) for i in picks], 0)
    width = rows[0].shape[1]
    scale = width / strip.shape[1]
    strip = np.asarray(Image.fromarray(strip).resize((width, round(strip.shape[0] * scale))))
    Image.fromarray(np.concatenate([rows[0], strip], 0)).save(dst)
    return dst


def run(out: Path, weights: Path) -> list[tuple[str, Path]]:
    """Make the inputs, the w centres, anonymise; the (what, path) rows the demo prints."""
    inp, res = out / "in", out / "out"
    dets = make_inputs(inp)
    centres = out / "centres.safetensors"
    if not centres.is_file():
        _step("w centres (multi-modal truncation)", "clusters", "--weights", str(weights),
              "--num-centres", "8", "--num-samples", "2000", "--out", str(centres),
              "--device", "cpu")  # fmt: skip
    # one thread: on a loaded 2-core machine two intra-op threads made this step 8x slower
    _step("anonymize a scene and a clip", "anonymize", str(inp), "--out", str(res),
          "--weights", str(weights), "--detections", str(dets), "--clusters", str(centres),
          "--device", "cpu", "--keep-audio", "--threads", "1")  # fmt: skip
    picture = before_after(inp, res, out / "before_after.png")
    return [("anonymize: input scene and clip (+ COCO detections)", inp),
            ("anonymize: outputs", res),
            ("anonymize: per-person report (parquet)", res / "report" / "persons"),
            ("anonymize: summary", res / "summary.json"),
            ("anonymize: before | after picture", picture)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--weights", required=True, type=Path, help="generator weights directory")
    args = p.parse_args(argv)
    rows = run(args.out.resolve(), args.weights)
    for what, path in rows:
        print(f"  {what}: {path}{'' if path.exists() else '  (missing!)'}")
    return 0 if all(path.exists() for _, path in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
