"""The manifest is the only contract between `fdhclean` and `triagan_model` (docs/manifest.md):
what one writes the other reads the same way, and the FDH facts both keep agree."""

from __future__ import annotations

import numpy as np
import pytest

from fdhclean import fdh as clean_fdh
from fdhclean.cli import main
from fdhclean.manifest import Manifest
from triagan_model.data import fdh as train_fdh
from triagan_model.data.manifest import ManifestError, read_manifest
from triagan_model.networks.conditioning import COCO_FLIP_PERMUTATION


def test_fdh_facts_agree():
    assert (train_fdh.IMAGE_H, train_fdh.IMAGE_W) == (clean_fdh.IMAGE_H, clean_fdh.IMAGE_W)
    assert train_fdh.FLIP_PERMUTATION == clean_fdh.FLIP_PERMUTATION == COCO_FLIP_PERMUTATION
    np.testing.assert_array_equal(train_fdh.COCO_SIGMAS, clean_fdh.COCO_SIGMAS)
    assert set(train_fdh.KEYPOINT_UNITS) == {clean_fdh.UNITS_NORMALIZED, clean_fdh.UNITS_PIXELS}


@pytest.fixture(scope="module")
def cleaned(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("contract")
    args = ["refine", "--split", "train", "--data-root", str(synth_root), "--out", str(out)]
    args += ["--part-table", str(synth_root / "parts.npz")]
    assert main([*args, "--predictions", str(synth_root / "predictions_train.json")]) == 0
    return out


def test_training_reads_what_cleaning_writes(cleaned):
    path = cleaned / "train" / "manifest.json"
    written = Manifest.read(path)
    read = read_manifest(path, verify=True)
    assert read.split == written.split == "train"
    assert read.num_samples == written.totals["samples"]
    for ours, theirs in zip(written.shards, read.shards, strict=True):
        assert theirs.path == written.shard_path(ours, path)
        assert (theirs.samples, theirs.sha256, theirs.bytes) == (
            ours.samples,
            ours.sha256,
            ours.bytes,
        )
        assert theirs.keypoint_units == ours.keypoint_units


def test_registered_manifest_reads_through_the_root_variable(cleaned, tmp_path, monkeypatch):
    monkeypatch.setenv("FDH_ROOT", str(cleaned))
    args = ["register", str(cleaned), "--split", "train", "--name", "contract"]
    assert main([*args, "--manifests-dir", str(tmp_path)]) == 0
    read = read_manifest(tmp_path / "contract" / "train.json", verify=True)
    assert all(s.path.is_relative_to(cleaned) for s in read.shards)
    monkeypatch.delenv("FDH_ROOT")
    with pytest.raises(ManifestError, match="FDH_ROOT"):
        read_manifest(tmp_path / "contract" / "train.json")


def test_training_detects_a_changed_shard(cleaned, tmp_path):
    import shutil

    copy = tmp_path / "train"
    shutil.copytree(cleaned / "train", copy)
    shard = sorted(copy.glob("out-*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=shard.name):
        read_manifest(copy / "manifest.json", verify=True)
