"""Manifest: schema round trip, verification, root resolution, the manifest/verify commands."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fdhclean import fdh
from fdhclean.cli import main
from fdhclean.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    Manifest,
    ManifestError,
    ShardEntry,
    base_provenance,
    build_manifest,
    listing_hash,
    sha256_file,
    shard_entry,
)
from fdhclean.shards import ShardWriter, encode_npy


def write_shard(path: Path, keys: list[str], *, pixels: bool = False) -> Path:
    """A small shard whose keypoints are in normalised (or pixel) units."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(keys))
    with ShardWriter(path) as writer:
        for key in keys:
            kp = rng.uniform(0.1, 0.9, (17, 3)).astype(np.float32)
            if pixels:
                kp[:, :2] *= (fdh.IMAGE_W, fdh.IMAGE_H)
            writer.write(key, {"image.png": rng.bytes(50), "keypoints.npy": encode_npy(kp)})
    return path


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "fdh"
    write_shard(root / "train" / "out-000000.tar", ["1", "2", "3"])
    write_shard(root / "train" / "out-000001.tar", ["4", "5"], pixels=True)
    return root


def make_manifest(root: Path) -> tuple[Manifest, Path]:
    split = root / "train"
    shards = sorted(split.glob("out-*.tar"))
    provenance = base_provenance("test")
    manifest = build_manifest(
        shards, split="train", base_dir=split, provenance=provenance, totals={"updated": 1}
    )
    path = split / "manifest.json"
    manifest.write(path)
    return manifest, path


def test_build_write_read_round_trip(dataset: Path) -> None:
    manifest, path = make_manifest(dataset)
    assert [e.path for e in manifest.shards] == ["out-000000.tar", "out-000001.tar"]
    assert [e.samples for e in manifest.shards] == [3, 2]
    assert [e.keypoint_units for e in manifest.shards] == ["normalized", "pixels"]
    first = dataset / "train" / "out-000000.tar"
    assert manifest.shards[0].bytes == first.stat().st_size
    assert manifest.shards[0].sha256 == hashlib.sha256(first.read_bytes()).hexdigest()
    assert manifest.totals == {"samples": 5, "bytes": sum(e.bytes for e in manifest.shards),
                               "updated": 1}  # fmt: skip
    assert manifest.provenance["parent"] is None
    assert manifest.provenance["package_version"]
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith("{\n  ")
    raw = json.loads(text)
    assert list(raw) == sorted(raw)
    assert raw["format"] == MANIFEST_FORMAT and raw["version"] == MANIFEST_VERSION
    assert raw["root"] is None
    assert Manifest.read(path) == manifest
    assert manifest.verify(path) == []
    assert manifest.verify(path, check_samples=True) == []
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_from_dict_rejects_unknown(dataset: Path) -> None:
    manifest, _ = make_manifest(dataset)
    good = manifest.to_dict()
    for change, message in [
        ({"format": "webdataset"}, "format"),
        ({"version": 2}, "version 2"),
        ({"version": "1"}, "version"),
    ]:
        with pytest.raises(ManifestError, match=message):
            Manifest.from_dict({**good, **change})
    bad_shard = {**good["shards"][0], "keypoint_units": "cm"}
    with pytest.raises(ManifestError, match="keypoint_units"):
        Manifest.from_dict({**good, "shards": [bad_shard]})
    with pytest.raises(ManifestError, match="relative"):
        Manifest.from_dict({**good, "shards": [{**good["shards"][0], "path": "/abs.tar"}]})
    with pytest.raises(ManifestError, match="split"):
        Manifest.from_dict({k: v for k, v in good.items() if k != "split"})


def test_verify_catches_changes(dataset: Path) -> None:
    manifest, path = make_manifest(dataset)
    shard = dataset / "train" / "out-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x01  # one byte inside a member: same size, different hash
    shard.write_bytes(bytes(data))
    problems = manifest.verify(path)
    assert len(problems) == 1 and "out-000000.tar" in problems[0] and "sha256" in problems[0]
    assert manifest.verify(path, check_hash=False) == []
    shard.write_bytes(bytes(data) + b"\0" * 512)
    problems = manifest.verify(path)
    assert len(problems) == 1 and "size" in problems[0]
    shard.unlink()
    assert any("missing" in p and "out-000000.tar" in p for p in manifest.verify(path))


def test_verify_sample_count(dataset: Path) -> None:
    manifest, path = make_manifest(dataset)
    entry = manifest.shards[1]
    wrong = ShardEntry(entry.path, entry.samples + 1, entry.bytes, entry.sha256, "pixels")
    manifest.shards[1] = wrong
    assert manifest.verify(path) != []  # totals.samples no longer matches the shards
    problems = manifest.verify(path, check_samples=True)
    assert any("out-000001.tar: 2 samples, manifest says 3" in p for p in problems)


def test_fdh_root_resolution(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    entries = [shard_entry(p, base=dataset) for p in sorted(dataset.glob("train/*.tar"))]
    assert entries[0].path == "train/out-000000.tar"
    manifest = build_manifest(
        entries, split="train", base_dir=dataset, provenance={}, root="$FDH_ROOT"
    )
    registered = tmp_path / "data_manifests" / "fdh" / "train.json"
    registered.parent.mkdir(parents=True)
    manifest.write(registered)
    monkeypatch.delenv("FDH_ROOT", raising=False)
    with pytest.raises(ManifestError, match="FDH_ROOT"):
        manifest.shard_path(entries[0], registered)
    monkeypatch.setenv("FDH_ROOT", str(dataset))
    assert manifest.shard_path(entries[0], registered) == dataset / "train/out-000000.tar"
    assert Manifest.read(registered).verify(registered) == []
    manifest.root = str(dataset)  # a plain absolute root
    assert manifest.shard_path(entries[1], registered) == dataset / "train/out-000001.tar"
    monkeypatch.setenv("FDH_ROOT", str(tmp_path / "elsewhere"))
    manifest.root = "$FDH_ROOT"
    assert len(manifest.verify(registered)) == 2


def test_listing_hash_is_order_free_and_sensitive(dataset: Path) -> None:
    manifest, _ = make_manifest(dataset)
    entries = manifest.shards
    lines = "".join(f"{e.path}\t{e.bytes}\t{e.sha256}\n" for e in entries)
    assert listing_hash(entries) == hashlib.sha256(lines.encode()).hexdigest()
    assert listing_hash(reversed(entries)) == listing_hash(entries)
    changed = ShardEntry(entries[0].path, 3, entries[0].bytes + 1, entries[0].sha256, "normalized")
    assert listing_hash([changed, entries[1]]) != listing_hash(entries)


def test_shard_entry_given_values_and_bad_base(dataset: Path, tmp_path: Path) -> None:
    shard = dataset / "train" / "out-000001.tar"
    entry = shard_entry(shard, keypoint_units="normalized", base=dataset / "train")
    assert (entry.samples, entry.keypoint_units) == (2, "normalized")
    assert entry.sha256 == sha256_file(shard, chunk=7)
    with pytest.raises(ValueError, match="not under"):
        shard_entry(shard, base=tmp_path / "other")
    with pytest.raises(ValueError, match="samples"):
        build_manifest([shard], split="train", base_dir=shard.parent, provenance={},
                       totals={"samples": 99})  # fmt: skip


def test_parent_provenance(dataset: Path) -> None:
    _, path = make_manifest(dataset)
    prov = base_provenance("fdhclean refine", parent=path)
    assert prov["parent"] == {"path": str(path), "sha256": sha256_file(path)}
    assert prov["tool"] == "fdhclean refine"


def test_manifest_and_verify_commands(dataset: Path, tmp_path: Path, capsys) -> None:
    out = dataset / "train" / "manifest.json"
    assert main(["manifest", "--data-root", str(dataset), "--split", "train",
                 "--out", str(out)]) == 0  # fmt: skip
    manifest = Manifest.read(out)
    assert manifest.root is None and manifest.provenance["parent"] is None
    assert manifest.provenance["tool"] == "fdhclean manifest"
    assert manifest.provenance["listing_hash"] == listing_hash(manifest.shards)
    assert [e.keypoint_units for e in manifest.shards] == ["normalized", "pixels"]
    assert main(["verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out

    # Outside the data root: paths relative to the (absolute) data root.
    elsewhere = tmp_path / "m" / "train.json"
    elsewhere.parent.mkdir()
    assert main(["manifest", "--data-root", str(dataset), "--split", "train",
                 "--out", str(elsewhere)]) == 0  # fmt: skip
    other = Manifest.read(elsewhere)
    assert other.root == str(dataset.resolve())
    assert other.shards[0].path == "train/out-000000.tar"
    assert main(["verify", str(elsewhere), "--samples"]) == 0

    shard = dataset / "train" / "out-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    assert "out-000001.tar" in capsys.readouterr().out
    assert main(["verify", str(out), "--no-hash"]) == 0


def test_manifest_command_failures(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.json"
    assert main(["manifest", "--data-root", str(dataset), "--split", "val",
                 "--out", str(out)]) == 1  # fmt: skip
    assert "val" in capsys.readouterr().err
    shard = dataset / "train" / "out-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    assert main(["manifest", "--data-root", str(dataset), "--split", "train",
                 "--out", str(out)]) == 1  # fmt: skip
    assert "out-000001.tar" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "bad.json").write_text(json.dumps({"format": "fdh-manifest", "version": 9}))
    assert main(["verify", str(tmp_path / "bad.json")]) == 1
    assert "version 9" in capsys.readouterr().err
