"""`fdhclean refine --estimator vitpose-hf` runs the model itself and agrees with the two-step
route (`fdhclean estimate` -> predictions file -> `fdhclean refine --predictions`)."""

from __future__ import annotations

import json

import pandas as pd
from test_refine import refine, tree_digest

from fdhclean.cli import main


def test_model_route_equals_predictions_route(synth_root, tiny_vitpose, tmp_path):
    checkpoint, _ = tiny_vitpose
    model = ["--checkpoint", str(checkpoint), "--device", "cpu", "--batch-size", "8"]
    predictions = tmp_path / "pred_val.json"
    estimate = ["estimate", "--split", "val", "--data-root", str(synth_root)]
    estimate += ["--estimator", "vitpose-hf", "--out", str(predictions), "--workers", "1"]
    assert main([*estimate, *model, "--no-progress"]) == 0

    two_step, direct = tmp_path / "two-step", tmp_path / "direct"
    assert refine(synth_root, two_step, "--predictions", str(predictions)) == 0
    assert refine(synth_root, direct, "--estimator", "vitpose-hf", *model, "--workers", "1") == 0
    assert tree_digest(direct / "val") == tree_digest(two_step / "val")

    report = pd.read_parquet(direct / "val" / "report")
    assert (report.status == "ok").all()  # the model estimates every synthetic sample
    record = json.loads((direct / "val" / "run.json").read_text())
    estimator = record["provenance"]["estimator"]
    assert estimator["name"] == "vitpose-hf" and len(estimator["weights_sha256"]) == 64
