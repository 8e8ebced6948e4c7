"""The generator's 30-channel conditioning input (triagan-spec "Generator", first bullet).

Channel layout (``CONDITION_CHANNELS``), as the reference's ``TriaGAN.get_input``:

====  =====================================================================
0-2   condition image: ``image * mask`` (image in [-1, 1], unknown region 0)
3, 4  mask, 1 - mask (1 = known background, 0 = region to synthesise)
5, 6  person mask, 1 - person mask (FDH ``maskrcnn_mask``: 1 = not person)
7-23  17 one-hot keypoint maps, COCO order (one pixel per visible keypoint)
24-29 6 one-hot limb maps: head, left arm, right arm, body, left leg, right leg
====  =====================================================================

Two conditioning modes (``CONDITIONING_MODES``), a field of the generator's config and of its
``generator.json``, since a generator only works with the maps it was trained on:

``reference`` (the default; DeepPrivacy2's arithmetic, so imported weights see what they were
    trained on): keypoints decoded as DP2's FDH loader does (v = (v > 0) and 0 <= x, y <= 1,
    float32); a keypoint's pixel is ``(round(x * W), round(y * H))`` (round half to even)
    clamped to the image (``spatial_embed_keypoints``); limbs are ONE label map drawn with PIL's
    ``ImageDraw.line(width=1)`` in DP2's connectivity order, later limbs overwriting earlier
    ones, endpoints rounded and not clamped (PIL clips), then one-hot without class 0
    (``InsertJointMap``, ``TriaGAN.get_input``). The neck (mid-shoulder) and mid-hip exist when
    both parents are visible; when the nose is invisible and the neck exists the head line runs
    from mid-eye to neck whether or not the eyes are visible, as in DP2.
``flip-exact`` (the previous version's rule; weights whose ``generator.json`` has no mode were
    trained with it): pixel ``(floor(x * W), floor(y * H))`` clamped; six independent limb maps
    (a pixel may be in two) drawn by a symmetric rasteriser (exact half-way points set both
    neighbouring pixels), mid-eye only when both eyes are visible. Mirroring x -> 1 - x maps
    column c to W - 1 - c, so the maps of the flipped keypoints equal the flipped maps exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from triagan_model.configs import CONDITIONING_MODES

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
# ``reference`` mode: DP2's InsertJointMap drawing order (its connectivity dict in insertion
# order), (from, to, limb). The order matters: later lines overwrite earlier ones, and the
# nose-neck line is drawn in both directions (PIL's rasteriser is not direction-symmetric).
DP2_DRAW_ORDER: tuple[tuple[int, int, int], ...] = (
    (0, 1, 0), (0, 2, 0), (0, NECK, 0), (1, 2, 0), (1, 3, 0), (2, 4, 0),
    (5, 6, 3), (5, 7, 1), (5, 11, 3), (6, 8, 2), (6, 12, 3), (7, 9, 1), (8, 10, 2),
    (11, 12, 3), (11, 13, 4), (12, 14, 5), (13, 15, 4), (14, 16, 5),
    (NECK, MID_HIP, 3), (NECK, 0, 0),
)  # fmt: skip


FAR_LIMIT = 16  # image sizes; see _dp2_points


def check_mode(mode: str) -> str:
    """``mode`` if it is a conditioning mode, else a ValueError naming the valid ones."""
    if mode not in CONDITIONING_MODES:
        raise ValueError(f"unknown conditioning mode {mode!r}; one of {CONDITIONING_MODES}")
    return mode


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


def dp2_decode_keypoints(keypoints: torch.Tensor) -> torch.Tensor:
    """DP2's FDH ``kp_decoder`` on (B, 17, 3): float32, v = (v > 0) and 0 <= x, y <= 1.

    Idempotent, so decoded keypoints pass through unchanged. Non-finite coordinates count as
    outside (DP2 would index with an undefined integer there).
    """
    kp = keypoints.detach().to(torch.float32).clone()
    x, y = kp[..., 0], kp[..., 1]
    inside = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    kp[..., 2] = ((kp[..., 2] > 0) & inside).to(torch.float32)
    return kp


def _scatter_points(px, py, vis, hw: tuple[int, int]) -> torch.Tensor:
    """(B, 17, H, W) float: 1 at (px, py) of each visible keypoint."""
    h, w = hw
    b = px.shape[0]
    flat = torch.zeros(b, NUM_KEYPOINTS * h * w + 1, device=px.device)
    k = torch.arange(NUM_KEYPOINTS, device=px.device)
    idx = k * h * w + py * w + px
    idx = torch.where(vis, idx, NUM_KEYPOINTS * h * w)  # dump slot
    flat.scatter_(1, idx, 1.0)
    return flat[:, :-1].view(b, NUM_KEYPOINTS, h, w)


def keypoint_maps(
    keypoints: torch.Tensor, hw: tuple[int, int], mode: str = "reference"
) -> torch.Tensor:
    """(B, 17, H, W) float: 1 at each visible keypoint's pixel, 0 elsewhere (module docstring
    for each ``mode``'s pixel rule)."""
    h, w = hw
    if check_mode(mode) == "flip-exact":
        pts, vis = _extended_points(keypoints, hw)
        n = NUM_KEYPOINTS
        return _scatter_points(pts[:, :n, 0], pts[:, :n, 1], vis[:, :n], hw)
    kp = dp2_decode_keypoints(keypoints)
    # float32 products and torch.round (half to even), as spatial_embed_keypoints
    px = (kp[..., 0] * w).round().long().clamp(0, w - 1)
    py = (kp[..., 1] * h).round().long().clamp(0, h - 1)
    return _scatter_points(px, py, kp[..., 2].round() == 1, hw)


def _round_pair(a: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """floor(a/n + 1/2) and ceil(a/n - 1/2) in exact integer arithmetic (n > 0).

    They differ only at exact halves; drawing both keeps the rasterised line symmetric under
    mirroring (a -> -a) and under reversing the segment's direction.
    """
    up = torch.div(2 * a + n, 2 * n, rounding_mode="floor")
    down = -torch.div(n - 2 * a, 2 * n, rounding_mode="floor")
    return up, down


def _dp2_points(keypoints: torch.Tensor, hw: tuple[int, int]):
    """Pixel endpoints (B, 20, 2) long (17 keypoints, neck, mid-hip, mid-eye) and visibility
    (B, 19) of DP2's create_joint_map, in its float32 order of operations."""
    h, w = hw
    kp = dp2_decode_keypoints(keypoints).cpu()
    ext = torch.cat([kp, torch.zeros(kp.shape[0], 2, 3)], 1)
    vis = ext[..., 2] > 0
    for virtual, (a, b) in ((NECK, (5, 6)), (MID_HIP, (11, 12))):
        both = vis[:, a] & vis[:, b]
        mid = ext[:, a] + (ext[:, b] - ext[:, a]) / 2
        ext[:, virtual] = torch.where(both[:, None], mid, ext[:, virtual])
        vis[:, virtual] = both
    ext[..., 0] *= w
    ext[..., 1] *= h
    # mid-eye from the scaled eyes, visible or not (DP2 does not check them)
    mid_eye = ext[:, 1] + (ext[:, 2] - ext[:, 1]) / 2
    xy = torch.cat([ext[..., :2], mid_eye[:, None, :2]], 1)
    # Only the mid-eye can lie outside the image (visible points are inside [0, 1]); PIL walks
    # a line pixel by pixel even outside the image (1e9 px: ~10 s), so a mid-eye farther than
    # FAR_LIMIT image sizes away (or non-finite) skips its line, where DP2 would draw the clip.
    ok = (xy.abs() <= FAR_LIMIT * max(h, w)).all(-1)  # False for NaN and inf too
    return xy.round().long(), vis, ok


def limb_label_map(keypoints: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) uint8 CPU: DP2's limb label map (0 = background, limb index + 1), drawn with
    PIL's ``ImageDraw.line(width=1)`` in ``DP2_DRAW_ORDER``, later lines overwriting earlier
    ones; endpoints may lie outside the image (PIL clips the line)."""
    h, w = hw
    pts, vis, ok = _dp2_points(keypoints, hw)
    out = np.zeros((pts.shape[0], h, w), dtype=np.uint8)
    for i, (p, v, good) in enumerate(zip(pts.tolist(), vis.tolist(), ok.tolist(), strict=True)):
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        segments = [s for s in DP2_DRAW_ORDER if v[s[0]] and v[s[1]]]
        if not v[0] and v[NECK]:
            segments.append(FALLBACK_SEGMENT)
        for a, b, limb in segments:
            if good[a] and good[b]:
                draw.line((tuple(p[a]), tuple(p[b])), width=1, fill=limb + 1)
        out[i] = np.asarray(canvas)
    return torch.from_numpy(out)


def limb_maps(
    keypoints: torch.Tensor, hw: tuple[int, int], mode: str = "reference"
) -> torch.Tensor:
    """(B, 6, H, W) float: the six limb groups' 1-pixel lines (``reference``: one-hot of
    ``limb_label_map`` without class 0; ``flip-exact``: independent maps)."""
    if check_mode(mode) == "reference":
        label = limb_label_map(keypoints, hw).to(keypoints.device)
        classes = torch.arange(1, len(LIMB_NAMES) + 1, device=keypoints.device)
        return (label[:, None] == classes[:, None, None]).float()
    return _limb_maps_independent(keypoints, hw)


def _limb_maps_independent(keypoints: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``flip-exact``: 1-pixel lines of the six limb groups (a pixel may be in several)."""
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
    mode: str = "reference",
) -> torch.Tensor:
    """The generator input (B, 30, H, W) float32 at ``resolution`` = (H, W).

    Args:
        image: (B, 3, H, W) float in [-1, 1] (the real image; the unknown region is zeroed here).
        mask: (B, 1, H, W) or (B, H, W), 1 = known background, 0 = to synthesise (binary).
        person_mask: same shape, FDH ``maskrcnn_mask`` (1 = not person).
        keypoints: (B, 17, 3) float, COCO order, columns (x/W, y/H, v) in NORMALISED units.
        resolution: (H, W) of the working resolution; every input must already be at it
            (the loader resizes; this function never resamples).
        mode: the conditioning mode (module docstring); take it from the generator's config
            (``G.cfg.conditioning_mode``), since weights only work with the maps they learnt.
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
    check_mode(mode)
    kp = keypoints.to(image.device)
    maps = [keypoint_maps(kp, hw, mode), limb_maps(kp, hw, mode)]
    return torch.cat([image.float() * m, m, 1 - m, pm, 1 - pm, *maps], 1)
