"""The generator's 30-channel conditioning input (triagan-spec "Generator", first bullet).

Channel layout (``CONDITION_CHANNELS``), as the reference's ``TriaGAN.get_input``:

====  =====================================================================
0-2   condition image: ``image * mask`` (image in [-1, 1], unknown region 0)
3, 4  mask, 1 - mask (1 = known background, 0 = region to synthesise)
5, 6  person mask, 1 - person mask (FDH ``maskrcnn_mask``: 1 = not person)
7-23  17 one-hot keypoint maps, COCO order (one pixel per visible keypoint)
24-29 6 one-hot limb maps: head, left arm, right arm, body, left leg, right leg
====  =====================================================================

Pixel rule (the project's, see the spec): a point (x, y) in normalised units (x/W, y/H) lands on
pixel ``(floor(x * W), floor(y * H))`` clamped to the image; the reference rounds instead. With
floor, mirroring x -> 1 - x maps column c to W - 1 - c, so the maps of the horizontally flipped
keypoints (with the left/right swap) equal the flipped maps exactly, which the limb rasteriser
below keeps by rounding symmetrically (exact half-way points set both neighbouring pixels).
A keypoint is visible when v > 0 and 0 <= x, y <= 1 (the reference loader's rule). The virtual
neck (mid-shoulder), mid-hip and mid-eye exist when both parents are visible.
"""

from __future__ import annotations

import torch

NUM_KEYPOINTS = 17
# Copied from fdhclean/fdh.py (the packages never import each other): keypoint row permutation
# for a horizontal flip, COCO order.
COCO_FLIP_PERMUTATION: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
LIMB_NAMES: tuple[str, ...] = ("head", "left_arm", "right_arm", "body", "left_leg", "right_leg")
LIMB_FLIP_PERMUTATION: tuple[int, ...] = (0, 2, 1, 3, 5, 4)
CONDITION_CHANNELS: tuple[str, ...] = (
    ("cond_r", "cond_g", "cond_b", "mask", "1-mask", "person_mask", "1-person_mask")
    + tuple(f"kp{i}" for i in range(NUM_KEYPOINTS))
    + tuple(f"limb_{n}" for n in LIMB_NAMES)
)
NUM_CONDITION_CHANNELS = len(CONDITION_CHANNELS)  # 30

# Virtual points appended after the 17 COCO keypoints: index -> (parent a, parent b).
NECK, MID_HIP, MID_EYE = 17, 18, 19
_VIRTUAL = {NECK: (5, 6), MID_HIP: (11, 12), MID_EYE: (1, 2)}
# (from, to, limb) over the extended points; the reference's InsertJointMap connectivity.
LIMB_SEGMENTS: tuple[tuple[int, int, int], ...] = (
    (0, 1, 0), (0, 2, 0), (0, NECK, 0), (1, 2, 0), (1, 3, 0), (2, 4, 0),  # head
    (5, 7, 1), (7, 9, 1),  # left arm
    (6, 8, 2), (8, 10, 2),  # right arm
    (5, 6, 3), (5, 11, 3), (6, 12, 3), (11, 12, 3), (NECK, MID_HIP, 3),  # body
    (11, 13, 4), (13, 15, 4),  # left leg
    (12, 14, 5), (14, 16, 5),  # right leg
)  # fmt: skip
# Drawn only when the nose is NOT visible (the reference's fallback head line).
FALLBACK_SEGMENT = (MID_EYE, NECK, 0)


def flip_keypoints(keypoints: torch.Tensor) -> torch.Tensor:
    """Keypoints of the horizontally flipped image: x -> 1 - x and the left/right row swap."""
    out = keypoints[..., list(COCO_FLIP_PERMUTATION), :].clone()
    out[..., 0] = 1 - out[..., 0]
    return out


def _extended_points(keypoints: torch.Tensor, hw: tuple[int, int]):
    """Pixel coordinates (B, 20, 2) long and visibility (B, 20) of keypoints + virtual points."""
    h, w = hw
    x, y, v = keypoints.float().unbind(-1)
    vis = (v > 0) & (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    xy = torch.stack([x, y], -1)
    ext_xy, ext_vis = [xy], [vis]
    for a, b in _VIRTUAL.values():
        ext_xy.append(((xy[:, a] + xy[:, b]) / 2)[:, None])
        ext_vis.append((vis[:, a] & vis[:, b])[:, None])
    xy, vis = torch.cat(ext_xy, 1), torch.cat(ext_vis, 1)
    px = (xy[..., 0] * w).floor().clamp(0, w - 1).long()
    py = (xy[..., 1] * h).floor().clamp(0, h - 1).long()
    return torch.stack([px, py], -1), vis


def keypoint_maps(keypoints: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, 17, H, W) float: 1 at each visible keypoint's pixel, 0 elsewhere."""
    h, w = hw
    pts, vis = _extended_points(keypoints, hw)
    b = keypoints.shape[0]
    flat = torch.zeros(b, NUM_KEYPOINTS * h * w + 1, device=keypoints.device)
    k = torch.arange(NUM_KEYPOINTS, device=keypoints.device)
    idx = k * h * w + pts[:, :NUM_KEYPOINTS, 1] * w + pts[:, :NUM_KEYPOINTS, 0]
    idx = torch.where(vis[:, :NUM_KEYPOINTS], idx, NUM_KEYPOINTS * h * w)  # dump slot
    flat.scatter_(1, idx, 1.0)
    return flat[:, :-1].view(b, NUM_KEYPOINTS, h, w)


def _round_pair(a: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """floor(a/n + 1/2) and ceil(a/n - 1/2) in exact integer arithmetic (n > 0).

    They differ only at exact halves; drawing both keeps the rasterised line symmetric under
    mirroring (a -> -a) and under reversing the segment's direction.
    """
    up = torch.div(2 * a + n, 2 * n, rounding_mode="floor")
    down = -torch.div(n - 2 * a, 2 * n, rounding_mode="floor")
    return up, down


def limb_maps(keypoints: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, 6, H, W) float: 1-pixel lines of the six limb groups (a pixel may be in several)."""
    h, w = hw
    b, dev = keypoints.shape[0], keypoints.device
    pts, vis = _extended_points(keypoints, hw)
    seg = torch.tensor(LIMB_SEGMENTS + (FALLBACK_SEGMENT,), device=dev)  # (S, 3)
    p0, p1 = pts[:, seg[:, 0]], pts[:, seg[:, 1]]  # (B, S, 2)
    seg_ok = vis[:, seg[:, 0]] & vis[:, seg[:, 1]]
    seg_ok[:, -1] &= ~vis[:, 0]  # fallback head line only without a visible nose
    d = p1 - p0
    n = d.abs().amax(-1).clamp(min=1)  # (B, S): steps along the major axis
    i = torch.arange(max(h, w), device=dev)  # (L,)
    steps = i[None, None] <= n[..., None]  # (B, S, L)
    ax = i[None, None] * d[..., 0:1]  # (B, S, L)
    ay = i[None, None] * d[..., 1:2]
    xu, xd = _round_pair(ax, n[..., None])
    yu, yd = _round_pair(ay, n[..., None])
    ok = (steps & seg_ok[..., None]).flatten(1)  # (B, S*L)
    limb = seg[:, 2][None, :, None].expand_as(ax).flatten(1)
    flat = torch.zeros(b, 6 * h * w + 1, device=dev)
    x0, y0 = p0[..., 0:1], p0[..., 1:2]
    for dx in (xu, xd):
        for dy in (yu, yd):
            px, py = (x0 + dx).flatten(1), (y0 + dy).flatten(1)
            idx = limb * h * w + py * w + px
            flat.scatter_(1, torch.where(ok, idx, 6 * h * w), 1.0)
    return flat[:, :-1].view(b, 6, h, w)


def _as_b1hw(t: torch.Tensor, name: str, hw: tuple[int, int]) -> torch.Tensor:
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1 or tuple(t.shape[-2:]) != tuple(hw):
        raise ValueError(f"{name} must have shape (B, 1, {hw[0]}, {hw[1]}), got {tuple(t.shape)}")
    return t.float()


def build_condition(
    image: torch.Tensor,
    mask: torch.Tensor,
    person_mask: torch.Tensor,
    keypoints: torch.Tensor,
    resolution: tuple[int, int],
) -> torch.Tensor:
    """The generator input (B, 30, H, W) float32 at ``resolution`` = (H, W).

    Args:
        image: (B, 3, H, W) float in [-1, 1] (the real image; the unknown region is zeroed here).
        mask: (B, 1, H, W) or (B, H, W), 1 = known background, 0 = to synthesise (binary).
        person_mask: same shape, FDH ``maskrcnn_mask`` (1 = not person).
        keypoints: (B, 17, 3) float, COCO order, columns (x/W, y/H, v) in NORMALISED units.
        resolution: (H, W) of the working resolution; every input must already be at it
            (the loader resizes; this function never resamples).
    """
    hw = (int(resolution[0]), int(resolution[1]))
    if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != hw:
        raise ValueError(
            f"image must have shape (B, 3, {hw[0]}, {hw[1]}), got {tuple(image.shape)}"
        )
    if keypoints.ndim != 3 or tuple(keypoints.shape[1:]) != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must have shape (B, 17, 3), got {tuple(keypoints.shape)}")
    m = _as_b1hw(mask, "mask", hw)
    pm = _as_b1hw(person_mask, "person_mask", hw)
    kp = keypoints.to(image.device)
    return torch.cat(
        [image.float() * m, m, 1 - m, pm, 1 - pm, keypoint_maps(kp, hw), limb_maps(kp, hw)], 1
    )
