"""`fdhclean revote`: deciding again from the report reproduces the run or changes just what the
new settings change, through the refine machinery (shards, report, manifest, run.json)."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest
from inspect_run import refine_val

from fdhclean.cli import main
from fdhclean.manifest import Manifest
from fdhclean.shards import decode_keypoints, read_shard


@pytest.fixture(scope="module")
def run(synth_root, tmp_path_factory):
    return refine_val(synth_root, tmp_path_factory.mktemp("revote"))


def revote(split, out, *extra: str) -> int:
    return main(["revote", str(split.parent), "--split", "val", "--out", str(out), *extra])


def shard_digests(split) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(split.glob("out-*.tar"))
    }


def report(split):
    return pq.read_table(split / "report")


def test_same_settings_reproduce_the_run_exactly(run, tmp_path):
    assert revote(run, tmp_path / "again") == 0
    again = tmp_path / "again" / "val"
    assert shard_digests(again) == shard_digests(run)
    assert report(again).equals(report(run))
    manifest = Manifest.read(again / "manifest.json")
    assert manifest.provenance["parent"]["path"] == str(run / "manifest.json")
    assert manifest.provenance["estimator"]["name"] == "report"
    assert manifest.verify(again / "manifest.json") == []
    record = json.loads((again / "run.json").read_text())
    assert record["settings"]["revote"] is True and record["split"] == "val"


def test_opposite_tie_policy_changes_exactly_the_ties(run, synth_root, tmp_path):
    assert revote(run, tmp_path / "orig", "--tie-policy", "original") == 0
    flipped = tmp_path / "orig" / "val"
    before, after = report(run).to_pandas(), report(flipped).to_pandas()
    assert before.tie.sum() >= 2, "the synthetic set must have ties"
    assert before[before.tie].updated.all() and not after[after.tie].updated.any()
    assert (before.updated != after.updated).tolist() == before.tie.tolist()
    rest = [c for c in before.columns if c != "updated"]
    assert report(flipped).select(rest).equals(report(run).select(rest))
    ties = set(before[before.tie].key)
    for name in shard_digests(run):
        originals = {s.key: s for s in read_shard(synth_root / "val" / name)}
        parent = {s.key: s for s in read_shard(run / name)}
        for s in read_shard(flipped / name):
            if s.key not in ties:
                assert s.members == parent[s.key].members, s.key
                continue
            for member, data in s.members.items():  # only keypoints.npy changes back
                if member != "keypoints.npy":
                    assert data == parent[s.key].members[member]
            restored = decode_keypoints(s.members["keypoints.npy"])
            original = decode_keypoints(originals[s.key].members["keypoints.npy"])
            assert restored.dtype == original.dtype and restored.shape == original.shape
            # exact in both units: the report keeps float64, and float32(float64(x) / 160 * 160)
            # is x again for float32 pixels
            assert s.members["keypoints.npy"] == originals[s.key].members["keypoints.npy"]
    # and back again: the tie samples take the estimate, byte for byte as the first run did
    assert revote(flipped, tmp_path / "back", "--tie-policy", "new") == 0
    assert shard_digests(tmp_path / "back" / "val") == shard_digests(run)
    assert report(tmp_path / "back" / "val").equals(report(run))


def test_errors_stay_and_thresholds_apply(run, tmp_path):
    assert revote(run, tmp_path / "strict", "--new-min-score", "0.95") == 0
    strict = tmp_path / "strict" / "val"
    before, after = report(run).to_pandas(), report(strict).to_pandas()
    errors = before.status != "ok"
    assert errors.any(), "the synthetic set must have an error sample"
    assert after[errors][["status", "error"]].equals(before[errors][["status", "error"]])
    assert (after.new_considered[~errors] <= before.new_considered[~errors]).all()
    assert (after.new_considered[~errors] < before.new_considered[~errors]).any()
    record = json.loads((strict / "run.json").read_text())
    assert record["settings"]["new_min_score"] == 0.95
    for name in shard_digests(run):
        parent = {s.key: s for s in read_shard(run / name)}
        for s in read_shard(strict / name):
            if s.key in set(before[errors].key):
                assert s.members == parent[s.key].members


def test_refuses_to_write_into_its_input(run, capsys):
    assert revote(run, run.parent) == 2
    assert "revoted" in capsys.readouterr().out


def test_a_rules_file_that_changed_is_refused_unless_given(synth_root, tmp_path):
    from fdhclean.rules import DEFAULT_RULES

    rules = tmp_path / "rules.toml"
    table = {k: list(v) for k, v in DEFAULT_RULES.accepted.items()}
    rules.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    split = refine_val(synth_root, tmp_path / "run", "--rules", str(rules))
    table["nose"] = ["head", "neck"]  # the file changes after the run
    rules.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    assert revote(split, tmp_path / "inherited") == 2  # the run's rules are no longer there
    assert revote(split, tmp_path / "given", "--rules", str(rules)) == 0  # used as it is now
    given = Manifest.read(tmp_path / "given" / "val" / "manifest.json").provenance
    assert given["rules"]["nose"] == ["head", "neck"]


def export_dp2(split, target) -> bytes:
    args = ["export", str(split.parent), "--split", "val", "--format", "dp2-json"]
    assert main([*args, "--out", str(target)]) == 0
    return target.read_bytes()


@pytest.mark.parametrize(
    "extra",
    [[], ["--tie-policy", "original"], ["--new-min-score", "0.95", "--orig-min-score", "0.2"]],
)
def test_report_only_overlay_equals_the_full_revote(run, tmp_path, extra):
    """The overlay of a report-only revote holds exactly what the full revote's cleaned
    shards hold (its dp2-json export), without reading or writing a shard."""
    assert revote(run, tmp_path / "full", *extra) == 0
    full = export_dp2(tmp_path / "full" / "val", tmp_path / "full.json")
    assert revote(run, tmp_path / "light", "--report-only", *extra) == 0
    light = tmp_path / "light" / "val"
    assert sorted(p.name for p in light.iterdir()) == ["fdh_keypoints_val.json",
                                                       "overlay_manifest.json"]  # fmt: skip
    assert (light / "fdh_keypoints_val.json").read_bytes() == full
    record = json.loads((light / "overlay_manifest.json").read_text())
    expected = Manifest.read(tmp_path / "full" / "val" / "manifest.json").totals
    assert record["totals"]["updated"] == expected["updated"]
    assert record["totals"]["samples"] == expected["samples"]
    assert record["provenance"]["parent"]["path"] == str(run / "manifest.json")
    assert record["overlay_sha256"] == hashlib.sha256(full).hexdigest()
    assert (record["totals"]["changed"] == 0) == (extra == [])  # the others change some


def test_report_only_overlay_loads_in_training(run, tmp_path):
    from triagan_model.data.overlay import load_overlay

    assert revote(run, tmp_path / "o", "--report-only", "--tie-policy", "original") == 0
    overlay = load_overlay(tmp_path / "o" / "val" / "fdh_keypoints_val.json")
    assert set(overlay) == set(report(run).column("key").to_pylist())


def test_report_only_refuses_what_needs_the_maps(run, tmp_path, capsys):
    for extra, message in (
        (["--new-min-score", "0.1"], "below the run's 0.3"),
        (["--rules", str(tmp_path / "r.toml")], "--rules needs the body-part maps"),
    ):
        assert revote(run, tmp_path / "x", "--report-only", *extra) == 2
        assert message in capsys.readouterr().out
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra", [[], ["--report-only"]])
def test_an_unwritable_target_is_a_message_exit_2(run, tmp_path, capsys, extra):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    assert revote(run, blocker / "out", *extra) == 2
    out = capsys.readouterr()
    assert "cannot write" in out.out and "Traceback" not in out.err


def test_sigterm_during_revote_exits_143_without_traceback(run, tmp_path, capsys, monkeypatch):
    import os
    import signal

    import fdhclean.refine.runner as runner

    original = runner.process_shard

    def terminated(*args, **kwargs):  # SLURM's time limit arrives during the first shard
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "process_shard", terminated)
    assert revote(run, tmp_path / "rv") == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in capsys.readouterr().out
    assert not list((tmp_path / "rv" / "val").glob("out-*.tar"))


def test_a_split_with_an_empty_shard_revotes(synth_copy, tmp_path):
    """An empty shard's report has no rows, hence no units to keep: the revote keeps refine's
    rule for a shard without votes (it failed with `mixes keypoint units []`)."""
    from fdhclean.shards import ShardWriter

    with ShardWriter(synth_copy / "val" / "out-000001.tar"):
        pass  # no samples
    args = ["refine", "--split", "val", "--data-root", str(synth_copy), "--out"]
    args += [str(tmp_path / "clean"), "--part-table", str(synth_copy / "parts.npz")]
    assert main([*args, "--predictions", str(synth_copy / "predictions_val.json")]) == 0
    split = tmp_path / "clean" / "val"
    assert revote(split, tmp_path / "again", "--tie-policy", "original") == 0
    marker = json.loads((tmp_path / "again" / "val" / ".done" / "out-000001.json").read_text())
    assert (marker["samples"], marker["keypoint_units"]) == (0, "normalized")
