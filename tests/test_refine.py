"""End-to-end `fdhclean refine` on the synthetic FDH set (refine-spec sections 3-6)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fdhclean.cli import main
from fdhclean.manifest import Manifest
from fdhclean.shards import read_shard

REQUIRED_COLUMNS = [
    "key", "shard", "status", "updated", "tie", "orig_correct", "orig_considered",
    "new_correct", "new_considered", "orig_frac", "new_frac", "orig_correct_mask",
    "orig_considered_mask", "new_correct_mask", "new_considered_mask", "orig_keypoints",
    "new_keypoints", "box", "box_source", "keypoint_units",
]  # fmt: skip


def refine(root: Path, out: Path, *extra: str, split: str = "val") -> int:
    args = ["refine", "--split", split, "--data-root", str(root), "--out", str(out)]
    args += ["--part-table", str(root / "parts.npz")]
    if "--predictions" not in extra and "--estimator" not in extra:
        args += ["--predictions", str(root / f"predictions_{split}.json")]
    return main([*args, *extra])


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every output file except the run-specific ones (timestamps, timings)."""
    skip = {"manifest.json", "refine_summary.json", "run.json"}
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in skip and ".done" not in p.parts
    }


def input_digest(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.tar")}


@pytest.fixture(scope="module")
def val_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    before = input_digest(synth_root)
    assert refine(synth_root, out) == 0
    assert input_digest(synth_root) == before, "inputs must never be modified"
    return out


def test_outputs_and_report(val_run, synth_root):
    split_out = val_run / "val"
    report = pd.read_parquet(split_out / "report")
    assert set(REQUIRED_COLUMNS) <= set(report.columns)
    truth = pd.read_parquet(synth_root / "truth_val.parquet")
    assert sorted(report.key) == sorted(truth.key)
    assert report.groupby("shard").size().to_dict() == truth.groupby("shard").size().to_dict()
    ok = report[report.status == "ok"]
    assert len(ok) > 0 and ok.orig_frac.between(0, 1).all() and ok.new_frac.between(0, 1).all()
    assert all(len(k) == 51 for k in ok.new_keypoints)
    assert (ok.new_correct <= ok.new_considered).all()
    # per-keypoint masks agree with the counts
    popcount = ok.new_correct_mask.map(lambda m: bin(int(m)).count("1"))
    assert (popcount == ok.new_correct).all()
    manifest = Manifest.read(split_out / "manifest.json")
    assert manifest.verify(split_out / "manifest.json") == []
    assert manifest.totals["samples"] == len(report)
    assert manifest.totals["updated"] == int(report.updated.sum())
    assert manifest.provenance["part_table_sha256"]
    assert manifest.provenance["estimator"]["name"] == "predictions"


def test_cleaned_shards_keep_order_and_bytes(val_run, synth_root):
    report = pd.read_parquet(val_run / "val" / "report").set_index("key")
    for src in sorted((synth_root / "val").glob("out-*.tar")):
        originals = read_shard(src)
        cleaned = read_shard(val_run / "val" / src.name)
        assert [s.key for s in cleaned] == [s.key for s in originals]
        for a, b in zip(originals, cleaned, strict=True):
            row = report.loc[a.key]
            for name, data in a.members.items():
                if name != "keypoints.npy" or not row.updated:
                    assert b.members[name] == data, (a.key, name)
            assert list(b.members)[: len(a.members)] == list(a.members)
            # every sample, error samples too, carries the provenance members (drop-in FDH)
            extra = {"keypoints_original.npy", "keypoints_estimated.npy"}
            assert set(b.members) == set(a.members) | extra


def test_updated_keypoints_follow_the_estimate(val_run):
    from fdhclean.shards import decode_keypoints

    report = pd.read_parquet(val_run / "val" / "report")
    row = report[report.updated].iloc[0]
    sample = next(s for s in read_shard(val_run / "val" / row.shard) if s.key == row.key)
    kp = decode_keypoints(sample.get("keypoints.npy")).astype(np.float64)
    est = np.asarray(row.new_keypoints, dtype=np.float64).reshape(17, 3)
    scale = np.array([160.0, 288.0]) if row.keypoint_units == "pixels" else np.ones(2)
    np.testing.assert_allclose(kp[:, :2], est[:, :2] * scale, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(kp[:, 2], np.where(est[:, 2] > 0.3, est[:, 2], 0), atol=1e-6)


def test_vote_picks_the_truly_better_annotation(val_run, synth_root):
    report = pd.read_parquet(val_run / "val" / "report").set_index("key")
    truth = pd.read_parquet(synth_root / "truth_val.parquet").set_index("key")
    clear = truth[truth.better != "unclear"].merge(
        report, left_index=True, right_index=True, suffixes=("", "_r")
    )
    clear = clear[clear.status == "ok"]
    assert len(clear) >= 5, "the synthetic set must contain clear cases"
    expected = clear.better == "estimate"
    assert (clear.updated == expected).all(), clear[clear.updated != expected][["better"]]


def test_rerun_skips_and_is_byte_identical(val_run, synth_root, tmp_path, capsys):
    digest = tree_digest(val_run / "val")
    assert refine(synth_root, val_run) == 0
    assert "0 cleaned, 3 already complete" in capsys.readouterr().err
    assert tree_digest(val_run / "val") == digest
    fresh = tmp_path / "again"
    assert refine(synth_root, fresh) == 0
    assert tree_digest(fresh / "val") == digest


def test_killed_run_resumes_to_the_same_result(val_run, synth_root, tmp_path, monkeypatch):
    import fdhclean.refine.shard_task as task

    calls = {"n": 0}
    real = task.write_report

    def crash_on_second_shard(path, rows):
        calls["n"] += 1
        if calls["n"] == 2:  # shard 2 has written its tar, not yet its report or marker
            raise KeyboardInterrupt("simulated kill")
        real(path, rows)

    monkeypatch.setattr(task, "write_report", crash_on_second_shard)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        refine(synth_root, out)
    assert not (out / "val" / "manifest.json").exists()
    monkeypatch.setattr(task, "write_report", real)
    assert refine(synth_root, out) == 0
    assert tree_digest(out / "val") == tree_digest(val_run / "val")
    assert not list((out / "val").rglob("*.tmp"))


def test_two_ranks_cover_every_shard_once(synth_root, tmp_path):
    out = tmp_path / "ranks"
    assert refine(synth_root, out, "--rank", "1", "--world-size", "2") == 0
    assert not (out / "val" / "manifest.json").exists()
    assert main(["finalize", str(out), "--split", "val"]) == 1  # rank 0 still missing
    done_1 = {p.name for p in (out / "val" / ".done").iterdir()}
    assert refine(synth_root, out, "--rank", "0", "--world-size", "2") == 0
    done = {p.name for p in (out / "val" / ".done").iterdir()}
    inputs = {p.name.replace(".tar", ".json") for p in (synth_root / "val").glob("out-*.tar")}
    assert done == inputs and done_1 and done_1 < done
    manifest = Manifest.read(out / "val" / "manifest.json")
    assert [e.path for e in manifest.shards] == sorted(p.replace(".json", ".tar") for p in inputs)
    assert main(["finalize", str(out), "--split", "val"]) == 0


def test_other_settings_refused_unless_overwrite(val_run, synth_root, tmp_path, capsys):
    out = tmp_path / "conf"
    assert refine(synth_root, out) == 0
    assert refine(synth_root, out, "--tie-policy", "original") == 2
    assert "tie_policy" in capsys.readouterr().err
    assert refine(synth_root, out, "--tie-policy", "original", "--overwrite") == 0
    report = pd.read_parquet(out / "val" / "report")
    assert not report[report.tie].updated.any()


def test_worker_processes_give_the_same_result(val_run, synth_root, tmp_path):
    out = tmp_path / "workers"
    assert refine(synth_root, out, "--workers", "2") == 0
    assert tree_digest(out / "val") == tree_digest(val_run / "val")


def test_config_file_and_environment(synth_root, tmp_path, monkeypatch, capsys):
    config = tmp_path / "fdhclean.toml"
    out = tmp_path / "from-config"
    config.write_text(
        "[refine]\n"
        f'data_root = "{synth_root}"\n'
        f'out = "{out}"\n'
        f'part_table = "{synth_root / "parts.npz"}"\n'
        f'predictions = "{synth_root}/predictions_{{split}}.json"\n'
        "new_min_score = 0.5\n"
    )
    monkeypatch.setenv("FDHCLEAN_CONFIG", str(config))
    monkeypatch.setenv("FDHCLEAN_TIE_POLICY", "original")
    assert main(["refine", "--split", "val", "--dry-run", "--new-min-score", "0.4"]) == 0
    printed = capsys.readouterr().err
    assert "new_min_score = 0.4" in printed and "tie_policy = original" in printed
    assert main(["refine", "--split", "val"]) == 0
    record = json.loads((out / "val" / "run.json").read_text())
    assert record["provenance"]["new_min_score"] == 0.5


def test_missing_settings_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FDHCLEAN_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["refine", "--split", "val"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_register_rebases_paths(val_run, tmp_path, monkeypatch):
    monkeypatch.setenv("FDH_ROOT", str(val_run.parent))
    target_dir = tmp_path / "data_manifests"
    args = ["register", str(val_run), "--split", "val", "--name", "synthetic-v1"]
    assert main([*args, "--manifests-dir", str(target_dir)]) == 0
    registered = target_dir / "synthetic-v1" / "val.json"
    manifest = Manifest.read(registered)
    assert manifest.root == "$FDH_ROOT"
    assert all(e.path.startswith(f"{val_run.name}/val/") for e in manifest.shards)
    assert manifest.verify(registered) == []


def test_per_rank_prediction_files_merge_through_a_glob(val_run, synth_root, tmp_path):
    entries = json.loads((synth_root / "predictions_val.json").read_text())
    parts = tmp_path / "preds"
    parts.mkdir()
    for rank in range(2):  # as `fdhclean estimate --world-size 2 --out preds/val_{rank}.json`
        (parts / f"val_{rank}.json").write_text(json.dumps(entries[rank::2]))
    out = tmp_path / "glob"
    assert refine(synth_root, out, "--predictions", str(parts / "val_*.json")) == 0
    assert tree_digest(out / "val") == tree_digest(val_run / "val")
    provenance = Manifest.read(out / "val" / "manifest.json").provenance["estimator"]
    assert len(provenance["predictions_sha256"]) == 2


def test_rerun_after_a_hard_kill_removes_its_temporaries(val_run, synth_root, tmp_path):
    """A SIGKILL leaves temporary files (no cleanup runs); the rerun that redoes the shard
    removes them and ends identical to an uninterrupted run."""
    import shutil

    out = tmp_path / "hard-kill"
    shutil.copytree(val_run, out)
    split_out = out / "val"
    (split_out / ".done" / "out-000001.json").unlink()  # shard 1 was being written ...
    (split_out / "manifest.json").unlink()
    stale = [
        split_out / ".out-000001.tar.k1ll3d.tmp",
        split_out / "report/.out-000001.parquet.x.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half a shard")
    (split_out / "out-000001.tar").write_bytes(b"torn")  # ... or a torn earlier copy
    assert refine(synth_root, out) == 0
    assert not any(p.exists() for p in stale)
    assert tree_digest(split_out) == tree_digest(val_run / "val")


def test_licence_counts_and_dataset_card_from_metadata(synth_copy, tmp_path):
    import pyarrow.parquet as pq

    truth = pq.read_table(synth_copy / "truth_val.parquet", columns=["key"]).column("key")
    keys = truth.to_pylist()
    licences = ["CC BY 2.0", "CC BY-SA 2.0", "CC BY 2.0"]
    metadata = {k: {"license": licences[i % 3], "author": f"a{i}", "url": f"u{i}",
                    "cateogry": "validation"} for i, k in enumerate(keys)}  # fmt: skip
    (synth_copy / "metadata.json").write_text(json.dumps(metadata))
    out = tmp_path / "licensed"
    assert refine(synth_copy, out) == 0
    provenance = Manifest.read(out / "val" / "manifest.json").provenance
    n = len(keys)
    assert provenance["licenses"] == {"CC BY 2.0": n - n // 3, "CC BY-SA 2.0": n // 3}
    card = (out / "val" / "DATASET_CARD.md").read_text()
    assert f"| CC BY-SA 2.0 | {n // 3} |" in card and "Flickr" in card


def test_integer_pixel_estimates_land_in_their_pixel():
    """Predictions are pixel coordinates (pixel i covers [i, i+1)); normalising them for the
    vote (float64, refine-spec section 3) must keep every integer coordinate in its own pixel."""
    from fdhclean.refine.sample import Sample
    from fdhclean.refine.shard_task import attach_estimates
    from fdhclean.shards import RawSample

    xs, ys = np.arange(160.0), np.arange(288.0)
    for coords, size, axis in ((xs, 160, 0), (ys, 288, 1)):
        samples, estimates = [], {}
        for i, value in enumerate(coords):
            kp = np.full((17, 3), 0.9)
            kp[:, axis] = value
            estimates[str(i)] = kp
            samples.append(Sample(raw=RawSample(key=str(i), shard="s", index=i)))
        attach_estimates(samples, estimates)
        got = np.array([np.floor(s.estimate_norm[0, axis] * size) for s in samples])
        np.testing.assert_array_equal(got, coords)
