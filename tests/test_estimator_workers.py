"""The estimator's own crop workers (spawned by `estimate_samples`) die with a SIGKILLed
parent instead of outliving it, reparented to init."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_refine_concurrency import _alive, _children, _gone

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import itertools, sys
from fdhclean.estimators import build_estimator, estimate_samples
from fdhclean.estimators.inputs import pose_members
from fdhclean.shards import read_shard

estimator = build_estimator("vitpose-hf", checkpoint=sys.argv[1], device="cpu", batch_size=2)
raws = read_shard(sys.argv[2])[:4]
endless = ((str(i), pose_members(r.find, r.get), None) for i, r in enumerate(itertools.cycle(raws)))
results = estimate_samples(estimator, endless, batch_size=2, workers=2, progress=False)
for n, _ in enumerate(results):
    if n == 8:
        print("running", flush=True)
"""


def _spawn_workers(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:  # not the resource tracker
            found.append(child)
    return found


def test_crop_workers_die_with_a_sigkilled_parent(tiny_vitpose, synth_root):
    checkpoint, _ = tiny_vitpose
    shard = sorted((synth_root / "val").glob("*.tar"))[0]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(checkpoint), str(shard)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: list[int] = []
    try:
        assert run.stdout.readline().strip() == "running", run.communicate()
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = _spawn_workers(run.pid)
            time.sleep(0.05)
        assert len(workers) == 2, f"expected 2 crop workers, found {workers}"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)  # (not communicate: orphaned workers would hold its pipes open)
        assert _gone(workers), "the estimator's crop workers outlived a SIGKILLed parent"
    finally:
        if run.poll() is None:
            run.kill()
        run.stdout.close()
        run.stderr.close()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
