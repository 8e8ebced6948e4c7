"""Synthetic multi-person scenes and clips with ground truth, for the anonymiser's tests, demo
and benchmark: `fdhclean synth` figures (painted bodies with exact masks and keypoints) scaled
and pasted in painter's order on a textured background; the masks after occlusion, the
visible keypoints and the expected statuses are the ground truth, written as COCO annotations
(RLE masks, keypoints) so that `triagan anonymize --detections` runs end to end.
This glue imports both packages (pipelines/ may); neither package imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fdhclean.synth.body import draw_figure, ground_truth_keypoints
from fdhclean.synth.paint import paint_image


@dataclass
class Sprite:
    rgb: np.ndarray  # (h, w, 3) uint8, cropped to the figure
    mask: np.ndarray  # (h, w) bool
    keypoints: np.ndarray  # (17, 3) pixels in the sprite, v in {0, 2}


@dataclass
class Scene:
    image: np.ndarray
    masks: list[np.ndarray] = field(default_factory=list)  # after occlusion, paste order
    keypoints: list[np.ndarray] = field(default_factory=list)  # (17, 3) frame pixels, v 0/2
    ids: list[int] = field(default_factory=list)  # person identity (stable across frames)


def make_sprite(seed: int) -> Sprite:
    rng = np.random.default_rng(seed)
    fig = draw_figure(rng)
    kp = ground_truth_keypoints(fig, rng)
    rgb = paint_image(fig, rng)
    mask = (fig.labels >= 0) | fig.hair
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    kp = kp.copy()
    kp[:, 0] -= x0
    kp[:, 1] -= y0
    return Sprite(rgb[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1].copy(), kp)


def background(hw: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(60, 190, 3).astype(np.float32)
    field_ = base + 40 * np.sin(xx[..., None] / rng.uniform(20, 60) + rng.uniform(0, 6, 3))
    field_ += 25 * np.cos(yy[..., None] / rng.uniform(15, 40) + rng.uniform(0, 6, 3))
    return np.clip(field_, 0, 255).astype(np.uint8)


def paste_scene(image: np.ndarray, placements: list[tuple[Sprite, float, int, int, int]]) -> Scene:
    """Paste (sprite, scale, x, y, id) in order (later in front); returns the ground truth."""
    img = image.copy()
    h, w = img.shape[:2]
    scene = Scene(img)
    for sprite, scale, x, y, pid in placements:
        sh = max(1, round(sprite.rgb.shape[0] * scale))
        sw = max(1, round(sprite.rgb.shape[1] * scale))
        rgb = np.asarray(Image.fromarray(sprite.rgb).resize((sw, sh), Image.NEAREST))
        m = np.asarray(Image.fromarray(sprite.mask).resize((sw, sh), Image.NEAREST))
        full = np.zeros((h, w), bool)
        y0, x0 = max(0, y), max(0, x)
        y1, x1 = min(h, y + sh), min(w, x + sw)
        if y1 <= y0 or x1 <= x0:
            continue
        full[y0:y1, x0:x1] = m[y0 - y : y1 - y, x0 - x : x1 - x]
        img[full] = rgb[y0 - y : y1 - y, x0 - x : x1 - x][m[y0 - y : y1 - y, x0 - x : x1 - x]]
        for prev in scene.masks:  # occlusion: the new person hides the ones behind
            prev &= ~full
        kp = sprite.keypoints.copy()
        kp[:, :2] = kp[:, :2] * scale + (x, y)
        scene.masks.append(full)
        scene.keypoints.append(kp)
        scene.ids.append(pid)
    for m, kp in zip(scene.masks, scene.keypoints, strict=True):
        for k in range(17):
            px, py = int(kp[k, 0]), int(kp[k, 1])
            if not (kp[k, 2] > 0 and 0 <= px < w and 0 <= py < h and m[py, px]):
                kp[k] = 0  # outside the frame or hidden: not visible (COCO)
    keep = [i for i, m in enumerate(scene.masks) if m.any()]
    scene.masks = [scene.masks[i] for i in keep]
    scene.keypoints = [scene.keypoints[i] for i in keep]
    scene.ids = [scene.ids[i] for i in keep]
    return scene


STILL_SCALES = (1.6, 1.0, 0.5, 0.25, 1.2, 0.1)  # the last is too small for the generator


def still_scene(hw: tuple[int, int] = (540, 960), seed: int = 0,
                scales: tuple[float, ...] = STILL_SCALES) -> Scene:  # fmt: skip
    """Figures at `scales` spread over the frame, some overlapping."""
    rng = np.random.default_rng(seed)
    h, w = hw
    placements = []
    for i, s in enumerate(scales):
        sp = make_sprite(seed * 100 + i)
        x = int((i + 0.3) * w / (len(scales) + 0.5) + rng.uniform(-0.05, 0.05) * w)
        y = int(h - sp.rgb.shape[0] * s - rng.uniform(0, 0.15) * h)
        placements.append((sp, s, x, y, i))
    return paste_scene(background(hw, seed), placements)


def rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}


def coco_results(name: str, scenes: list[Scene], drop: set[tuple[int, int]] = frozenset(),
                 keypoints: bool = True) -> list[dict]:  # fmt: skip
    """COCO results entries for the frames of `name`; `drop` = {(frame, person id)} deleted."""
    out = []
    for f, sc in enumerate(scenes):
        for m, kp, pid in zip(sc.masks, sc.keypoints, sc.ids, strict=True):
            if (f, pid) in drop:
                continue
            e = {"file_name": name, "frame": f, "category_id": 1, "score": 0.99,
                 "segmentation": rle(m)}  # fmt: skip
            if keypoints:
                e["keypoints"] = [float(v) for v in kp.ravel()]
            out.append(e)
    return out


def write_json(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def moving_clip(n_frames: int = 18, hw: tuple[int, int] = (180, 400), seed: int = 0,
                velocities=((10, 0), (-10, 0), (0, 0)), starts=None) -> list[Scene]:  # fmt: skip
    """Figures moving at constant `velocities` (px/frame) from `starts`: by default the first
    two cross in the middle of the clip, the third stands at the right edge."""
    h, w = hw
    sprites = [make_sprite(seed * 10 + i) for i in range(len(velocities))]
    starts = starts or [(40, 20), (w - 130, 25), (w - 50, 10)]
    bg = background(hw, seed)
    frames = []
    for f in range(n_frames):
        placements = []
        for i, (sp, (vx, vy)) in enumerate(zip(sprites, velocities, strict=True)):
            x0, y0 = starts[i % len(starts)]
            placements.append((sp, 0.55, int(x0 + vx * f), int(y0 + vy * f), i))
        frames.append(paste_scene(bg, placements))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10, audio: bool = False,
                codec: str = "ffv1") -> Path:  # fmt: skip
    """A video file of the frames (lossless FFV1 in .mkv by default), optional sine audio."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height = frames[0].shape[1], frames[0].shape[0]
        vs.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        a = out.add_stream("pcm_s16le" if path.suffix == ".mkv" else "aac", rate=8000) \
            if audio else None  # fmt: skip
        if a is not None:
            a.layout = "mono"
        for i, fr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(fr, format="rgb24")
            vf.pts = i
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        if a is not None:
            n = int(8000 * len(frames) / fps)
            t = np.arange(n) / 8000
            samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)[None]
            af = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            af.sample_rate, af.pts = 8000, 0
            for p in a.encode(af):
                out.mux(p)
            for p in a.encode(None):
                out.mux(p)
    return path
