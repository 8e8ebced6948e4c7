"""triagan_model.data: manifest, loader (coverage, shuffles, flips, resizing, units), overlay,
prepare. Shards are tiny and written by tests/triagan_shards.py."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from triagan_shards import MARKER_COLOURS, make_shards

from triagan_model.cli import main as triagan_main
from triagan_model.data.loader import FDHStream, LoaderConfig, build_loader, plan_epoch, read_shard
from triagan_model.data.manifest import ManifestError, manifest_sha256, read_manifest
from triagan_model.data.overlay import OverlayError, load_overlay
from triagan_model.data.transforms import flip_keypoints, resize_mask_known

FLIP = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("fdh"), n_shards=3, per_shard=4)


def _all(loader) -> dict[str, dict]:
    """{key: per-sample tensors} of a finite loader."""
    out = {}
    for batch in loader:
        for i, key in enumerate(batch["key"]):
            assert key not in out, f"{key} seen twice"
            out[key] = {k: v[i] for k, v in batch.items() if k != "key"}
    return out


def _slot_keys(manifest: Path, rank: int, world: int, worker: int, workers: int, **kw) -> list:
    config = LoaderConfig(resolution=(18, 10), batch_size=3, seed=7, rank=rank, world_size=world,
                          infinite=False, shuffle_buffer=5, **kw)  # fmt: skip
    stream = FDHStream(read_manifest(manifest), config)
    return [k for b in stream.pipeline(worker, workers) for k in b["key"]]


# --- manifest ------------------------------------------------------------------------------


def test_manifest_rejects_unknown_format_and_version(tmp_path):
    base = {"format": "fdh-manifest", "version": 1,
            "shards": [{"path": "a.tar", "samples": 1, "keypoint_units": "pixels"}]}  # fmt: skip
    no_units = {"shards": [{"path": "a.tar", "samples": 1}]}
    for change, words in (({"format": "other"}, "format"), ({"version": 2}, "version"),
                          (no_units, "keypoint_units")):  # fmt: skip
        p = tmp_path / "m.json"
        p.write_text(json.dumps({**base, **change}))
        with pytest.raises(ManifestError, match=words):
            read_manifest(p)


def test_manifest_root_env_and_relative_paths(tmp_path, monkeypatch):
    entry = {"path": "sub/a.tar", "samples": 2, "keypoint_units": "normalized"}
    p = tmp_path / "m" / "m.json"
    p.parent.mkdir()
    p.write_text(json.dumps({"format": "fdh-manifest", "version": 1, "shards": [entry]}))
    assert read_manifest(p).shards[0].path == tmp_path / "m" / "sub" / "a.tar"
    p.write_text(json.dumps({"format": "fdh-manifest", "version": 1, "root": "$FDH_TEST_ROOT",
                             "shards": [entry]}))  # fmt: skip
    monkeypatch.delenv("FDH_TEST_ROOT", raising=False)
    with pytest.raises(ManifestError, match="FDH_TEST_ROOT"):
        read_manifest(p)
    monkeypatch.setenv("FDH_TEST_ROOT", "/data/fdh")
    assert read_manifest(p).shards[0].path == Path("/data/fdh/sub/a.tar")


def test_verify_names_a_changed_shard(tmp_path):
    manifest = make_shards(tmp_path, n_shards=2, per_shard=2)
    build_loader(manifest, batch_size=2, seed=0, verify=True, infinite=False)
    shard = tmp_path / "out-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="out-000001.tar.*sha256"):
        build_loader(manifest, batch_size=2, seed=0, verify=True)
    shard.write_bytes(bytes(data) + b"\0" * 512)
    with pytest.raises(ManifestError, match="out-000001.tar has"):
        read_manifest(manifest, verify=True)


# --- loader order and coverage -------------------------------------------------------------


@pytest.mark.parametrize("n_shards", [3, 5, 8])
def test_each_sample_once_across_2_ranks_x_2_workers(tmp_path, n_shards):
    manifest = make_shards(tmp_path, n_shards=n_shards, per_shard=3)
    keys = [k for rank in range(2) for worker in range(2)
            for k in _slot_keys(manifest, rank, 2, worker, 2)]  # fmt: skip
    assert Counter(keys) == Counter(str(1000 + i) for i in range(n_shards * 3))
    counts = [len(_slot_keys(manifest, r, 2, w, 2)) for r in range(2) for w in range(2)]
    assert max(counts) - min(counts) <= 2  # remainder shards are split by sample


def test_plan_epoch_covers_every_shard_once():
    for n in (1, 4, 7, 13):
        seen = Counter()
        for slot in range(4):
            for index, stride, offset in plan_epoch(n, seed=3, epoch=2, slot=slot, num_slots=4):
                seen[(index, stride, offset)] += 1
        whole = [i for (i, s, _) in seen if s == 1]
        shared = Counter(i for (i, s, _) in seen if s == 4)
        assert len(whole) + len(shared) == n and all(c == 4 for c in shared.values())


def test_dataloader_workers_match_in_process_slots(shards):
    loader = build_loader(shards, resolution=(18, 10), batch_size=3, seed=7, rank=1, world_size=2,
                          num_workers=2, shuffle_buffer=5, infinite=False)  # fmt: skip
    got = sorted(k for b in loader for k in b["key"])
    expected = sorted(_slot_keys(shards, 1, 2, 0, 2) + _slot_keys(shards, 1, 2, 1, 2))
    assert got == expected and got


def test_shuffle_is_deterministic_by_seed_and_epoch(shards):
    a = _slot_keys(shards, 0, 1, 0, 1)
    assert a == _slot_keys(shards, 0, 1, 0, 1)
    assert sorted(a) == sorted(_slot_keys(shards, 0, 1, 0, 1, epoch=1))
    others = [_slot_keys(shards, 0, 1, 0, 1, epoch=e) for e in (1, 2, 3)]
    assert any(o != a for o in others)
    ordered = _slot_keys(shards, 0, 1, 0, 1, shuffle=False)
    assert ordered == [str(1000 + i) for i in range(12)] and ordered != a


def test_infinite_stream_runs_into_the_next_epoch(shards):
    loader = build_loader(shards, resolution=(18, 10), batch_size=5, seed=1, infinite=True)
    it = iter(loader)
    keys = [k for _ in range(5) for k in next(it)["key"]]  # 25 samples of 12 per epoch
    assert all(len(b) == 5 for b in [keys[i : i + 5] for i in range(0, 25, 5)])
    counts = Counter(keys[:24])
    assert set(counts) == {str(1000 + i) for i in range(12)} and set(counts.values()) == {2}


def test_skips_cse_members_and_lowercases_suffixes(shards):
    manifest = read_manifest(shards)
    from triagan_model.data.loader import ShardPlan

    raw = next(read_shard(ShardPlan(str(manifest.shards[0].path), "normalized", 0)))
    assert "vertices.npy" not in raw and "e_mask.png" not in raw and "E_mask.png" not in raw
    assert {"image.png", "mask.png", "maskrcnn_mask.png", "keypoints.npy"} <= set(raw)


# --- sample content --------------------------------------------------------------------------


def _pixel(img: torch.Tensor, kp: torch.Tensor) -> tuple[int, ...]:
    h, w = img.shape[1:]
    col, row = int(kp[0] * w), int(kp[1] * h)
    return tuple(int(round(float(v))) for v in (img[:, row, col] + 1) * 127.5)


def test_per_sample_flip_keeps_markers_under_keypoints(shards):
    plain = _all(build_loader(shards, batch_size=12, seed=5, flip=False, infinite=False,
                              shuffle=False))  # fmt: skip
    loader = build_loader(shards, batch_size=12, seed=5, flip=True, infinite=False, shuffle=False)
    batch = next(iter(loader))
    flipped = []
    for i, key in enumerate(batch["key"]):
        img, kp = batch["img"][i], batch["keypoints"][i]
        was_flipped = not torch.equal(img, plain[key]["img"])
        flipped.append(was_flipped)
        if was_flipped:
            assert torch.equal(img, torch.flip(plain[key]["img"], dims=(-1,)))
            assert torch.allclose(kp, flip_keypoints(plain[key]["keypoints"]))
        for row in range(17):
            if kp[row, 2] > 0:
                # After a flip, row 5 (left shoulder) lies on the marker painted for row 6.
                source_row = FLIP[row] if was_flipped else row
                assert _pixel(img, kp[row]) == MARKER_COLOURS[source_row], (key, row)
    assert any(flipped) and not all(flipped)  # drawn per sample within one batch


def test_flip_keypoints_swaps_pairs_and_mirrors_visible_only():
    kp = torch.zeros(17, 3)
    kp[:, 0] = torch.linspace(0.1, 0.9, 17)
    kp[:, 2] = 1
    kp[3, 2] = 0
    out = flip_keypoints(kp)
    assert torch.allclose(out[5, 0], 1 - kp[6, 0]) and torch.allclose(out[6, 0], 1 - kp[5, 0])
    assert out[4, 0] == kp[3, 0] and out[4, 2] == 0  # invisible: moved, not mirrored
    assert torch.allclose(flip_keypoints(out), kp)


def test_mask_resize_rule():
    mask = torch.ones(1, 288, 160)
    mask[0, 17, 33] = 0
    small = resize_mask_known(mask, (18, 10))
    assert small[0, 1, 2] == 0 and small.sum() == 18 * 10 - 1


def test_loader_resizes_per_format_doc(shards):
    full = _all(build_loader(shards, batch_size=4, seed=0, flip=False, infinite=False))
    small = _all(build_loader(shards, resolution=(18, 10), batch_size=4, seed=0, flip=False,
                              infinite=False))  # fmt: skip
    for key, s in small.items():
        f = full[key]
        assert s["img"].shape == (3, 18, 10) and s["mask"].shape == (1, 18, 10)
        known = f["mask"][0].reshape(18, 16, 10, 16).amin(dim=(1, 3))
        assert torch.equal(s["mask"][0], known)
        assert torch.equal(s["maskrcnn_mask"][0], f["maskrcnn_mask"][0][::16, ::16])
        assert torch.equal(s["keypoints"], f["keypoints"])
        block = f["img"].reshape(3, 18, 16, 10, 16).mean(dim=(2, 4))  # antialiased ~ box mean
        assert (s["img"] - block).abs().mean() < 0.05
        assert torch.equal(f["condition"], f["img"] * f["mask"])  # unknown region = 0
        assert f["img"].min() >= -1 and f["img"].max() <= 1


def test_pixel_unit_shards_are_normalised_via_the_manifest(tmp_path):
    norm = make_shards(tmp_path / "n", n_shards=1, per_shard=3, units="normalized", seed=4)
    pix = make_shards(tmp_path / "p", n_shards=1, per_shard=3, units="pixels", seed=4)
    a = _all(build_loader(norm, batch_size=3, seed=0, flip=False, infinite=False))
    b = _all(build_loader(pix, batch_size=3, seed=0, flip=False, infinite=False))
    for key in a:
        assert torch.allclose(a[key]["keypoints"], b[key]["keypoints"], atol=1e-6)
        assert b[key]["keypoints"][:, :2].max() <= 1


def test_overlay_replaces_keypoints_for_present_keys(shards, tmp_path):
    rows = np.full((17, 3), 0.25, np.float32)
    rows[:, 2] = 1
    path = tmp_path / "fdh_keypoints_train.json"
    path.write_text(json.dumps({"1003": rows.tolist()}))
    plain = _all(build_loader(shards, batch_size=6, seed=0, flip=False, infinite=False))
    got = _all(build_loader(shards, batch_size=6, seed=0, flip=False, infinite=False,
                            overlay=path))  # fmt: skip
    assert torch.allclose(got["1003"]["keypoints"], torch.from_numpy(rows))
    assert all(torch.equal(got[k]["keypoints"], plain[k]["keypoints"]) for k in got if k != "1003")
    path.write_text(json.dumps({"1": [[0, 0]]}))
    with pytest.raises(OverlayError, match="'1'"):
        load_overlay(path)


# --- prepare -------------------------------------------------------------------------------


def test_prepare_writes_manifests_and_matches_on_the_fly(shards, tmp_path):
    out = tmp_path / "prep"
    rc = triagan_main(["prepare", "--manifest", str(shards), "--resolutions", "18,36",
                       "--out", str(out)])  # fmt: skip
    assert rc == 0
    for h, w in ((18, 10), (36, 20)):
        prepared = out / f"{h}x{w}" / "train.json"
        data = json.loads(prepared.read_text())
        assert data["provenance"]["parent"] == {"path": str(shards.resolve()),
                                                "sha256": manifest_sha256(shards)}  # fmt: skip
        assert data["provenance"]["resolution"] == [h, w]
        assert data["totals"]["samples"] == 12
        read_manifest(prepared, verify=True)
        kw = dict(resolution=(h, w), batch_size=5, seed=3, infinite=False, shuffle_buffer=4)
        want, got = _all(build_loader(shards, **kw)), _all(build_loader(prepared, **kw))
        assert list(want) == list(got)  # same order, same flips
        for key in want:
            a, b = want[key], got[key]
            assert (a["img"] - b["img"]).abs().max() <= 1 / 127.5 + 1e-6
            assert (a["condition"] - b["condition"]).abs().max() <= 2 / 127.5 + 1e-6
            for name in ("mask", "maskrcnn_mask", "keypoints"):
                assert torch.equal(a[name], b[name]), name
    with pytest.raises(ValueError, match="18x10 images: cannot serve 36x20"):
        build_loader(out / "18x10" / "train.json", resolution=(36, 20), batch_size=2, seed=0)
    first = {p.name: p.read_bytes() for p in (out / "18x10").glob("*.tar")}
    assert triagan_main(["prepare", "--manifest", str(shards), "--resolutions", "18",
                         "--out", str(out), "--overwrite"]) == 0  # fmt: skip
    assert first == {p.name: p.read_bytes() for p in (out / "18x10").glob("*.tar")}
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary files left


def test_prepare_rejects_bad_heights(shards, tmp_path, capsys):
    assert triagan_main(["prepare", "--manifest", str(shards), "--resolutions", "17",
                         "--out", str(tmp_path)]) == 1  # fmt: skip
    assert "17" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_a_slot_without_samples_fails_instead_of_hanging(tmp_path):
    from triagan_model.data.loader import build_loader

    manifest = make_shards(tmp_path, n_shards=1, per_shard=1)
    loader = build_loader(manifest, resolution=(18, 10), batch_size=1, seed=0, rank=1,
                          world_size=2, infinite=True)  # fmt: skip
    with pytest.raises(ValueError, match="has no samples"):
        next(iter(loader))


def test_prepare_keeps_splits_apart_and_refuses_another_parent(tmp_path):
    from triagan_model.cli import main as triagan_main
    from triagan_model.data.manifest import read_manifest

    train = make_shards(tmp_path / "a", n_shards=2, per_shard=3)
    val = make_shards(tmp_path / "b", n_shards=1, per_shard=2)
    doc = json.loads(Path(val).read_text())
    doc["split"] = "val"
    Path(val).write_text(json.dumps(doc))
    out = tmp_path / "prepared"
    for manifest in (train, val):
        assert triagan_main(["prepare", "--manifest", str(manifest), "--resolutions", "18",
                             "--out", str(out)]) == 0  # fmt: skip
    sizes = {}
    for split in ("train", "val"):
        prepared = read_manifest(out / "18x10" / f"{split}.json", verify=True)
        assert all(s.path.parent.name == split for s in prepared.shards)
        sizes[split] = prepared.num_samples
    assert sizes == {"train": 6, "val": 2}
    other = make_shards(tmp_path / "c", n_shards=1, per_shard=1)  # another "train" manifest
    assert triagan_main(["prepare", "--manifest", str(other), "--resolutions", "18",
                         "--out", str(out)]) != 0  # fmt: skip
