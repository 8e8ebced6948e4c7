"""Issue 11 item 5: with an estimator, each shard is read once and E_mask decoded once.

The model runs inside the one streaming pass of `process_shard`, on the person boxes that
`decode_sample` found while decoding what the vote needs; its worker processes (`--workers N`)
each build their own replica and clean whole shards."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_refine import refine
from test_refine_bad_input import _set, doctor_shard
from test_refine_concurrency import _alive, _children, _gone, _more_shards

from fdhclean.decode import encode_png
from fdhclean.estimators.inputs import decode_for_pose, pose_members
from fdhclean.fdh import MEMBER_EMASK, MEMBER_IMAGE, MEMBER_MASK
from fdhclean.refine.sample import STATUS_OK, decode_sample
from fdhclean.shards import RawSample, read_shard

REPO = Path(__file__).resolve().parents[1]


def _model(checkpoint, *extra: str) -> list[str]:
    return ["--estimator", "vitpose-hf", "--checkpoint", str(checkpoint), "--device", "cpu",
            "--batch-size", "8", *extra]  # fmt: skip


def test_each_shard_is_read_once_and_e_mask_decoded_once(
    synth_root, tiny_vitpose, tmp_path, monkeypatch
):
    import fdhclean.refine.sample as sample_module
    from fdhclean import shards

    reads: Counter = Counter()
    original_init = shards.ShardReader.__init__

    def counting_init(self, path, *args, **kwargs):
        reads[Path(path).name] += 1
        original_init(self, path, *args, **kwargs)

    e_masks = [s.members[s.find(MEMBER_EMASK)] for p in _val(synth_root) for s in read_shard(p)]
    decoded: Counter = Counter()
    original_decode = sample_module.decode_mask

    def counting_decode(data, *args, **kwargs):
        decoded["E_mask" if any(data is m or data == m for m in e_masks) else "other"] += 1
        return original_decode(data, *args, **kwargs)

    monkeypatch.setattr(shards.ShardReader, "__init__", counting_init)
    # every E_mask decode of the run goes through this one name (the estimator's own
    # `decode_for_pose` must not be used by refine any more)
    monkeypatch.setattr(sample_module, "decode_mask", counting_decode)
    monkeypatch.setattr("fdhclean.estimators.inputs.decode_mask", counting_decode)
    out = tmp_path / "out"
    assert refine(synth_root, out, *_model(tiny_vitpose[0], "--workers", "0")) == 0
    assert reads == {p.name: 1 for p in _val(synth_root)}  # was 2: one for the estimator
    assert decoded["E_mask"] == len(e_masks) == 36
    assert (pd.read_parquet(out / "val" / "report").status == STATUS_OK).all()


def _val(root: Path) -> list[Path]:
    return sorted((root / "val").glob("out-*.tar"))


def _with(raw: RawSample, **members: bytes) -> RawSample:
    replaced = {raw.find(name) or name: data for name, data in members.items()}
    return RawSample(raw.key, raw.shard, raw.index, {**raw.members, **replaced})


def test_the_sample_box_is_the_box_the_estimator_was_given(synth_root, tmp_path):
    """`Sample.box` (decode_sample) == the box `estimators.inputs.decode_for_pose` computes
    from the same members (what refine's estimator used to be given), for E_mask non-empty,
    E_mask empty (the region to synthesise) and both empty (the whole image)."""
    from fdhclean.parts import PartTable

    vertices = PartTable.load(synth_root / "parts.npz").vertex_parts.shape[0]
    empty = encode_png(np.zeros((288, 160), np.uint8))
    known = encode_png(np.ones((288, 160), np.uint8))
    sources: Counter = Counter()
    for raw in read_shard(_val(synth_root)[0])[:6]:
        for variant in (
            raw,
            _with(raw, **{MEMBER_EMASK: empty}),
            _with(raw, **{MEMBER_EMASK: empty, MEMBER_MASK: known}),
        ):
            sample = decode_sample(variant, vertices)
            assert sample.status == STATUS_OK, sample.error
            _image, box = decode_for_pose(pose_members(variant.find, variant.get))
            assert sample.box == tuple(int(v) for v in box)
            sources[sample.box_source] += 1
    assert sources == {"e_mask": 6, "mask": 6, "image": 6}


def test_an_image_that_does_not_decode_gets_no_estimate(synth_copy, tiny_vitpose, tmp_path):
    """A valid PNG header over junk passes the vote's header check, then fails the image
    decode of the model step: that sample alone is `no-estimate`, with the report's message
    for a sample without an estimate; the run goes on (exit 0)."""
    shard = _val(synth_copy)[1]
    image = read_shard(shard)[4].get(MEMBER_IMAGE)
    keys = doctor_shard(shard, {4: _set("image.png", image[:33] + b"junk" * 50)})
    out = tmp_path / "out"
    assert refine(synth_copy, out, *_model(tiny_vitpose[0], "--workers", "0")) == 0
    report = pd.read_parquet(out / "val" / "report").set_index("key")
    bad = report.loc[keys[4]]
    assert bad.status == "no-estimate" and bad.error == "no prediction for this key"
    assert (report.drop(index=keys[4]).status == STATUS_OK).all()


@pytest.mark.timeout(120)
def test_a_worker_that_cannot_build_the_estimator_fails_the_run(
    synth_root, tiny_vitpose, tmp_path, capsys, monkeypatch
):
    """The weights load here (provenance), then are gone when the spawned workers build
    their replicas: the run stops with the loader's message, exit 2, never hangs."""
    from fdhclean.refine.estimates import ModelSource

    checkpoint = tmp_path / "weights"
    shutil.copytree(tiny_vitpose[0], checkpoint)
    release = ModelSource.release

    def release_then_lose_the_weights(self):
        release(self)
        (checkpoint / "config.json").unlink()

    monkeypatch.setattr(ModelSource, "release", release_then_lose_the_weights)
    out = tmp_path / "out"
    assert refine(synth_root, out, *_model(checkpoint, "--workers", "2")) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "Traceback" not in err
    assert f"fdhclean refine: {checkpoint} is not a transformers ViTPose checkpoint" in err
    assert not any((out / "val" / ".done").glob("*.json"))


def test_a_worker_refuses_weights_changed_since_the_run_loaded_them(
    synth_root, tiny_vitpose, tmp_path, capsys, monkeypatch
):
    """The run records the sha256 of the weights the main process loaded; a replica built
    from other weights (replaced in between) would make keypoints nobody recorded: refused."""
    import torch

    from fdhclean.refine.estimates import ModelSource

    checkpoint, model = tmp_path / "weights", tiny_vitpose[1]
    shutil.copytree(tiny_vitpose[0], checkpoint)
    other = tmp_path / "other"
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
        model.save_pretrained(other)
        for parameter in model.parameters():
            parameter.sub_(0.01)  # (the session's fixture, as it was)
    release = ModelSource.release

    def release_then_replace_the_weights(self):
        release(self)
        for path in other.glob("*.safetensors"):
            shutil.copy(path, checkpoint / path.name)

    monkeypatch.setattr(ModelSource, "release", release_then_replace_the_weights)
    out = tmp_path / "out"
    assert refine(synth_root, out, *_model(checkpoint, "--workers", "1")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "checkpoint sha256 mismatch" in err and "Traceback" not in err
    assert not any((out / "val" / ".done").glob("*.json"))


def test_weights_that_are_not_a_checkpoint_are_a_setting_error(
    synth_root, tiny_vitpose, tmp_path, capsys
):
    """Built in the main process: the loader's message, exit 2 (it was reported as an OUT that
    cannot be set up, `choose an --out that is writable`)."""
    checkpoint = tmp_path / "weights"
    shutil.copytree(tiny_vitpose[0], checkpoint)
    (checkpoint / "config.json").unlink()
    assert refine(synth_root, tmp_path / "out", *_model(checkpoint, "--workers", "0")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"fdhclean refine: {checkpoint} is not a transformers ViTPose checkpoint" in err
    assert "--out" not in err and "Traceback" not in err


def _spawned_workers(pid: int, count: int) -> list[int]:
    """The pool's spawned workers (not multiprocessing's resource tracker), once started."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [
            c for c in _children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
        ]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError("the workers never started")


@pytest.mark.timeout(180)
def test_a_dead_model_worker_fails_its_shards_with_the_usual_message(
    synth_copy, tiny_vitpose, tmp_path
):
    _more_shards(synth_copy, copies=3)
    argv = ["refine", "--split", "val", "--data-root", str(synth_copy), "--out",
            str(tmp_path / "out"), "--part-table", str(synth_copy / "parts.npz"),
            *_model(tiny_vitpose[0], "--workers", "2")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen(
        [sys.executable, "-m", "fdhclean.cli", *argv], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    workers = _spawned_workers(run.pid, 2)
    try:
        time.sleep(1.0)  # both are building their replica or cleaning a shard
        os.kill(workers[0], signal.SIGKILL)
        _, err = run.communicate(timeout=120)
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    err = " ".join(err.split())
    assert run.returncode == 1, err
    assert "a worker process died (out of memory?); rerun to resume" in err
    assert "Traceback" not in err
    assert _gone(workers)


def test_blocks_hold_a_whole_model_batch(synth_root, tiny_vitpose, tmp_path, monkeypatch):
    """Model batches are cut from a block's samples, so a block holds at least --batch-size
    samples (a --batch-size above the block size was silently capped by it)."""
    from fdhclean.refine import shard_task
    from fdhclean.refine.estimates import ModelEstimates

    sizes: list[int] = []
    for_samples = ModelEstimates.for_samples
    monkeypatch.setattr(
        ModelEstimates, "for_samples", lambda self, s: sizes.append(len(s)) or for_samples(self, s)
    )
    monkeypatch.setattr(shard_task, "CHUNK", 5)
    args = _model(tiny_vitpose[0], "--workers", "0")
    at = args.index("--batch-size")
    args[at + 1] = "12"
    assert refine(synth_root, tmp_path / "out", *args) == 0
    assert sizes and set(sizes) == {12}  # each 12-sample shard in one block, not 5 + 5 + 2
