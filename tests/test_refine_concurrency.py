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


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _more_shards(root: Path, copies: int = 4) -> None:
    """Make the run long enough to interrupt: the split's shards again under new names."""
    shards = sorted((root / "val").glob("out-*.tar"))
    for n in range(copies * len(shards)):
        target = root / "val" / f"out-{len(shards) + n:06d}.tar"
        target.write_bytes(shards[n % len(shards)].read_bytes())


def _wait_for_workers(run: subprocess.Popen, count: int) -> list[int]:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()
        workers = _children(run.pid)
        if len(workers) >= count:
            time.sleep(0.3)  # let them start on a shard
            return workers
        time.sleep(0.02)
    raise AssertionError("the workers never started")


def _gone(pids: list[int], seconds: float = 10) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_sigkill_of_the_main_process_takes_the_workers_with_it(synth_copy, tmp_path):
    import signal

    _more_shards(synth_copy)
    run = start_refine(synth_copy, tmp_path / "out", "--workers", "2")
    workers = _wait_for_workers(run, 2)
    try:
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
        assert _gone(workers), "workers outlived a SIGKILLed main process"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_abandons_cleanly_and_the_rerun_completes(synth_copy, tmp_path):
    import signal

    _more_shards(synth_copy, copies=12)  # long enough that the signal comes before the end
    clean = tmp_path / "clean"
    assert main(refine_argv(synth_copy, clean)) == 0
    out = tmp_path / "out"
    run = start_refine(synth_copy, out, "--workers", "2")
    workers = _wait_for_workers(run, 2)
    try:
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
        err = " ".join(err.split())  # rich wraps long lines
        assert run.returncode == 128 + signal.SIGTERM, err
        assert "interrupted by SIGTERM" in err and "Rerun the same command" in err
        assert "Traceback" not in err
        assert _gone(workers)
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not (out / "val" / "manifest.json").exists()
    assert main(refine_argv(synth_copy, out, "--workers", "2")) == 0
    assert digest(out / "val") == digest(clean / "val")
    assert not list((out / "val").rglob("*.tmp"))


def _limited(max_bytes: int):
    """preexec_fn: files this process writes may not grow past `max_bytes` (Python ignores
    SIGXFSZ, so a write past it fails with EFBIG, as a full disk fails with ENOSPC)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def _one_line(run: subprocess.Popen) -> str:
    _, err = run.communicate(timeout=120)
    return " ".join(err.split())


def test_a_full_disk_is_a_message_at_every_stage(synth_root, tmp_path):
    # at start: run.json cannot be written
    out = tmp_path / "start"
    run = start_refine(synth_root, out, preexec_fn=_limited(64))
    err = _one_line(run)
    assert run.returncode == 2 and "cannot set up" in err and "File too large" in err, err
    assert "Traceback" not in err and not list(out.rglob("*.tmp"))
    # while writing shards: each shard fails alone, naming the cause
    out = tmp_path / "shards"
    run = start_refine(synth_root, out, preexec_fn=_limited(100_000))
    err = _one_line(run)
    assert run.returncode == 1, err
    assert err.count("cannot write its outputs") == 3 and "Traceback" not in err
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("out-*.tar"))
    # at finalize: the shards are complete, the manifest cannot be written
    out = tmp_path / "final"
    assert main(refine_argv(synth_root, out)) == 0
    (out / "val" / "manifest.json").unlink()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    final = subprocess.Popen(
        [sys.executable, "-m", "fdhclean.cli", "finalize", str(out), "--split", "val"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        preexec_fn=_limited(200),
    )  # fmt: skip
    err = _one_line(final)
    assert final.returncode == 1 and "File too large" in err and "Traceback" not in err


def _can_mount() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
            capture_output=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def test_a_read_only_out_is_a_message(synth_root, tmp_path):
    import pytest

    if not _can_mount():
        pytest.skip("needs unshare + mount (a private mount namespace) for a read-only OUT")
    out = tmp_path / "ro"
    out.mkdir()
    argv = " ".join(f"'{a}'" for a in refine_argv(synth_root, out))
    script = (
        f"mount -t tmpfs -o size=1m,ro tmpfs '{out}' && {sys.executable} -m fdhclean.cli {argv}"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    err = " ".join(run.stderr.split())
    assert run.returncode == 2, err
    assert "Read-only file system" in err and "cannot set up" in err and "Traceback" not in err


def test_without_flock_a_live_runs_temporaries_are_left_alone(synth_root, tmp_path, monkeypatch):
    """A file system without flock (ENOLCK): this run cannot know whether another process is
    writing the shard, so it must not delete what may be that process's live temporary."""
    import errno

    import fdhclean.refine.lock as lock

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_flock)
    out = tmp_path / "out"
    live = out / "val" / ".out-000000.tar.4242.other.tmp"  # another run's half-written shard
    live.parent.mkdir(parents=True)
    live.write_bytes(b"in progress")
    assert main(refine_argv(synth_root, out)) == 0
    assert live.read_bytes() == b"in progress"
    assert (out / "val" / "manifest.json").is_file()
