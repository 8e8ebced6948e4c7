"""`fdhclean refine --estimator vitpose-hf` runs the model itself and agrees with the two-step
route (`fdhclean estimate` -> predictions file -> `fdhclean refine --predictions`), in this
process (`--workers 0`) and in worker processes that each build their own replica."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from test_refine import refine, tree_digest

from fdhclean.cli import main


def _model(checkpoint) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--device", "cpu", "--batch-size", "8"]


@pytest.fixture(scope="module")
def fresh_threads() -> int:
    """Torch's default thread count in a new process (what a spawned worker starts with)."""
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True).stdout)


@pytest.fixture(scope="module")
def two_step(synth_root, tiny_vitpose, tmp_path_factory):
    """The predictions route's outputs with the model on T torch threads: `fdhclean estimate`
    over the split (its batches of 8 run across shard boundaries), then refine from the file.
    CPU float bits depend on the thread count (not on the batch composition), so each
    `--workers N` is compared with the route run on the threads its workers use."""
    torch = pytest.importorskip("torch")
    checkpoint, _ = tiny_vitpose
    digests: dict[int, dict[str, str]] = {}

    def digest(threads: int) -> dict[str, str]:
        if threads in digests:
            return digests[threads]
        tmp = tmp_path_factory.mktemp("two-step")
        predictions = tmp / "pred_val.json"
        estimate = ["estimate", "--split", "val", "--data-root", str(synth_root)]
        estimate += ["--estimator", "vitpose-hf", "--out", str(predictions), "--workers", "1"]
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            assert main([*estimate, *_model(checkpoint), "--no-progress"]) == 0
        finally:
            torch.set_num_threads(before)
        assert refine(synth_root, tmp / "out", "--predictions", str(predictions)) == 0
        digests[threads] = tree_digest(tmp / "out" / "val")
        return digests[threads]

    return digest


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_model_route_equals_predictions_route(
    synth_root, tiny_vitpose, two_step, fresh_threads, tmp_path, workers
):
    torch = pytest.importorskip("torch")
    checkpoint, _ = tiny_vitpose
    direct = tmp_path / "direct"
    model = ["--estimator", "vitpose-hf", *_model(checkpoint), "--workers", str(workers)]
    # --workers 0: the model runs here, on this process's threads; N workers share the
    # default threads of a fresh process (ModelSource.start_worker)
    threads = torch.get_num_threads() if workers == 0 else max(1, fresh_threads // workers)
    assert refine(synth_root, direct, *model) == 0
    # per-shard batches here (12 samples: 8 + 4) against batches across shards there
    assert tree_digest(direct / "val") == two_step(threads)

    report = pd.read_parquet(direct / "val" / "report")
    assert (report.status == "ok").all()  # the model estimates every synthetic sample
    record = json.loads((direct / "val" / "run.json").read_text())
    estimator = record["provenance"]["estimator"]
    assert estimator["name"] == "vitpose-hf" and len(estimator["weights_sha256"]) == 64
