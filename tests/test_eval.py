"""triagan evaluate: FID end to end with the `test-random` extractor (cached real statistics),
OKS from a COCO results file on `triagan generate` output, OKS with an estimator callable."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from triagan_shards import make_shards

from triagan_model import evaluation as E
from triagan_model.cli import main
from triagan_model.configs import get_config
from triagan_model.metrics.oks import oks
from triagan_model.networks.generator import TriaGANGenerator
from triagan_model.weights import load_generator, save_generator


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = get_config("A-tiny").generator_config("72x40")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("w") / "weights"
    save_generator(TriaGANGenerator(cfg), out, config_name="A-tiny", stage="72x40")
    return out


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"), n_shards=2, per_shard=4)


def read_lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_fid_end_to_end_with_cached_real_statistics(weights, manifest, tmp_path):
    args = ["evaluate", "--weights", str(weights), "--manifest", str(manifest), "--metrics",
            "fid:test-random", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
            "--batch-size", "3"]  # fmt: skip
    assert main(args) == 0
    assert len(list((tmp_path / "c").iterdir())) == 1  # real statistics cached once
    assert main(args) == 0  # second run: cached real statistics, same generated images
    lines = read_lines(tmp_path / "out" / "metric-fid-test-random.jsonl")
    assert len(lines) == 2 and lines[0]["value"] == pytest.approx(lines[1]["value"], rel=1e-9)
    assert math.isfinite(lines[0]["value"]) and lines[0]["value"] > 0
    assert lines[0]["manifest_sha256"] and lines[0]["resolution"] == [72, 40]
    # A generator that returns the real images scores ~0 on the same statistics path.
    from triagan_model.metrics.fid import FeatureExtractor, evaluate_fid

    real = evaluate_fid(manifest, lambda b: b["img"], [FeatureExtractor("test-random")],
                        resolution=(72, 40), batch_size=3)  # fmt: skip
    assert real["test-random"] == pytest.approx(0.0, abs=1e-6)
    assert real["test-random"] < lines[0]["value"]


def test_metric_names_and_missing_results(weights, manifest, tmp_path):
    assert E.parse_metrics("fid, fid_clip,oks,fid:test-random") == [
        "fid", "fid_clip", "oks", "fid:test-random"]  # fmt: skip
    with pytest.raises(ValueError, match="unknown metric"):
        E.parse_metrics("kid")
    args = ["evaluate", "--weights", str(weights), "--manifest", str(manifest), "--out",
            str(tmp_path)]  # fmt: skip
    assert main([*args, "--metrics", "oks"]) == 2


def _results_from_index(index: dict, shift: float = 0.0) -> list[dict]:
    """Detections = the conditioning keypoints in pixels of the generated image (+ shift)."""
    out = []
    for e in index["images"]:
        kp = np.asarray(e["keypoints"], np.float64)
        kp[:, 0] = kp[:, 0] * e["width"] + shift
        kp[:, 1] = kp[:, 1] * e["height"]
        kp[:, 2] = 0.9
        out.append({"image_id": e["image_id"], "category_id": 1, "score": 0.9,
                    "keypoints": kp.flatten().tolist()})  # fmt: skip
    return out


def test_oks_from_a_coco_results_file(weights, manifest, tmp_path):
    gen = tmp_path / "gen"
    assert main(["generate", "--weights", str(weights), "--manifest", str(manifest),
                 "--truncation", "0", "--out", str(gen)]) == 0  # fmt: skip
    index = json.loads((gen / "index.json").read_text())
    assert index["psi"] == 0.0 and len(index["images"]) == 8
    exact = tmp_path / "exact.json"
    exact.write_text(json.dumps(_results_from_index(index)))
    out = tmp_path / "out"
    base = ["evaluate", "--weights", str(weights), "--manifest", str(manifest), "--out", str(out),
            "--metrics", "oks", "--keypoints-results"]  # fmt: skip
    assert main([*base, str(exact)]) == 0
    line = read_lines(out / "metric-oks.jsonl")[0]
    assert line["value"] == pytest.approx(1.0) and line["scored"] == 8
    # Shifted by 1 px of the 40-px-wide image = 4 px of the 288x160 crop: COCO's formula.
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(_results_from_index(index, shift=1.0)))
    assert main([*base, str(shifted), "--index", str(gen / "index.json")]) == 0
    kps, _ = E.conditioning(manifest)
    gt = np.stack([kps[e["key"]] for e in index["images"]]).astype(np.float64)
    gt[..., 0] *= 160
    gt[..., 1] *= 288
    dt = gt.copy()
    dt[..., 0] += 4.0
    assert read_lines(out / "metric-oks.jsonl")[1]["value"] == pytest.approx(oks(gt, dt).mean())
    assert main([*base, str(shifted), "--oks-area", "region"]) == 0
    assert read_lines(out / "metric-oks.jsonl")[2]["value"] < oks(gt, dt).mean()


def test_oks_with_an_estimator_callable(weights, manifest):
    G = load_generator(weights)
    seen = []

    def estimate(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        assert images.dtype == np.uint8 and images.shape[1:] == (288, 160, 3)
        seen.append(boxes.copy())
        centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        return np.repeat(centre[:, None, :], 17, axis=1)  # every keypoint at the box centre

    value, n = E.oks_with_estimator(G, manifest, estimate, batch_size=3)
    assert n == 8
    kps, _ = E.conditioning(manifest)
    boxes = np.concatenate(seen)
    gt = np.stack(list(kps.values())).astype(np.float64)
    gt[..., 0] *= 160
    gt[..., 1] *= 288
    centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    assert value == pytest.approx(oks(gt, np.repeat(centre[:, None], 17, 1)).mean())
    # The box is the region to generate at full resolution (tests/triagan_shards: 63 px wide).
    assert np.all(boxes[:, 2] - boxes[:, 0] == 63) and np.all(boxes[:, 3] - boxes[:, 1] == 101)


def test_eval_oks_pipeline_with_a_tiny_vitpose(tiny_vitpose, weights, manifest, tmp_path):
    """pipelines/eval_oks.py: generate at truncation 0 -> fdhclean vitpose-hf -> OKS."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "pipelines" / "eval_oks.py"
    spec = importlib.util.spec_from_file_location("eval_oks", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--weights", str(weights), "--manifest", str(manifest), "--vitpose",
            str(tiny_vitpose[0]), "--out", str(tmp_path), "--device", "cpu",
            "--num", "5"]  # fmt: skip
    assert module.main(args) == 0
    line = read_lines(tmp_path / "metric-oks.jsonl")[0]
    assert line["scored"] == 5 and 0.0 <= line["value"] <= 1.0
    assert line["estimator"] == "vitpose-hf" and line["estimator_sha256"]
