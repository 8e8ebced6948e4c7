"""Video tracker: IoU + Hungarian assignment with constant velocity and a hold-over
(anonymize-spec 4.7).

Each frame, every live track predicts its tight box by constant velocity; detections are
assigned to tracks by `scipy.optimize.linear_sum_assignment` on 1 - IoU(predicted, detected),
pairs under the IoU gate refused. A new detection opens a track (ids count up from 0 in
detection order: deterministic). A track missed for up to `hold_frames` frames is still
anonymised, with its last mask and keypoints moved by the predicted displacement (status
`held`): a detector that drops a person for a frame or two does not unveil them. A track missed
for more than `max_age` frames dies; a person returning after that is a new track (new identity).
DP2 tracks the expanded boxes with motpy and draws a random latent per track; here the tight
mask boxes are tracked and the latent is a hash of the track's key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from triagan_model.anonymize.boxes import iou_matrix, mask_box
from triagan_model.anonymize.compose import Person


@dataclass
class _Track:
    id: int
    box: np.ndarray  # last seen tight box, float (4,)
    velocity: np.ndarray  # (2,) pixels per frame
    person: Person
    missed: int = 0

    def predicted(self, frames_ahead: int) -> np.ndarray:
        d = np.tile(self.velocity * frames_ahead, 2)
        return self.box + d


def shift_mask(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """`mask` moved by (dx, dy) pixels, zeros where it enters."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    if abs(dx) < w and abs(dy) < h:
        out[yd, xd] = mask[ys, xs]
    return out


class Tracker:
    def __init__(self, iou_gate: float = 0.3, hold_frames: int = 2, max_age: int = 25) -> None:
        self.iou_gate, self.hold_frames = iou_gate, hold_frames
        self.max_age = max(max_age, hold_frames)
        self.tracks: list[_Track] = []
        self.next_id = 0

    def _match(self, boxes: np.ndarray) -> list[tuple[int, int]]:
        from scipy.optimize import linear_sum_assignment

        if not self.tracks or not len(boxes):
            return []
        pred = np.stack([t.predicted(t.missed + 1) for t in self.tracks])
        iou = iou_matrix(pred, boxes)
        rows, cols = linear_sum_assignment(1.0 - iou)
        return [(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= self.iou_gate]

    def step(self, detections: list[Person]) -> list[Person]:
        """Persons of this frame with `track` set, followed by held persons of missed tracks."""
        kept = [(p, mask_box(np.asarray(p.mask, bool))) for p in detections]
        kept = [(p, b) for p, b in kept if b is not None]
        boxes = np.asarray([b for _, b in kept], np.float64).reshape(-1, 4)
        matches = self._match(boxes)
        matched_t, matched_d = {r for r, _ in matches}, {c for _, c in matches}
        for r, c in matches:
            t, (p, _) = self.tracks[r], kept[c]
            gap = t.missed + 1
            centre = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])  # noqa: E731
            t.velocity = (centre(boxes[c]) - centre(t.box)) / gap
            t.box, t.person, t.missed = boxes[c], p, 0
            p.track = t.id
        out = [p for p, _ in kept]
        n_before = len(self.tracks)
        for c, (p, _) in enumerate(kept):
            if c not in matched_d:
                self.tracks.append(_Track(self.next_id, boxes[c], np.zeros(2), p))
                p.track = self.next_id
                self.next_id += 1
        alive = []
        for r, t in enumerate(self.tracks):
            if r in matched_t or r >= n_before:  # seen this frame
                alive.append(t)
                continue
            t.missed += 1
            if t.missed <= self.hold_frames:
                out.append(self._held(t))
            if t.missed <= self.max_age:
                alive.append(t)
        self.tracks = alive
        return out

    def _held(self, t: _Track) -> Person:
        d = np.round(t.velocity * t.missed).astype(int)
        kp = None
        if t.person.keypoints is not None:
            kp = np.asarray(t.person.keypoints, np.float32).copy()
            kp[:, :2] += d
        return Person(mask=shift_mask(np.asarray(t.person.mask, bool), int(d[0]), int(d[1])),
                      keypoints=kp, score=t.person.score, track=t.id, held=True)  # fmt: skip
