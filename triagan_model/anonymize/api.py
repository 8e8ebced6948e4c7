"""The Python API: `Anonymizer` (anonymize-spec 4.8).

    anon = Anonymizer.from_files(generator="weights/triagan-E",
        detector=("torchvision-maskrcnn", "maskrcnn_v2_coco.pth"), pose="vitpose-hf",
        pose_weights="vitpose-h", settings=AnonymizeSettings(truncation=0.0, seed=0))
    result = anon.image(rgb, key="a.jpg")       # AnonymizedImage(image, persons)
    result = anon.image(rgb, persons=[Person(mask=m, keypoints=kp)])
    for result in anon.frames(frames, key="v.mp4", fps=25.0): ...

Every person gets a report row (`persons`): status anonymized | held | too-small, the fallback
used for a too-small one, boxes, keypoints, identity key and truncation centre.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from triagan_model.anonymize.boxes import MIN_BOX_AREA
from triagan_model.anonymize.compose import (
    SMALL_PERSON_POLICIES,
    Person,
    Synthesise,
    apply_small_person,
    compose,
    plan_persons,
)
from triagan_model.anonymize.crops import INTERPOLATION_RULES
from triagan_model.anonymize.identity import ConfigError
from triagan_model.anonymize.pose import FromDetections, NoPose


@dataclass
class AnonymizeSettings:
    truncation: float = 0.0  # psi; 0 = the centre itself (DP2's dataset tools)
    multi_modal: str = "auto"  # auto | on | off
    clusters: str | None = None  # centres file (else G_DIR/w_centers.safetensors)
    centre_rule: str = "nearest"  # nearest (paper) | index (DP2)
    seed: int = 0
    score_threshold: float = 0.3
    keypoint_threshold: float = 0.3
    min_box_area: int = MIN_BOX_AREA
    small_person: str = "blur"  # blur | pixelate | maskout | keep
    batch_size: int = 16
    precision: str = "fp32"
    device: str = "cpu"
    track_iou: float = 0.3
    hold_frames: int = 2
    crop_interpolation: str = "reference"  # reference (DP2) | padded (anonymize-spec's fix)

    def check(self) -> None:
        if self.small_person not in SMALL_PERSON_POLICIES:
            raise ConfigError(f"--small-person must be one of {SMALL_PERSON_POLICIES}")
        if not 0 <= self.truncation <= 1:
            raise ConfigError(f"--truncation must lie in [0, 1], not {self.truncation}")
        if self.crop_interpolation not in INTERPOLATION_RULES:
            raise ConfigError(f"--crop-interpolation must be one of {INTERPOLATION_RULES}")
        if self.batch_size < 1 or self.hold_frames < 0:
            raise ConfigError("--batch-size must be >= 1 and --hold-frames >= 0")
        if self.precision == "bf16" and not str(self.device).startswith("cuda"):
            # autocast is CUDA-only here: a bf16 run on CPU would compute and record fp32
            raise ConfigError(f"--precision bf16 needs a CUDA device, not {self.device}; "
                              "use --precision fp32")  # fmt: skip


@dataclass
class AnonymizedImage:
    image: np.ndarray  # (H, W, 3) uint8 RGB, the input's size
    persons: list[dict[str, Any]] = field(default_factory=list)


def _box_list(box) -> list[int] | None:
    return None if box is None else [int(v) for v in box]


class Anonymizer:
    """Detect -> keypoints -> plan -> generate -> paste, for images and frame sequences."""

    def __init__(self, synthesise: Synthesise, *, detector=None, pose=None,
                 settings: AnonymizeSettings | None = None,
                 provenance: dict | None = None) -> None:  # fmt: skip
        self.synthesise, self.detector = synthesise, detector
        self.pose = pose if pose is not None else FromDetections()
        self.settings = settings or AnonymizeSettings()
        self.settings.check()
        self.provenance = provenance or {}
        self.timings: dict[str, float] = {}
        # the real generator's wrapper, when there is one: it knows each key's centre index
        self.centre_of: dict[str, int | None] = getattr(synthesise, "centre_of", {})

    @classmethod
    def from_files(cls, generator: str, *, detector: tuple[str, str] | Any = None,
                   pose: Any = "from-detections", pose_weights: str | None = None,
                   settings: AnonymizeSettings | None = None,
                   detector_sha256: str | None = None,
                   detector_min_size: int = 800,
                   detector_max_persons: int = 100,
                   max_res: int | None = None) -> Anonymizer:  # fmt: skip
        """Load the generator weights directory, the detector and the pose backend."""
        from triagan_model.anonymize.detectors import CocoDetections, MaskRCNNDetector
        from triagan_model.anonymize.identity import (
            GeneratorSynthesiser,
            check_centres,
            resolve_truncation,
        )
        from triagan_model.anonymize.pose import build_pose
        from triagan_model.weights import load_generator, read_weights_dir

        s = settings or AnonymizeSettings()
        try:
            G = load_generator(generator, s.device)
            doc = read_weights_dir(generator, verify=False)[2]
        except (FileNotFoundError, ValueError, RuntimeError, KeyError) as exn:
            raise ConfigError(f"generator {generator}: {exn}") from exn
        plan = resolve_truncation(generator, psi=s.truncation, multi_modal=s.multi_modal,
                                  clusters=s.clusters, centre_rule=s.centre_rule)  # fmt: skip
        check_centres(plan, G.cfg.w_dim)
        synth = GeneratorSynthesiser(G, plan, seed=s.seed, precision=s.precision)
        if isinstance(detector, tuple):
            kind, path = detector
            if kind == "coco":
                detector = CocoDetections(path, s.score_threshold)
            elif kind == "torchvision-maskrcnn":
                detector = MaskRCNNDetector(path, sha256=detector_sha256, device=s.device,
                                            score_threshold=s.score_threshold,
                                            min_size=detector_min_size,
                                            max_persons=detector_max_persons,
                                            max_res=max_res)  # fmt: skip
            else:
                raise ConfigError(f"unknown detector {kind!r}; one of coco, torchvision-maskrcnn")
        if isinstance(pose, str):
            pose = build_pose(pose, pose_weights, device=s.device)
        prov = {"generator": str(generator), "generator_sha256": doc.get("weights_sha256"),
                "generator_config": doc.get("config_name"), "stage": doc.get("stage"),
                "conditioning_mode": synth.conditioning_mode,
                "centres": plan.source, "centre_rule": plan.centre_rule, "psi": plan.psi,
                "pose": pose.provenance(),
                "detector": detector.provenance() if detector is not None else None}  # fmt: skip
        return cls(synth, detector=detector, pose=pose, settings=s, provenance=prov)

    def _tick(self, name: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + t1 - t0
        return t1

    def detect(self, rgb: np.ndarray, key: str, frame: int = 0) -> list[Person]:
        if self.detector is None:
            raise ConfigError("no detector: pass persons=... or build with a detector")
        t0 = time.perf_counter()
        persons = self.detector.detect(rgb, key, frame)
        self._tick("detect", t0)
        return persons

    def _keypoints(self, rgb: np.ndarray, persons: list[Person]) -> None:
        """Fill the persons' keypoints from the pose backend (tight mask boxes, one call)."""
        from triagan_model.anonymize.boxes import mask_box

        if isinstance(self.pose, NoPose) and not isinstance(self.pose, FromDetections):
            for p in persons:
                p.keypoints = None
            return
        if isinstance(self.pose, FromDetections):
            return
        t0 = time.perf_counter()
        todo = [(p, mask_box(np.asarray(p.mask, bool))) for p in persons if not p.held]
        todo = [(p, b) for p, b in todo if b is not None]
        if todo:
            boxes = np.asarray([b for _, b in todo], np.float32)
            kps = np.asarray(self.pose.estimate_boxes(rgb, boxes), np.float32)
            for (p, _), kp in zip(todo, kps, strict=True):
                p.keypoints = kp
        self._tick("pose", t0)

    def image(self, rgb: np.ndarray, *, key: str = "image", persons: list[Person] | None = None,
              frame: int = 0) -> AnonymizedImage:  # fmt: skip
        """Anonymise one (H, W, 3) uint8 RGB frame; `rgb` itself is never modified."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"{key}: expected an (H, W, 3) uint8 RGB image, got "
                             f"{rgb.shape} {rgb.dtype}")  # fmt: skip
        if persons is None:
            persons = self.detect(rgb, key, frame)
        for j, p in enumerate(persons):
            if np.shape(p.mask) != rgb.shape[:2]:
                raise ValueError(f"{key} frame {frame}: person {j}'s mask is "
                                 f"{np.shape(p.mask)}, the image {rgb.shape[:2]}")  # fmt: skip
        self._keypoints(rgb, persons)
        s = self.settings
        t0 = time.perf_counter()
        plans = plan_persons(persons, rgb.shape[:2], [""] * len(persons),
                             keypoint_threshold=s.keypoint_threshold,
                             min_box_area=s.min_box_area)  # fmt: skip
        for rank, q in enumerate(plans):
            track = persons[q.index].track
            q.key = f"{key}#t{track}" if track is not None else f"{key}#p{rank}"
        out = np.array(rgb, copy=True)
        for q in plans:
            if q.status == "too-small":
                apply_small_person(out, persons[q.index].mask, q.box, s.small_person)
        self._tick("crop", t0)
        out = compose(
            out,
            plans,
            self.synthesise,
            batch_size=s.batch_size,
            timings=self.timings,
            crop_rule=s.crop_interpolation,
        )
        return AnonymizedImage(out, self._rows(plans, persons, key, frame))

    def _rows(self, plans, persons, key: str, frame: int) -> list[dict[str, Any]]:
        centre_of = self.centre_of
        rows = []
        for rank, q in enumerate(plans):
            p = persons[q.index]
            kp = None if p.keypoints is None else np.asarray(p.keypoints, float).ravel().tolist()
            small = q.status == "too-small"
            fallback = self.settings.small_person if small else None
            rows.append({"input": key, "frame": frame, "person": rank, "track": p.track,
                         "status": q.status, "fallback": fallback,
                         "score": float(p.score), "mask_pixels": q.area,
                         "box": _box_list(q.tight), "expanded_box": _box_list(q.box),
                         "keypoints": kp, "identity_key": None if small else q.key,
                         "centre_index": None if small else centre_of.get(q.key),
                         "psi": None if small else self.settings.truncation,
                         "layer": None if small else q.layer})  # fmt: skip
        return rows

    def frames(
        self,
        frames: Iterable[np.ndarray],
        *,
        key: str,
        fps: float,
        persons: Iterable[list[Person]] | None = None,
    ) -> Iterator[AnonymizedImage]:
        """Anonymise a frame sequence with tracking: one identity per track, hold-over of a
        track missed for up to `hold_frames` frames."""
        from triagan_model.anonymize.track import Tracker

        tracker = Tracker(iou_gate=self.settings.track_iou, hold_frames=self.settings.hold_frames,
                          max_age=max(1, round(fps)))  # fmt: skip
        given = iter(persons) if persons is not None else None
        for i, rgb in enumerate(frames):
            found = next(given) if given is not None else self.detect(rgb, key, i)
            yield self.image(rgb, key=key, persons=tracker.step(found), frame=i)

    def settings_dict(self) -> dict[str, Any]:
        return asdict(self.settings)
