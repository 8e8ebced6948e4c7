"""triagan_model under faults (issue 12, classes 10-12): one atomic writer and one hash helper,
killed training, damaged checkpoints and weights, shards that differ from their manifest,
junk members and samples refine marked as errors."""

from __future__ import annotations

import hashlib
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
