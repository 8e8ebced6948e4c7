"""Paint a human-like figure: a per-pixel part label map, its image, masks and keypoints.

The figure is a stick skeleton with random limb angles, scale, lean and position, fleshed out
with capsules and ellipses labelled by SMPL part (fdh.PART_NAMES indices). Everything else is
derived from the label map: E_mask (label >= 0), the person masks (body plus hair) and the
ground-truth keypoints, which are snapped onto a pixel of an accepted part (refine-spec
section 2) with the project's pixel rule px = floor(x), py = floor(y) in pixel units.
Drawing works on the bounding box of each primitive, so one figure costs about a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fdhclean.fdh import COCO_KEYPOINTS, IMAGE_H, IMAGE_W, PART_NAMES

H, W = IMAGE_H, IMAGE_W
BACKGROUND = -1
P = {name: i for i, name in enumerate(PART_NAMES)}

# refine-spec section 2, left side; the right side is the mirror. Kept here rather than imported
# so the generator stays an independent ground truth for the code it tests.
_LEFT_RULES = {
    "shoulder": ("Shoulder", "Arm"),
    "elbow": ("Arm", "ForeArm"),
    "wrist": ("ForeArm", "Hand", "HandIndex1"),
    "hip": ("hips", "UpLeg"),
    "knee": ("UpLeg", "Leg"),
    "ankle": ("Leg", "Foot", "ToeBase"),
}


def _accepted(keypoint: str) -> tuple[str, ...]:
    if keypoint == "nose" or keypoint.endswith(("_eye", "_ear")):
        return ("head",)
    side, joint = keypoint.split("_", 1)
    return tuple(p if p == "hips" else side + p for p in _LEFT_RULES[joint])


ACCEPTED_PARTS: dict[str, tuple[str, ...]] = {k: _accepted(k) for k in COCO_KEYPOINTS}
# Boolean (17, 24): ACCEPTED[k, p] = keypoint k may land on part p.
ACCEPTED = np.array([[n in ACCEPTED_PARTS[k] for n in PART_NAMES] for k in COCO_KEYPOINTS])
SNAP_RADIUS_PX = 4  # a joint hidden by another limb moves at most this far, else it is v = 0
SUBPIXEL_MARGIN = 0.15  # keypoints stay this far inside their pixel (units round-trips exact)


@dataclass(frozen=True)
class Figure:
    """One painted figure: labels (H, W) int8 part index or -1, hair (H, W) bool, joints."""

    labels: np.ndarray
    hair: np.ndarray
    joints: np.ndarray  # float64 (17, 2) pixel positions before snapping, COCO order
    scale: float
    facing_camera: bool


def _grid(y0: float, y1: float, x0: float, x1: float):
    """Pixel-centre coordinates of the in-image part of a box, and its slices (None if empty)."""
    r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)) + 1, H)
    c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)) + 1, W)
    if r0 >= r1 or c0 >= c1:
        return None
    ys = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5
    return (slice(r0, r1), slice(c0, c1)), ys, xs


def _capsule(canvas: np.ndarray, a, b, radius: float, value) -> None:
    """Set pixels within `radius` of segment a-b (points as (x, y)) to `value`."""
    (ax, ay), (bx, by) = a, b
    g = _grid(
        min(ay, by) - radius, max(ay, by) + radius, min(ax, bx) - radius, max(ax, bx) + radius
    )
    if g is None:
        return
    sl, ys, xs = g
    dx, dy = bx - ax, by - ay
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    inside = (xs - ax - t * dx) ** 2 + (ys - ay - t * dy) ** 2 <= radius * radius
    canvas[sl][inside] = value


def _ellipse(canvas: np.ndarray, c, rx: float, ry: float, angle: float, value) -> None:
    r = max(rx, ry)
    g = _grid(c[1] - r, c[1] + r, c[0] - r, c[0] + r)
    if g is None:
        return
    sl, ys, xs = g
    cos, sin = np.cos(angle), np.sin(angle)
    u = (xs - c[0]) * cos + (ys - c[1]) * sin
    v = -(xs - c[0]) * sin + (ys - c[1]) * cos
    canvas[sl][(u / rx) ** 2 + (v / ry) ** 2 <= 1.0] = value


def _torso(labels: np.ndarray, pelvis, neck, hip_half: float, chest_half: float) -> None:
    """Trapezoid from below the pelvis to the neck, banded hips/spine/spine1/spine2 upwards."""
    axis = np.subtract(neck, pelvis)
    length = float(np.hypot(*axis))
    u = axis / length
    n = np.array([-u[1], u[0]])
    ext = max(hip_half, chest_half) + 1
    lo = np.asarray(pelvis) - 0.15 * axis
    pts = np.array([lo + n * ext, lo - n * ext, np.asarray(neck) + n * ext, neck - n * ext])
    g = _grid(pts[:, 1].min(), pts[:, 1].max(), pts[:, 0].min(), pts[:, 0].max())
    if g is None:
        return
    sl, ys, xs = g
    t = ((xs - pelvis[0]) * u[0] + (ys - pelvis[1]) * u[1]) / length
    s = (xs - pelvis[0]) * n[0] + (ys - pelvis[1]) * n[1]
    half = hip_half + (chest_half - hip_half) * np.clip(t, 0.0, 1.0)
    inside = (t >= -0.15) & (t <= 1.0) & (np.abs(s) <= half)
    band = np.digitize(t, [0.2, 0.47, 0.74])  # hips | spine | spine1 | spine2
    part = np.array([P["hips"], P["spine"], P["spine1"], P["spine2"]], dtype=np.int8)[band]
    view = labels[sl]
    view[inside] = part[inside]


def _direction(angle_deg: float, outward: float) -> np.ndarray:
    """Unit vector `angle_deg` away from straight down, rotated towards image side `outward`."""
    a = np.deg2rad(angle_deg)
    return np.array([outward * np.sin(a), np.cos(a)])


def _rotate(point, centre, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    d = np.asarray(point, dtype=np.float64) - centre
    return centre + np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])


def _limb(root, angles, lengths, outward: float) -> list[np.ndarray]:
    """Joint chain after `root`; each segment's angle adds to the previous one's."""
    points, total = [np.asarray(root, dtype=np.float64)], 0.0
    for angle, length in zip(angles, lengths, strict=True):
        total += angle
        points.append(points[-1] + length * _direction(total, outward))
    return points[1:]


def _side(labels, rng, side: str, outward: float, shoulder, hip, s: float) -> dict[str, tuple]:
    """Draw one side's legs and arms; returns its joints {name: (x, y)}."""
    thigh_a, knee_b = rng.uniform(-10, 40), rng.uniform(-35, 12)
    knee, ankle = _limb(hip, [thigh_a, knee_b], [0.24 * s, 0.23 * s], outward)
    # Feet point at the camera, so they show short and turned outwards.
    toe_start, toe_end = _limb(ankle, [rng.uniform(25, 80), 0.0], [0.06 * s, 0.03 * s], outward)
    _capsule(labels, hip, knee, 0.05 * s, P[side + "UpLeg"])
    _capsule(labels, knee, ankle, 0.04 * s, P[side + "Leg"])
    _capsule(labels, ankle, toe_start, 0.03 * s, P[side + "Foot"])
    _capsule(labels, toe_start, toe_end, 0.025 * s, P[side + "ToeBase"])
    upper_a = rng.uniform(-20, 140)
    elbow_b = rng.uniform(0, 120) * rng.choice([-1.0, 1.0])
    elbow, wrist, hand_end, finger_end = _limb(
        shoulder,
        [upper_a, elbow_b, rng.uniform(-20, 20), rng.uniform(-15, 15)],
        [0.16 * s, 0.14 * s, 0.05 * s, 0.035 * s],
        outward,
    )
    _ellipse(labels, shoulder, 0.045 * s, 0.045 * s, 0.0, P[side + "Shoulder"])
    _capsule(labels, shoulder, elbow, 0.032 * s, P[side + "Arm"])
    _capsule(labels, elbow, wrist, 0.027 * s, P[side + "ForeArm"])
    _capsule(labels, wrist, hand_end, 0.028 * s, P[side + "Hand"])
    _capsule(labels, hand_end, finger_end, 0.016 * s, P[side + "HandIndex1"])
    return {"shoulder": shoulder, "elbow": elbow, "wrist": wrist, "hip": hip, "knee": knee,
            "ankle": ankle}  # fmt: skip


def draw_figure(rng: np.random.Generator) -> Figure:
    """A random pose; 80 % face the camera (the subject's left on the image's right)."""
    s = rng.uniform(150.0, 290.0)  # figure height in pixels: tall ones leave the frame
    facing = bool(rng.random() < 0.8)
    left = 1.0 if facing else -1.0  # image x direction of the subject's left
    top = rng.uniform(-0.08 * s, max(H - 0.9 * s, -0.08 * s + 1.0))
    pelvis = np.array([rng.uniform(0.35 * W, 0.65 * W), top + 0.475 * s])
    lean = np.deg2rad(rng.uniform(-10.0, 10.0))
    up = lambda dx, dy: _rotate(pelvis + np.array([dx, dy]) * s, pelvis, lean)  # noqa: E731
    neck, head = up(0.0, -0.30), up(0.0, -0.41)
    labels = np.full((H, W), BACKGROUND, dtype=np.int8)
    hair = np.zeros((H, W), dtype=bool)
    _torso(labels, pelvis, neck, 0.085 * s, 0.12 * s)
    _capsule(labels, neck, up(0.0, -0.36), 0.032 * s, P["neck"])
    _ellipse(hair, up(0.0, -0.435), 0.062 * s, 0.06 * s, lean, True)
    _ellipse(labels, head, 0.055 * s, 0.07 * s, lean, P["head"])
    joints = {}
    for side, outward in (("left", left), ("right", -left)):
        shoulder = up(outward * 0.11, -0.275)
        hip = pelvis + np.array([outward * 0.06, 0.02]) * s
        for name, point in _side(labels, rng, side, outward, shoulder, hip, s).items():
            joints[f"{side}_{name}"] = point
        joints[f"{side}_eye"] = up(outward * 0.022, -0.42)
        joints[f"{side}_ear"] = up(outward * 0.047, -0.41)
    joints["nose"] = up(0.0, -0.395)
    points = np.array([joints[k] for k in COCO_KEYPOINTS], dtype=np.float64)
    return Figure(labels, hair, points, float(s), facing)


def ground_truth_keypoints(figure: Figure, rng: np.random.Generator) -> np.ndarray:
    """(17, 3) float64 pixel (x, y, v): each joint on a pixel of an accepted part, or v = 0.

    A joint whose pixel shows another part (a limb in front) moves to the nearest accepted
    pixel within SNAP_RADIUS_PX; joints outside the frame or fully hidden are v = 0 at (0, 0),
    as in COCO. Sub-pixel offsets stay SUBPIXEL_MARGIN inside the pixel.
    """
    out = np.zeros((len(COCO_KEYPOINTS), 3))
    labels, r, m = figure.labels, SNAP_RADIUS_PX, SUBPIXEL_MARGIN
    for k, (x, y) in enumerate(figure.joints):
        if not (0.0 <= x < W and 0.0 <= y < H):
            continue
        px, py = int(x), int(y)
        r0, c0 = max(py - r, 0), max(px - r, 0)
        window = labels[r0 : py + r + 1, c0 : px + r + 1]
        ok = (window >= 0) & ACCEPTED[k][np.maximum(window, 0)]
        if not ok.any():
            continue
        if ok[py - r0, px - c0]:
            fx, fy = np.clip([x - px, y - py], m, 1.0 - m)
        else:
            rows, cols = np.nonzero(ok)
            d2 = (r0 + rows + 0.5 - y) ** 2 + (c0 + cols + 0.5 - x) ** 2
            best = int(np.argmin(d2))
            py, px = r0 + int(rows[best]), c0 + int(cols[best])
            fx, fy = 0.5 + rng.uniform(-0.3, 0.3, size=2)
        out[k] = (px + fx, py + fy, 2.0)
    return out
