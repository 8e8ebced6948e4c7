"""What only a GPU can check: bf16 autocast + channels-last ViTPose against fp32, a Config E
train step under bf16 on CUDA (every non-tiny config once crashed on step 1 there), batched =
sequential in the anonymiser on CUDA in bf16, and torch.compile of the generator.

Marked `gpu` (conftest skips them without CUDA). `TRIAGAN_GPU_TESTS_ON_CPU=1` drops the marker
and runs the same checks on the CPU at tiny sizes (`bash bench/gpu.sh --smoke` does): that
proves the code of each check runs, not the GPU numerics. The last tests (unmarked, CPU) check
the verdicts of bench/gpu_table.py, the table bench/gpu.sh prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ON_CPU = os.environ.get("TRIAGAN_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"
ROOT = Path(__file__).resolve().parents[1]


def on_gpu(test):
    """The `gpu` mark, unless TRIAGAN_GPU_TESTS_ON_CPU=1."""
    return test if ON_CPU else pytest.mark.gpu(test)


def _vitpose_dir(path: Path) -> Path:
    """Random ViTPose with the standard head: ViTPose-B on the GPU (12 layers, for bf16 error
    to accumulate as in a real model), a 2-layer stand-in on the CPU."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    hidden, layers, heads = (64, 2, 4) if ON_CPU else (768, 12, 12)
    backbone = VitPoseBackboneConfig(hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, out_indices=[layers])  # fmt: skip
    config = VitPoseConfig(backbone_config=backbone, use_simple_decoder=False, num_labels=17)
    torch.manual_seed(0)
    VitPoseForPoseEstimation(config).eval().save_pretrained(path)
    return path


def _pose_items(synth_root: Path, n: int):
    from fdhclean.estimators.inputs import decode_for_pose, pose_members
    from fdhclean.shards import read_shard

    raw = read_shard(synth_root / "val" / "out-000000.tar")[:n]
    images, boxes = zip(*(decode_for_pose(pose_members(s.find, s.get)) for s in raw), strict=True)
    return np.stack(images), np.stack([np.asarray(b, dtype=np.float64) for b in boxes])


@on_gpu
def test_vitpose_bf16_channels_last_heatmaps_match_fp32(synth_root, tmp_path):
    from fdhclean.estimators import build_estimator

    path = _vitpose_dir(tmp_path / "vitpose")
    images, boxes = _pose_items(synth_root, 8)
    # Reference: fp32 on the CPU, contiguous layout; under test: bf16 autocast on DEVICE, where
    # the backend also puts the model and its inputs in channels-last on CUDA.
    ref = build_estimator("vitpose-hf", checkpoint=path, device="cpu", dtype="fp32")
    test = build_estimator("vitpose-hf", checkpoint=path, device=DEVICE, dtype="bf16")
    if not ON_CPU:
        conv = next(m for m in test.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = np.stack([ref.preprocess(im, b)[0] for im, b in zip(images, boxes, strict=True)])
    want, got = ref.predict_heatmaps(x), test.predict_heatmaps(x)
    assert got.dtype == np.float32 and got.shape == want.shape == (8, 17, 64, 48)
    assert np.isfinite(got).all()
    span = float(want.max() - want.min())
    err = np.abs(got - want)
    # bf16 keeps 8 bits of mantissa. Random ViTPose-B, bf16 autocast on the CPU against fp32:
    # max 0.5 %, mean 0.07 % of the heatmaps' range, 93 % of joints within 4 px; a wrong layout
    # or dtype is of order 100 %. The bounds leave room for the GPU's other kernels.
    assert err.max() <= 0.05 * span, (err.max(), span)
    assert err.mean() <= 0.01 * span, (err.mean(), span)
    kp_ref, kp_test = ref.estimate(images, boxes), test.estimate(images, boxes)
    assert kp_test.shape == (8, 17, 3) and np.isfinite(kp_test).all()
    # Random weights give flat heatmaps whose argmax may move between near-equal pixels, so
    # the coordinates are compared in bulk: most joints land within a heatmap pixel (4 px).
    moved = np.abs(kp_test[..., :2] - kp_ref[..., :2]).max(-1)
    assert np.mean(moved <= 4.0) >= 0.8, np.sort(moved.ravel())[-10:]


def _config(name: str):
    from triagan_model.configs import load_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny-config and random-feature-network warnings
        cfg = load_config(name, warn_tiny=False)
    # Random feature networks: the same compute as the pretrained ones, no weight files.
    return dataclasses.replace(
        cfg, discriminator=dataclasses.replace(cfg.discriminator, pretrained=False)
    )


def _batch(b: int, hw: tuple[int, int], device) -> dict:
    g = torch.Generator().manual_seed(0)
    h, w = hw
    mask = torch.ones(b, 1, h, w)
    mask[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 0
    kp = torch.rand(b, 17, 3, generator=g)
    kp[..., 2] = 2.0
    batch = {"img": torch.rand(b, 3, h, w, generator=g) * 2 - 1, "mask": mask,
             "maskrcnn_mask": mask.clone(), "keypoints": kp}  # fmt: skip
    return {k: v.to(device) for k, v in batch.items()}


STAGES = ["18x10"] if ON_CPU else ["18x10", "288x160"]


@on_gpu
@pytest.mark.parametrize("stage", STAGES)
def test_config_e_train_step_bf16_finite(stage):
    """Two D+G steps of Config E (E-tiny on the CPU) under the loop's bf16 autocast."""
    from triagan_model.training import distributed, loop
    from triagan_model.training.augment import diff_augment
    from triagan_model.training.options import TrainOptions

    cfg = _config("E-tiny" if ON_CPU else "E")
    assert ON_CPU or cfg.mixed_precision  # Config E trains under bf16 autocast on CUDA
    device = torch.device(DEVICE)
    index = [s.name for s in cfg.stages].index(stage)
    opts = TrainOptions(config=cfg, manifest="-", run_dir="-")
    nets = loop.build_nets(opts, index, device, None, verbose=False)
    before = [p.detach().clone() for p in nets.G.parameters()]

    def autocast():  # what loop.run_stage passes for a mixed-precision config on CUDA
        if ON_CPU:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)

    data = _batch(2, cfg.stages[index].resolution, device)
    for _ in range(2):
        out = loop.train_step(nets, [data], opts=opts, info=distributed.DistInfo(device=device),
                              sigma=2.0, augment=diff_augment(cfg.augment.diffaug),
                              autocast=autocast)  # fmt: skip
        assert {"loss/D", "loss/G"} <= set(out)
        assert all(np.isfinite(v) for v in out.values()), out
    assert all(torch.isfinite(p).all() for p in nets.G.parameters())
    assert all(torch.isfinite(p).all() for p in nets.D.trainable_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, nets.G.parameters(), strict=True))


def _generator_dir(out: Path, config: str, stage: str) -> Path:
    from triagan_model.configs import get_config
    from triagan_model.networks.generator import TriaGANGenerator
    from triagan_model.sampling.truncation import save_centres
    from triagan_model.weights import save_generator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = get_config(config).generator_config(stage)
    torch.manual_seed(0)
    g = TriaGANGenerator(cfg)
    with torch.no_grad():  # a non-zero w_avg, as a trained generator has
        g.mapping(torch.randn(64, cfg.z_dim), update_w_avg=True)
        centres = g.mapping(torch.randn(4, cfg.z_dim))
    weights = save_generator(g, out, config_name=config, stage=stage)
    save_centres(weights / "w_centers.safetensors", centres, source="test_gpu")
    return weights


@on_gpu
def test_anonymiser_batched_equals_sequential_within_one_grey_level(tmp_path):
    from anonymize_helpers import scenes_module

    from triagan_model.anonymize.api import Anonymizer, AnonymizeSettings
    from triagan_model.anonymize.compose import Person

    config, stage, precision = ("E-tiny", "72x40", "fp32") if ON_CPU else ("E", "288x160", "bf16")
    weights = _generator_dir(tmp_path / "g", config, stage)
    scene = scenes_module().still_scene(seed=3)
    outputs = []
    for batch_size in (16, 1):
        settings = AnonymizeSettings(device=DEVICE, precision=precision, batch_size=batch_size)
        anon = Anonymizer.from_files(str(weights), settings=settings)
        persons = [Person(m, k) for m, k in zip(scene.masks, scene.keypoints, strict=True)]
        res = anon.image(scene.image, persons=persons, key="scene.png")
        assert sum(r["status"] != "too-small" for r in res.persons) >= 2  # a real batch
        outputs.append(res.image.astype(int))
    assert not np.array_equal(outputs[0], scene.image)  # something was generated
    assert np.abs(outputs[0] - outputs[1]).max() <= 1


@on_gpu
@pytest.mark.skipif(ON_CPU, reason="inductor's CPU compile takes minutes on 2 cores")
def test_generator_torch_compile_matches_eager():
    from triagan_model.configs import get_config
    from triagan_model.networks.conditioning import build_condition
    from triagan_model.networks.generator import TriaGANGenerator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The smallest stage: fewest blocks, so the compile fits the suite's budget (E-tiny at
        # 18x10 took 53 s to compile on this 2-core CPU; inductor + triton on a GPU is similar).
        cfg = get_config("E").generator_config("18x10")
    torch.manual_seed(0)
    g = TriaGANGenerator(cfg).to(DEVICE).eval()
    h, w = g.cfg.resolution
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    img = torch.rand(4, 3, h, w, device=DEVICE, generator=gen) * 2 - 1
    mask = (torch.rand(4, 1, h, w, device=DEVICE, generator=gen) > 0.5).float()
    kp = torch.rand(4, 17, 3, device=DEVICE, generator=gen)
    cond = build_condition(img, mask, mask, kp, (h, w))
    z = torch.randn(4, cfg.z_dim, device=DEVICE, generator=gen)
    with torch.inference_mode():
        want = g(cond, z)["img"]
        got = torch.compile(g)(cond, z)["img"]
    assert torch.isfinite(got).all()
    # fp32 both ways; inductor fuses and reorders sums, so equal to a few 1e-4 in [-1, 1].
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)


def _gpu_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_table", ROOT / "bench" / "gpu_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _vitpose(rate: float, flip: bool = True, smoke: bool = False) -> dict:
    return {"part": "vitpose", "variant": "huge", "path": "model", "batch": 64, "flip": flip,
            "dtype": "bf16", "workers": 8, "smoke": smoke, "images_per_s": rate}  # fmt: skip


def test_gpu_table_verdicts(tmp_path):
    """Targets missed are FAIL rows, met are PASS, smoke runs get none; a part that timed out
    and a failing pytest run show as FAIL; nvidia-smi samples are averaged."""
    import json

    records = [_vitpose(982.9), _vitpose(983.0), _vitpose(10.0, flip=False),
               _vitpose(5.0, smoke=True),
               {"part": "refine", "samples": 4096, "seconds": 12.0, "samples_1": 512,
                "seconds_1": 8.0, "workers": 8, "device": "cuda", "smoke": False},
               {"part": "anonymize", "config": "E", "stage": "288x160", "persons": 8,
                "device": "cuda", "precision": "bf16", "smoke": False, "frames_per_s": 2.0,
                "persons_per_s": 16.0, "batched_vs_sequential_max_grey": 2},
               {"part": "_status", "name": "train-step", "rc": 124, "seconds": 80},
               {"part": "_status", "name": "anonymize", "rc": -1, "seconds": 0}]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "refine_util.csv").write_text("0, 900\n90, 30000\n90 %, 32000 MiB\n\n")
    (tmp_path / "pytest.xml").write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="1"/></testsuites>'
    )
    rows = _gpu_table().table(tmp_path)
    verdicts = [(row[0], row[2], row[4]) for row in rows]
    assert verdicts[0] == ("pytest", "3 passed, 1 failed, 1 skipped", "FAIL")
    assert [v for _, _, v in verdicts[1:5]] == ["FAIL", "PASS", "", "n/a (smoke)"]
    steady = next(row for row in rows if row[1].startswith("steady"))
    assert steady[2].startswith("896.0 samples/s") and steady[4] == "FAIL"  # 3584 / 4 s
    assert any(row[2] == "mean 60 %, 2/3 samples busy" for row in rows)
    assert any(row[2] == "peak 32000 MiB, 4000 MiB per worker's replica" for row in rows)
    assert ("anonymize", "max 2 grey levels", "FAIL") in verdicts
    assert ("train-step", "timed out after 80 s (see log)", "FAIL") in verdicts
    assert ("anonymize", "the 8-minute budget was spent", "FAIL") in verdicts


def test_gpu_table_refuses_a_missing_folder(tmp_path, capsys):
    assert _gpu_table().main([str(tmp_path / "nowhere")]) == 2
    assert "usage" in capsys.readouterr().out
