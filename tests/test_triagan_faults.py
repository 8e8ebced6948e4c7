"""triagan_model under faults (issue 12, classes 10-12): one atomic writer and one hash helper,
killed training, damaged checkpoints and weights, shards that differ from their manifest,
junk members and samples refine marked as errors."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
from pathlib import Path

import numpy as np
import pytest

from triagan_model.atomic import atomic_open, atomic_path, atomic_write_bytes, sha256_file

PACKAGE = Path(__file__).resolve().parents[1] / "triagan_model"


# ---------------------------------------------------------------- class 12: one way to write


def test_atomic_path_replaces_only_on_success_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "x.npz"
    with atomic_path(target) as tmp:
        assert tmp.endswith(".npz") and Path(tmp).parent == target.parent
        np.savez(tmp, a=np.arange(3))  # writes exactly `tmp` (no ".npz" appended)
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    assert target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert np.load(target)["a"].tolist() == [0, 1, 2]  # the old file is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.npz"]  # no temp left


def test_atomic_open_text_and_bytes(tmp_path):
    with atomic_open(tmp_path / "a.txt", "w") as fh:
        fh.write("ü\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "ü\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="writes only"):
        atomic_open(tmp_path / "c", "a").__enter__()


def _hold_temp(target: str, queue) -> None:
    with atomic_path(target) as tmp:
        queue.put(tmp)
        Path(tmp).write_bytes(b"child")
        queue.get()  # wait until the parent has written the same target


def test_two_processes_writing_one_target_never_share_a_temp_name(tmp_path):
    target = tmp_path / "stats.jsonl"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_hold_temp, args=(str(target), queue))
    child.start()
    child_tmp = queue.get(timeout=30)
    with atomic_path(target) as tmp:
        assert tmp != child_tmp
        Path(tmp).write_bytes(b"parent")
    queue.put("go")
    child.join(30)
    assert child.exitcode == 0  # its temp file was not removed under it
    assert target.read_bytes() == b"child"  # last rename wins; both were complete files


def test_sha256_file_streams_and_matches_hashlib(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (3 << 20) + 17, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_every_write_and_hash_goes_through_the_helpers():
    """No module but atomic.py renames a temporary file or hashes a file by hand, and no
    module but devices.py resolves --device auto."""
    rules = {
        "atomic.py": re.compile(r"os\.replace\(|mkstemp\(|\.with_name\(f\"\.\{.*tmp"),
        "devices.py": re.compile(r"\"cuda\" if torch\.cuda\.is_available\(\)"),
    }
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for owner, pattern in rules.items():
            if path.name != owner and pattern.search(text):
                offenders.append(f"{path.relative_to(PACKAGE)} ({owner})")
        if path.name != "atomic.py" and re.search(r"\.read\((1 << 20|_HASH_CHUNK)\)", text):
            offenders.append(f"{path.relative_to(PACKAGE)} (sha256_file)")
    assert offenders == []


# ---------------------------------------------------------------- class 10: resume and weights

TOML = (
    'base = "A-tiny"\nname = "test-faults"\n[loss]\nkind = "masked-hinge"\n'
    "[generator]\nw_dim = 64\nz_dim = 16\n"
    "[[stages]]\nresolution = [18, 10]\ndim = 16\ndim_mults = [1, 1]\nbatch = 2\nkimg = 0.006\n"
    "[[stages]]\nresolution = [36, 20]\ndim = 16\ndim_mults = [1, 1, 1]\nbatch = 2\nkimg = 0.002\n"
)
STAGES = ("18x10", "36x20")

# Runs `triagan train` with checkpoint.save wrapped so that the process SIGKILLs itself right
# after writing the checkpoint at image KILL_AT of stage KILL_STAGE (before the EMA weights).
KILLER = """
import os, signal, sys
from pathlib import Path
from triagan_model.training import checkpoint
real = checkpoint.save
def save_then_die(directory, nimg, state, keep=2):
    out = real(directory, nimg, state, keep)
    stage, at = os.environ["KILL_STAGE"], int(os.environ["KILL_AT"])
    if Path(directory).parent.name == stage and nimg == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
checkpoint.save = save_then_die
from triagan_model.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train_args(cfg: Path, manifest: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(cfg), "--manifest", str(manifest), "--run-dir", str(run),
            "--device", "cpu", "--workers", "0", "--tick-kimg", "0.002", "--grid-size", "2",
            "--no-progress", "--snapshot-ticks", "1", "--image-ticks", "4", *extra]  # fmt: skip


def _train(args: list[str]) -> int:
    import warnings

    from triagan_model.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny-config warning
        return main(args)


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    from triagan_shards import make_shards

    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=5)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_manifest) -> tuple[Path, Path]:
    """(config, run dir) of an uninterrupted two-stage run: 3 + 1 steps, a checkpoint each."""
    d = tmp_path_factory.mktemp("reference")
    cfg = d / "c.toml"
    cfg.write_text(TOML)
    assert _train(_train_args(cfg, tiny_manifest, d / "run")) == 0
    return cfg, d / "run"


def _weights_sha(run: Path, stage: str) -> str:
    return sha256_file(run / stage / "weights" / "generator.safetensors")


def test_sigkill_after_the_final_checkpoint_rerun_finishes_the_weights(
    tmp_path, tiny_manifest, reference_run, capsys
):
    import os
    import signal
    import subprocess
    import sys

    cfg, ref = reference_run
    run = tmp_path / "run"
    env = {**os.environ, "KILL_STAGE": "18x10", "KILL_AT": "6",
           "PYTHONPATH": str(PACKAGE.parent), "PYTHONWARNINGS": "ignore"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", KILLER, *_train_args(cfg, tiny_manifest, run)],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    doc = json.loads((run / "18x10" / "weights" / "generator.json").read_text())
    assert doc["nimg"] == 4  # the kill left step 2's weights beside step 3's checkpoint
    assert not (run / "18x10" / "stage-complete.json").exists()
    assert _train(_train_args(cfg, tiny_manifest, run)) == 0
    assert "weights are at 4 images, the checkpoint at 6" in capsys.readouterr().out
    for stage in STAGES:  # the stage's weights, and so the next stage's, as if never killed
        assert _weights_sha(run, stage) == _weights_sha(ref, stage), stage
    assert json.loads((run / "18x10" / "weights" / "generator.json").read_text())["nimg"] == 6


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside the tensor data (past the header), so safetensors still loads it."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + (len(data) - start) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_flipped_bytes_is_moved_aside_and_the_previous_used(
    tmp_path, tiny_manifest, reference_run, capsys
):
    from triagan_model.training import checkpoint

    cfg, ref = reference_run
    run = tmp_path / "run"
    assert _train(_train_args(cfg, tiny_manifest, run, "--slice-kimg", "0.004")) == 0
    ckpts = run / "18x10" / "checkpoints"
    newest = checkpoint.list_states(ckpts)[0]
    assert newest.name == "state-000000000004.safetensors"
    _flip_tensor_byte(newest)
    checkpoint.load(newest)  # safetensors alone does not notice
    capsys.readouterr()
    assert _train(_train_args(cfg, tiny_manifest, run)) == 0
    out = capsys.readouterr().out
    assert f"{newest} moved aside" in out and "is not the recorded" in out
    assert "resuming from" in out and "state-000000000002.safetensors (2 images)" in out
    assert (ckpts / f"{newest.name}.unreadable").is_file()
    for stage in STAGES:
        assert _weights_sha(run, stage) == _weights_sha(ref, stage), stage


def test_a_checkpoint_without_its_record_is_not_trusted(tmp_path, capsys):
    import torch

    from triagan_model.training import checkpoint

    for nimg in (2, 4):
        checkpoint.save(tmp_path, nimg, {"x": torch.full((3,), float(nimg))})
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "state-000000000004.safetensors.sha256"
    checkpoint.sidecar_path(checkpoint.state_path(tmp_path, 4)).unlink()  # killed in between
    path, state = checkpoint.load_latest(tmp_path)
    assert path.name.endswith("02.safetensors") and state["x"].tolist() == [2.0, 2.0, 2.0]
    assert "stopped before recording it" in capsys.readouterr().out
    # A directory from before sidecars existed: loaded, with a warning.
    for side in tmp_path.glob("*.safetensors.sha256"):
        side.unlink()
    assert checkpoint.load_latest(tmp_path)[0].name.endswith("02.safetensors")
    assert "no recorded sha256 (older run)" in capsys.readouterr().out


@pytest.fixture()
def weights_dir(tmp_path, reference_run) -> Path:
    import shutil

    d = tmp_path / "weights"
    shutil.copytree(reference_run[1] / "18x10" / "weights", d)
    return d


def _generate(weights: Path, manifest: Path, out: Path, capsys) -> tuple[int, str]:
    from triagan_model.cli import main

    capsys.readouterr()
    rc = main(["generate", "--weights", str(weights), "--manifest", str(manifest),
               "--out", str(out), "--num", "2", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_generate_requires_and_checks_the_weights_sha256(weights_dir, tiny_manifest, tmp_path,
                                                         capsys):  # fmt: skip
    assert _generate(weights_dir, tiny_manifest, tmp_path / "ok", capsys)[0] == 0
    _flip_tensor_byte(weights_dir / "generator.safetensors")
    rc, err = _generate(weights_dir, tiny_manifest, tmp_path / "flipped", capsys)
    assert rc == 2 and f"{weights_dir / 'generator.safetensors'}: sha256" in err
    assert not (tmp_path / "flipped").exists()
    _edit_json(weights_dir / "generator.json", lambda d: d.pop("weights_sha256"))
    rc, err = _generate(weights_dir, tiny_manifest, tmp_path / "nohash", capsys)
    assert rc == 2 and f"{weights_dir / 'generator.json'} has no valid weights_sha256" in err


@pytest.mark.parametrize("field, value", [("dim", 32), ("dim_mults", [1, 2]), ("w_dim", 48),
                                          ("z_dim", 8)])  # fmt: skip
def test_an_edited_dimension_in_generator_json_is_a_message(weights_dir, tiny_manifest, tmp_path,
                                                            capsys, field, value):  # fmt: skip
    _edit_json(weights_dir / "generator.json", lambda d: d["generator"].__setitem__(field, value))
    rc, err = _generate(weights_dir, tiny_manifest, tmp_path / "out", capsys)
    assert rc == 2, err
    assert f"{weights_dir / 'generator.json'} does not describe" in err
    assert "is (" in err or "missing from the file" in err or "not in the config" in err
