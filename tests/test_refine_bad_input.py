"""Bad input never stops a run silently: per-sample status codes, per-shard failures."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd

from fdhclean.cli import main
from fdhclean.shards import ShardWriter, read_shard


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def doctor_shard(path, edits):
    """Rewrite a shard with `edits[index](members) -> members` applied to some samples."""
    samples = read_shard(path)
    with ShardWriter(path) as writer:
        for s in samples:
            members = dict(s.members)
            if s.index in edits:
                members = edits[s.index](members)
            writer.write(s.key, members)
    return [s.key for s in samples]


def _drop(name):
    return lambda m: {k: v for k, v in m.items() if k.lower() != name}


def _set(name, data):
    def edit(m):
        stored = next(k for k in m if k.lower() == name)
        return {k: (data if k == stored else v) for k, v in m.items()}

    return edit


def test_bad_samples_get_codes_and_bad_shards_fail_alone(synth_copy, tmp_path, capsys):
    val = synth_copy / "val"
    shards = sorted(val.glob("out-*.tar"))
    nan_kp = np.full((17, 3), np.nan, dtype=np.float32)
    keys = doctor_shard(
        shards[0],
        {
            0: _drop("vertices.npy"),
            1: _set("e_mask.png", b"not a png"),
            2: _set("vertices.npy", _npy(np.zeros((100, 100), np.int32))),
            3: _set("keypoints.npy", _npy(nan_kp)),
            4: _set("vertices.npy", _npy(np.full((288, 160), 10**6, np.int32))),
        },
    )
    predictions = json.loads((synth_copy / "predictions_val.json").read_text())
    (synth_copy / "predictions_val.json").write_text(
        json.dumps([p for p in predictions if str(p["image_id"]) != keys[5]])
    )
    data = shards[2].read_bytes()
    shards[2].write_bytes(data[: len(data) // 2])  # truncated mid-way
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}

    out = tmp_path / "out"
    code = main(
        ["refine", "--split", "val", "--data-root", str(synth_copy), "--out", str(out),
         "--part-table", str(synth_copy / "parts.npz"),
         "--predictions", str(synth_copy / "predictions_val.json")]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert shards[2].name in captured.err and "FAILED" in captured.err
    assert "updated" in captured.out  # the summary is still printed
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}
    assert after == before, "inputs must never be modified"

    report = pd.read_parquet(out / "val" / "report").set_index("key")
    assert set(report.shard) == {shards[0].name, shards[1].name}
    status = report.status.to_dict()
    assert [status[k] for k in keys[:6]] == [
        "bad-member", "bad-member", "bad-member", "bad-keypoints", "bad-member", "no-estimate",
    ]  # fmt: skip
    bad = report.loc[keys[:6]]
    assert bad.orig_frac.isna().all() and bad.new_frac.isna().all()
    assert not bad.updated.any()
    assert bad.error.notna().all()
    # failed samples are copied unchanged; they only gain the two provenance members that
    # every sample of a cleaned shard has (a drop-in FDH: one member set per shard)
    originals = {s.key: s.members for s in read_shard(shards[0])}
    for s in read_shard(out / "val" / shards[0].name):
        if s.key in keys[:6]:
            extra = {"keypoints_original.npy", "keypoints_estimated.npy"}
            assert set(s.members) == set(originals[s.key]) | extra
            assert {k: v for k, v in s.members.items() if k not in extra} == originals[s.key]
    assert not (out / "val" / "manifest.json").exists()


def _refine(root, out, *extra):
    return main(
        ["refine", "--split", "val", "--data-root", str(root), "--out", str(out),
         "--part-table", str(root / "parts.npz"),
         "--predictions", str(root / "predictions_val.json"), *extra]
    )  # fmt: skip


def test_a_bad_shard_fails_alone_with_worker_processes(synth_copy, tmp_path, capsys):
    shards = sorted((synth_copy / "val").glob("out-*.tar"))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 3])
    assert _refine(synth_copy, tmp_path / "out", "--workers", "2") == 1
    err = capsys.readouterr().err
    assert f"FAILED {shards[1].name}: cannot read shard" in err
    done = sorted(p.name for p in (tmp_path / "out" / "val" / ".done").iterdir())
    assert done == [s.name.replace(".tar", ".json") for s in shards if s != shards[1]]


def test_output_inside_the_input_is_refused(synth_copy, capsys):
    before = {p.name: p.read_bytes() for p in (synth_copy / "val").glob("out-*.tar")}
    assert _refine(synth_copy, synth_copy) == 2
    assert "input split" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (synth_copy / "val").glob("out-*.tar")} == before


def test_missing_members_and_lost_outputs(synth_copy, tmp_path):
    shards = sorted((synth_copy / "val").glob("out-*.tar"))
    keys = doctor_shard(shards[0], {0: _drop("image.png"), 1: _drop("maskrcnn_mask.png")})
    out = tmp_path / "out"
    assert _refine(synth_copy, out) == 0
    report = pd.read_parquet(out / "val" / "report").set_index("key")
    assert list(report.loc[keys[:2], "status"]) == ["bad-member", "bad-member"]
    assert "image.png" in report.loc[keys[0], "error"]
    # a cleaned shard lost after its marker was written is redone, not trusted
    lost = out / "val" / shards[2].name
    digest = hashlib.sha256(lost.read_bytes()).hexdigest()
    lost.unlink()
    assert _refine(synth_copy, out) == 0
    assert hashlib.sha256(lost.read_bytes()).hexdigest() == digest


def test_integer_keypoints_are_rounded_not_truncated():
    from fdhclean.vote import chosen_keypoints

    original = np.zeros((17, 3), dtype=np.int32)
    estimate = np.tile([0.5, 0.5, 0.9], (17, 1))
    estimate[0] = [0.9999, 0.2, 0.2]  # below the score threshold: v = 0
    out = chosen_keypoints(original, estimate, True, 0.3, "pixels")
    assert out.dtype == np.int32
    assert out[1].tolist() == [80, 144, 1] and out[0].tolist() == [160, 58, 0]


def _rekey(keys):
    """Rewrite a shard giving sample i the key keys[i] (where given)."""

    def apply(path):
        samples = read_shard(path)
        with ShardWriter(path) as writer:
            for s in samples:
                writer.write(keys.get(s.index, s.key), dict(s.members))

    return apply


def test_keys_that_are_not_integers_are_decided_per_sample(synth_copy, tmp_path, capsys):
    """Issue 12 class 3: 'abc', an absolute path, '../x' -> no-estimate rows naming the key;
    the manifest is still written and `finalize` runs without a traceback."""
    shards = sorted((synth_copy / "val").glob("out-*.tar"))
    _rekey({0: "abc", 1: "/abs/x", 2: "../x"})(shards[1])
    out = tmp_path / "out"
    assert _refine(synth_copy, out) == 0
    report = pd.read_parquet(out / "val" / "report")
    bad = report[report.key.isin(["abc", "/abs/x", "../x"])]
    assert len(bad) == 3 and set(bad.status) == {"no-estimate"}
    assert all("is not an integer" in e for e in bad.error)
    manifest = json.loads((out / "val" / "manifest.json").read_text())
    assert manifest["totals"]["errors"]["no-estimate"] >= 3
    capsys.readouterr()
    assert main(["finalize", str(out), "--split", "val"]) == 0
    (out / "val" / "run.json").write_text("{not json")
    assert main(["finalize", str(out), "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert "run.json" in err and "Traceback" not in err


def test_an_input_changed_with_the_same_size_is_redone(synth_copy, tmp_path, capsys):
    """Issue 12 class 7: the marker identifies the input by its sha256, not its size."""
    out = tmp_path / "out"
    assert _refine(synth_copy, out) == 0
    shard = sorted((synth_copy / "val").glob("out-*.tar"))[1]
    size = shard.stat().st_size
    moved = np.tile(np.array([0.5, 0.5, 1.0], np.float32), (17, 1))
    doctor_shard(shard, {0: _set("keypoints.npy", _npy(moved))})
    assert shard.stat().st_size == size
    capsys.readouterr()
    assert _refine(synth_copy, out) == 0
    assert "1 cleaned, 2 already complete" in capsys.readouterr().err
    manifest = json.loads((out / "val" / "manifest.json").read_text())
    summary = json.loads((out / "val" / "refine_summary.json").read_text())
    recorded = {s["shard"]: s["input_sha256"] for s in summary["shards"]}
    assert recorded[shard.name] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert manifest["totals"]["samples"] == 36


def _dying_worker_task(shard_path):
    """A worker killed mid-shard (SIGKILL / the OOM killer): the process vanishes."""
    import os

    os._exit(9)


def test_a_worker_dying_fails_the_remaining_shards_with_one_message(
    synth_copy, tmp_path, capsys, monkeypatch
):
    import fdhclean.refine.runner as runner

    monkeypatch.setattr(runner, "_worker_task", _dying_worker_task)  # forked workers inherit it
    val = synth_copy / "val"
    for i in range(3):  # more shards than the pool keeps in flight: a submit meets the dead pool
        (val / f"out-00001{i}.tar").write_bytes((val / f"out-00000{i}.tar").read_bytes())
    assert _refine(synth_copy, tmp_path / "out", "--workers", "1") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    shards = sorted(p.name for p in (synth_copy / "val").glob("out-*.tar"))
    for name in shards:
        assert f"FAILED {name}: a worker process died (out of memory?); rerun to resume" in err
    assert not (tmp_path / "out" / "val" / ".done").exists() or not any(
        (tmp_path / "out" / "val" / ".done").iterdir()
    )
