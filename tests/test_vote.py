"""Rule table, scoring, vote, chosen keypoints and person box (refine-spec sections 2-6)."""

from __future__ import annotations

import numpy as np
import pytest

from fdhclean.box import person_box, person_boxes
from fdhclean.fdh import COCO_KEYPOINTS, IMAGE_H, IMAGE_W, PART_NAMES
from fdhclean.parts import part_bits
from fdhclean.rules import DEFAULT_RULES, RuleTable, load_rules
from fdhclean.vote import Scores, chosen_keypoints, decide, score_keypoints, score_one

K = {name: i for i, name in enumerate(COCO_KEYPOINTS)}
# vertex id -> parts: 2 is a border vertex (leftArm and leftForeArm), 4 has no part
VERTEX_PARTS = np.array(
    [
        part_bits(["head"]),
        part_bits(["leftArm"]),
        part_bits(["leftArm", "leftForeArm"]),
        part_bits(["hips"]),
        0,
    ],
    dtype=np.uint32,
)
ACCEPTED = DEFAULT_RULES.masks()
H, W = 4, 4


# ----------------------------------------------------------------------------- rule table
def test_default_rules():
    acc = DEFAULT_RULES.accepted
    assert tuple(acc) == COCO_KEYPOINTS
    for kp in ("nose", "left_eye", "right_eye", "left_ear", "right_ear"):
        assert acc[kp] == ("head",)
    assert acc["left_shoulder"] == ("leftShoulder", "leftArm")
    assert acc["right_shoulder"] == ("rightShoulder", "rightArm")
    assert acc["right_elbow"] == ("rightArm", "rightForeArm")
    assert acc["right_wrist"] == ("rightForeArm", "rightHand", "rightHandIndex1")
    assert acc["right_hip"] == ("hips", "rightUpLeg")
    assert acc["right_knee"] == ("rightUpLeg", "rightLeg")
    assert acc["right_ankle"] == ("rightLeg", "rightFoot", "rightToeBase")
    masks = DEFAULT_RULES.masks()
    assert masks.dtype == np.uint32 and masks.shape == (17,)
    assert masks[K["left_wrist"]] == part_bits(["leftForeArm", "leftHand", "leftHandIndex1"])
    assert masks[K["right_hip"]] == (1 << PART_NAMES.index("hips")) | (
        1 << PART_NAMES.index("rightUpLeg")
    )


def _toml(rules: dict[str, list[str]]) -> str:
    return "".join(f"{kp} = {parts!r}\n".replace("'", '"') for kp, parts in rules.items())


def _default_dict() -> dict[str, list[str]]:
    return {kp: list(parts) for kp, parts in DEFAULT_RULES.accepted.items()}


def test_toml_override_and_hash(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(_toml(_default_dict()))
    same = load_rules(path)
    assert same == DEFAULT_RULES and same.sha256 == DEFAULT_RULES.sha256
    # the hash ignores the order of keys and of parts within a rule
    shuffled = {kp: parts[::-1] for kp, parts in reversed(_default_dict().items())}
    path.write_text(_toml(shuffled))
    assert load_rules(path).sha256 == DEFAULT_RULES.sha256
    changed = {**_default_dict(), "nose": ["head", "neck"]}
    path.write_text(_toml(changed))
    rules = load_rules(path)
    assert rules.accepted["nose"] == ("head", "neck")
    assert rules.masks()[K["nose"]] == 0b11
    assert rules.sha256 != DEFAULT_RULES.sha256
    assert len(rules.sha256) == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_toml({k: v for k, v in _default_dict().items() if k != "nose"}), r"missing: \['nose'\]"),
        (_toml({**_default_dict(), "tail": ["head"]}), r"unknown: \['tail'\]"),
        (_toml({**_default_dict(), "nose": ["snout"]}), "unknown body part 'snout'"),
        (_toml({**_default_dict(), "nose": []}), "accepts no part"),
        (_toml({**_default_dict(), "nose": ["head", "head"]}), "lists a part twice"),
        (_toml(_default_dict()) + 'left_eye_x = "head"\n', "must be a list"),
        ("nose = [head\n", "invalid TOML"),
    ],
)
def test_invalid_rules(tmp_path, text, message):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_rules(path)
    assert "rules.toml" in str(info.value)


def test_rules_missing_file_and_foreign_parts(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_rules(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="does not fit the part table"):
        DEFAULT_RULES.masks(("head", "torso"))
    with pytest.raises(ValueError, match="must be a list"):
        RuleTable({**DEFAULT_RULES.accepted, "nose": "head"})


# ----------------------------------------------------------------------------- scoring
def _keypoints(**points: tuple[float, float, float]) -> np.ndarray:
    """(17,3) normalised keypoints, all v = 0 except the named ones."""
    kp = np.zeros((17, 3))
    for name, xyv in points.items():
        kp[K[name]] = xyv
    return kp


def _maps(vertex: int = 0, emask: bool = True) -> tuple[np.ndarray, np.ndarray]:
    return np.full((H, W), emask), np.full((H, W), vertex, dtype=np.int32)


def _score(kp, min_score=0.0, emask=None, vertices=None):
    em, vx = _maps()
    em = em if emask is None else emask
    vx = vx if vertices is None else vertices
    return score_one(kp, min_score, em, vx, VERTEX_PARTS, ACCEPTED)


@pytest.mark.parametrize(
    ("xyv", "considered"),
    [
        ((0.0, 0.0, 1.0), True),  # exactly 0 is inside
        ((-0.0, 0.5, 1.0), True),
        ((0.999, 0.999, 1.0), True),
        ((1.0, 0.5, 1.0), False),  # exactly 1 is outside
        ((0.5, 1.0, 1.0), False),
        ((-1e-9, 0.5, 1.0), False),
        ((0.5, -0.25, 1.0), False),
        ((np.nan, 0.5, 1.0), False),
        ((0.5, np.nan, 1.0), False),
        ((0.5, 0.5, np.nan), False),
        ((np.inf, 0.5, 1.0), False),
        ((0.5, 0.5, 0.3), False),  # v == min_score
        ((0.5, 0.5, np.nextafter(0.3, 1.0)), True),  # just above
    ],
)
def test_considered_edge_cases(xyv, considered):
    got = _score(_keypoints(nose=xyv), min_score=0.3)
    assert got["considered"] == int(considered)
    assert got["considered_mask"] == int(considered) << K["nose"]
    assert got["correct"] == int(considered)  # every pixel is head here
    assert got["frac"] == (1.0 if considered else 0.0)


def test_correctness_cases():
    em, vx = _maps(vertex=2)  # border vertex: leftArm and leftForeArm
    em[0, 0] = False
    vx[3, 3] = 3  # hips
    kp = _keypoints(
        left_shoulder=(0.6, 0.6, 1),  # leftArm accepted
        left_elbow=(0.6, 0.1, 1),  # leftArm accepted
        left_wrist=(0.1, 0.6, 1),  # leftForeArm accepted
        right_elbow=(0.3, 0.3, 1),  # wrong side
        left_knee=(0.9, 0.9, 1),  # hips: wrong part for a knee
        left_hip=(0.9, 0.9, 1),  # hips: right part
        nose=(0.1, 0.1, 1),  # E_mask = 0 there: considered, not correct
    )
    got = score_one(kp, 0.0, em, vx, VERTEX_PARTS, ACCEPTED)
    names_correct = ["left_shoulder", "left_elbow", "left_wrist", "left_hip"]
    names_considered = [*names_correct, "right_elbow", "left_knee", "nose"]
    assert got["correct_mask"] == sum(1 << K[n] for n in names_correct)
    assert got["considered_mask"] == sum(1 << K[n] for n in names_considered)
    assert (got["correct"], got["considered"]) == (4, 7)
    assert got["frac"] == 4 / 7


def test_nothing_considered():
    got = _score(np.zeros((17, 3)))
    assert got == {"correct_mask": 0, "considered_mask": 0, "correct": 0, "considered": 0,
                   "frac": 0.0}  # fmt: skip


def test_pixel_is_floor_of_coordinate_times_size():
    em = np.ones((IMAGE_H, IMAGE_W), dtype=bool)
    vx = np.full((IMAGE_H, IMAGE_W), 4, dtype=np.int32)  # no part anywhere ...
    vx[100, 37] = 0  # ... except head at pixel (x=37, y=100)
    inside = [(37 / IMAGE_W + 1e-9, 100 / IMAGE_H + 1e-9), (37.999 / IMAGE_W, 100.999 / IMAGE_H)]
    outside = [(36.999 / IMAGE_W, 100.5 / IMAGE_H), (37.5 / IMAGE_W, 101.001 / IMAGE_H)]
    for (x, y), expect in [(p, 1) for p in inside] + [(p, 0) for p in outside]:
        got = score_one(_keypoints(nose=(x, y, 1)), 0.0, em, vx, VERTEX_PARTS, ACCEPTED)
        assert (got["considered"], got["correct"]) == (1, expect), (x, y)
    # the largest float64 below 1 still lands in the last pixel, for both sizes
    last = np.nextafter(1.0, 0.0)
    vx[:] = 4
    vx[-1, -1] = 0
    got = score_one(_keypoints(nose=(last, last, 1)), 0.0, em, vx, VERTEX_PARTS, ACCEPTED)
    assert got["correct"] == 1


def test_vertex_ids_outside_emask_are_ignored_inside_checked():
    em, vx = _maps()
    vx[:, :2] = -7  # garbage where E_mask = 0 must not matter
    em[:, :2] = False
    got = _score(_keypoints(nose=(0.1, 0.1, 1), left_eye=(0.9, 0.9, 1)), emask=em, vertices=vx)
    assert (got["correct"], got["considered"]) == (1, 2)
    em[:, :2] = True
    with pytest.raises(ValueError, match="vertex id -7 under E_mask"):
        _score(_keypoints(nose=(0.1, 0.1, 1)), emask=em, vertices=vx)


def _reference_score(kp, min_score, em, vx):
    """Slow, literal reading of spec section 3, one keypoint at a time."""
    correct = considered = cmask = kmask = 0
    h, w = em.shape
    for k in range(17):
        x, y, v = (float(c) for c in kp[k])
        if not (v > min_score and 0 <= x < 1 and 0 <= y < 1):
            continue
        considered += 1
        kmask |= 1 << k
        px, py = int(np.floor(x * w)), int(np.floor(y * h))
        if em[py, px] and int(VERTEX_PARTS[vx[py, px]]) & int(ACCEPTED[k]):
            correct += 1
            cmask |= 1 << k
    frac = correct / considered if considered else 0.0
    return cmask, kmask, correct, considered, frac


def test_batch_matches_reference():
    rng = np.random.default_rng(0)
    n = 64
    kp = rng.uniform(-0.2, 1.2, size=(n, 17, 3))
    kp[rng.random((n, 17)) < 0.05, 0] = np.nan
    kp[..., 2] = rng.choice([0.0, 0.3, 0.5, 0.9], size=(n, 17))
    em = rng.random((n, 12, 8)) < 0.7
    vx = rng.integers(0, len(VERTEX_PARTS), size=(n, 12, 8)).astype(np.int16)
    scores = score_keypoints(kp.astype(np.float32), 0.3, em, vx, VERTEX_PARTS, ACCEPTED)
    assert len(scores) == n
    for field in ("correct_mask", "considered_mask", "correct", "considered"):
        assert getattr(scores, field).dtype == np.int64
    assert scores.frac.dtype == np.float64
    for i in range(n):
        ref = _reference_score(kp[i].astype(np.float32), 0.3, em[i], vx[i])
        got = scores.row(i)
        assert (got["correct_mask"], got["considered_mask"], got["correct"]) == ref[:3]
        assert (got["considered"], got["frac"]) == ref[3:]
    assert scores.considered.sum() > 100 and scores.correct.sum() > 20  # a real mix


def test_shape_errors():
    em, vx = _maps()
    with pytest.raises(ValueError, match="keypoints must have shape"):
        score_keypoints(np.zeros((2, 16, 3)), 0.0, em[None], vx[None], VERTEX_PARTS, ACCEPTED)
    with pytest.raises(ValueError, match="must both be"):
        score_keypoints(np.zeros((2, 17, 3)), 0.0, em[None], vx[None], VERTEX_PARTS, ACCEPTED)
    with pytest.raises(ValueError, match="integer"):
        score_keypoints(np.zeros((17, 3)), 0.0, em, vx.astype(float), VERTEX_PARTS, ACCEPTED)


# ----------------------------------------------------------------------------- the vote
def _scores(correct, considered) -> Scores:
    correct, considered = np.asarray(correct), np.asarray(considered)
    frac = np.where(considered > 0, correct / np.maximum(considered, 1), 0.0)
    zeros = np.zeros_like(correct)
    return Scores(zeros, zeros, correct, considered, frac)


def test_decide():
    #             new better by frac | by correct at equal frac | equal | orig better | both 0
    orig = _scores([1, 2, 3, 4, 0], [4, 4, 6, 4, 0])
    new = _scores([2, 4, 3, 3, 0], [4, 8, 6, 4, 5])
    updated, tie = decide(orig, new)
    assert updated.tolist() == [True, True, True, False, True]
    assert tie.tolist() == [False, False, True, False, True]
    updated, tie = decide(orig, new, tie_policy="original")
    assert updated.tolist() == [True, True, False, False, False]
    assert tie.tolist() == [False, False, True, False, True]
    # higher frac beats more correct keypoints
    updated, _ = decide(_scores([1], [1]), _scores([9], [10]))
    assert updated.tolist() == [False]
    with pytest.raises(ValueError, match="unknown tie policy 'coin'"):
        decide(orig, new, tie_policy="coin")


# ----------------------------------------------------------------------------- chosen keypoints
ESTIMATE = np.array([[0.25, 0.5, 0.9], [0.5, 0.25, 0.3], [0.1, 0.2, 0.1]] + [[0.5, 0.5, 0.0]] * 14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chosen_keypoints(dtype):
    original = np.arange(51, dtype=dtype).reshape(17, 3)
    kept = chosen_keypoints(original, ESTIMATE, False, 0.3, "pixels")
    assert kept.dtype == dtype and np.array_equal(kept, original) and kept is not original

    norm = chosen_keypoints(original, ESTIMATE, True, 0.3, "normalized")
    assert norm.dtype == dtype and norm.shape == (17, 3)
    np.testing.assert_array_equal(norm[:, :2], ESTIMATE[:, :2].astype(dtype))
    # v = score where score > new_min_score, else 0 (0.3 itself does not pass)
    np.testing.assert_array_equal(norm[:3, 2], np.array([0.9, 0.0, 0.0], dtype=dtype))
    assert not norm[3:, 2].any()

    pix = chosen_keypoints(original, ESTIMATE, True, 0.05, "pixels")
    assert pix.dtype == dtype
    np.testing.assert_allclose(pix[0], [40.0, 144.0, 0.9], rtol=1e-6)
    np.testing.assert_allclose(pix[1], [80.0, 72.0, 0.3], rtol=1e-6)
    np.testing.assert_allclose(pix[2, 2], 0.1, rtol=1e-6)


def test_chosen_keypoints_shape_and_errors():
    original = np.zeros((1, 17, 3), dtype=np.float32)
    assert chosen_keypoints(original, ESTIMATE, True, 0.3, "normalized").shape == (1, 17, 3)
    with pytest.raises(ValueError, match="units 'mm'"):
        chosen_keypoints(original, ESTIMATE, True, 0.3, "mm")
    with pytest.raises(ValueError, match="17x3"):
        chosen_keypoints(np.zeros((16, 3)), ESTIMATE, True, 0.3, "normalized")


# ----------------------------------------------------------------------------- person box
def test_person_box_sources_and_exclusive_max():
    em = np.zeros((IMAGE_H, IMAGE_W), dtype=np.uint8)
    known = np.ones((IMAGE_H, IMAGE_W), dtype=np.uint8) * 255  # 0/255 storage
    em[10:20, 30:31] = 1  # one column wide
    known[5:50, 20:60] = 0
    assert person_box(em, known) == ((30, 10, 31, 20), "e_mask")
    assert person_box(np.zeros_like(em), known) == ((20, 5, 60, 50), "mask")
    assert person_box(np.zeros_like(em), np.ones_like(known)) == ((0, 0, 160, 288), "image")
    em[:] = 0
    em[IMAGE_H - 1, IMAGE_W - 1] = 1  # last pixel: exclusive max is the image size
    em[0, 5] = 1
    assert person_box(em, known) == ((5, 0, 160, 288), "e_mask")


def test_person_boxes_vectorised_matches_single():
    rng = np.random.default_rng(1)
    n, h, w = 12, 9, 7
    em = np.zeros((n, h, w), dtype=bool)
    known = np.ones((n, h, w), dtype=bool)
    for i in range(n):
        if i % 3 == 0:
            em[i, rng.integers(h), rng.integers(w)] = True
            em[i, rng.integers(h), rng.integers(w)] = True
        if i % 3 != 2:
            known[i, rng.integers(h), rng.integers(w)] = False
    boxes, sources = person_boxes(em, known)
    assert boxes.dtype == np.int64 and boxes.shape == (n, 4)
    assert set(sources) == {"e_mask", "mask", "image"}
    for i in range(n):
        box, source = person_box(em[i], known[i])
        assert tuple(boxes[i]) == box and sources[i] == source
        region = em[i] if source == "e_mask" else ~known[i] if source == "mask" else None
        if region is None:
            assert box == (0, 0, w, h)
            continue
        ys, xs = np.nonzero(region)
        assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    with pytest.raises(ValueError, match="must both have shape"):
        person_boxes(em, known[:, :-1])
