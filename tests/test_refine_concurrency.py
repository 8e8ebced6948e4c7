"""Issue 12 classes 5 and 6: two refine processes on one OUT, signals, a full or read-only disk."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from fdhclean.cli import main
from fdhclean.refine.lock import shard_lock

REPO = Path(__file__).resolve().parents[1]


def refine_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "refine", "--split", "val", "--data-root", str(root), "--out", str(out),
        "--part-table", str(root / "parts.npz"),
        "--predictions", str(root / "predictions_val.json"), *extra,
    ]  # fmt: skip


def start_refine(root: Path, out: Path, *extra: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "fdhclean.cli", *refine_argv(root, out, *extra)]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and (p.suffix in (".tar", ".parquet"))
    }


def test_a_locked_shard_is_left_to_its_holder(synth_root, tmp_path, capsys):
    out = tmp_path / "out"
    with shard_lock(out / "val", "out-000001.tar"):
        assert main(refine_argv(synth_root, out)) == 0
        err = capsys.readouterr().err
        assert f"out-000001.tar is being cleaned by PID {os.getpid()}" in err
        assert not (out / "val" / "manifest.json").exists()
        assert not (out / "val" / "out-000001.tar").exists()
    assert main(refine_argv(synth_root, out)) == 0  # the lock is gone: this run completes it
    assert (out / "val" / "manifest.json").is_file()


def test_two_runs_on_one_out_cooperate(synth_root, tmp_path):
    single = tmp_path / "single"
    assert main(refine_argv(synth_root, single)) == 0
    out = tmp_path / "shared"
    runs = [start_refine(synth_root, out) for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert "Traceback" not in err and "FileNotFoundError" not in err
    assert digest(out / "val") == digest(single / "val")
    assert (out / "val" / "manifest.json").is_file()
    assert not list((out / "val").rglob("*.tmp"))
