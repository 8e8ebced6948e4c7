"""triagan_model.metrics: Fréchet distance, streaming statistics, the FID pipeline (tiny random
extractor end to end on CPU), local-weights errors, and OKS against pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from triagan_shards import make_shards

from triagan_model.metrics.fid import (
    FeatureExtractor,
    MissingWeightsError,
    evaluate_fid,
    stats_cache_path,
)
from triagan_model.metrics.frechet import FeatureStats, frechet_distance
from triagan_model.metrics.oks import (
    CROP_AREA,
    mean_oks,
    normalized_to_pixels,
    oks,
    read_coco_results,
    region_area,
)

# --- Fréchet distance and statistics ---------------------------------------------------------


def _random_gaussian(rng, dim, n):
    x = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _direct_frechet(mu1, s1, mu2, s2):
    # Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2): a symmetric form, via eigenvalues.
    root1 = scipy.linalg.sqrtm(s1).real
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.sum(np.sqrt(np.clip(eig, 0, None))))  # fmt: skip


def test_frechet_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    for dim in (1, 5, 32):
        a, b = _random_gaussian(rng, dim, 200), _random_gaussian(rng, dim, 200)
        assert frechet_distance(*a, *b) == pytest.approx(_direct_frechet(*a, *b), rel=1e-6)
        assert frechet_distance(*a, *a) == pytest.approx(0.0, abs=1e-6)
    # 1-D closed form: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_singular_covariances_stay_finite():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))  # rank 4 of 16
    d = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert np.isfinite(d) and d > 0


def test_feature_stats_streaming_matches_numpy(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(103, 7)) * 0.01 + 1e4  # large mean: naive sums would cancel
    stats = FeatureStats()
    for chunk in np.array_split(x, [1, 10, 50, 51]):
        stats.update(torch.from_numpy(chunk))
    assert stats.count == 103
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-6, atol=1e-12)
    stats.save(tmp_path / "s.npz", extractor="x")
    loaded, meta = FeatureStats.load(tmp_path / "s.npz")
    assert meta == {"extractor": "x"} and loaded.count == 103
    np.testing.assert_array_equal(loaded.cov, stats.cov)


# --- FID pipeline ------------------------------------------------------------------------------


def test_fid_pipeline_with_the_tiny_extractor(tmp_path):
    manifest = make_shards(tmp_path / "val", n_shards=2, per_shard=12, seed=3)
    ex = FeatureExtractor("test-random")
    cache = tmp_path / "cache"
    same = evaluate_fid(manifest, lambda b: b["img"].clone(), [ex], batch_size=8, cache_dir=cache,
                        resolution=(36, 20))  # fmt: skip
    assert same["test-random"] == pytest.approx(0.0, abs=1e-3)
    gen = torch.Generator().manual_seed(0)
    noise = evaluate_fid(manifest, lambda b: torch.rand(b["img"].shape, generator=gen) * 2 - 1,
                         [ex], batch_size=8, cache_dir=cache, resolution=(36, 20))  # fmt: skip
    assert noise["test-random"] > 100 * max(same["test-random"], 1e-3)
    from triagan_model.data.manifest import manifest_sha256

    path = stats_cache_path(cache, manifest_sha256(manifest), "test-random", (36, 20), None)
    assert FeatureStats.load(path)[0].count == 24
    for shard in (tmp_path / "val").glob("*.tar"):
        shard.unlink()  # the cached real statistics need no shard
    assert evaluate_fid(manifest, None, [ex], cache_dir=cache, resolution=(36, 20)) == {}


def test_fid_respects_max_samples_and_checks_generated_shape(tmp_path):
    manifest = make_shards(tmp_path / "val", n_shards=1, per_shard=10, seed=4)
    ex = FeatureExtractor("test-random")
    seen = []

    def generate(batch):
        seen.append(len(batch["key"]))
        return batch["img"]

    evaluate_fid(manifest, generate, [ex], batch_size=4, max_samples=6, resolution=(18, 10))
    assert sum(seen) == 6
    with pytest.raises(ValueError, match="generate returned"):
        evaluate_fid(manifest, lambda b: b["img"][:, :, :9], [ex], resolution=(18, 10))


@pytest.mark.parametrize(
    ("name", "filename"),
    [("inception", "weights-inception-2015-12-05-6726825d.pth"), ("clip-vit-b32", "ViT-B-32.pt")],
)
def test_missing_local_weights_name_the_file(tmp_path, monkeypatch, name, filename):
    monkeypatch.setenv("TRIAGAN_WEIGHTS", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=filename):
        FeatureExtractor(name)
    with pytest.raises(MissingWeightsError, match="elsewhere.pth"):
        FeatureExtractor(name, weights_path=tmp_path / "elsewhere.pth")


def test_inception_extractor_loads_a_local_file(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    # Random Inception weights in torch-fidelity's layout, made without any download.
    with monkeypatch.context() as m:
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
        state = tfi.FeatureExtractorInceptionV3("x", ["2048"]).state_dict()
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    ex = FeatureExtractor("inception", weights_path=path)
    images = torch.rand(2, 3, 36, 20) * 2 - 1
    feats = ex(images)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    ex.net.train()
    assert not ex.net.training and not any(p.requires_grad for p in ex.net.parameters())
    assert torch.equal(ex(images), feats)


@pytest.mark.slow
def test_clip_extractor_loads_a_local_file(tmp_path):
    import open_clip

    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    path = tmp_path / "clip.pt"
    torch.save(model.state_dict(), path)
    ex = FeatureExtractor("clip-vit-b32", weights_path=path)
    images = torch.rand(2, 3, 288, 160) * 2 - 1
    feats = ex(images)
    assert feats.shape == (2, 512) and torch.isfinite(feats).all()
    from triagan_model.metrics.fid import clip_preprocess_dp2

    with torch.no_grad():  # the architecture read from the tensors is open_clip's ViT-B/32
        assert torch.allclose(feats, model.visual.eval()(clip_preprocess_dp2(images)), atol=1e-5)


def _tiny_clip_visual(seed: int = 0, output_dim: int = 16) -> torch.nn.Module:
    """A random CLIP ViT image tower in OpenAI's layout (ViT-B/32's patch and input, narrow)."""
    from open_clip.transformer import QuickGELU, VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(image_size=224, patch_size=32, width=64, layers=2, heads=1,
                             mlp_ratio=4.0, output_dim=output_dim,
                             act_layer=QuickGELU).eval()  # fmt: skip


class _WholeClip(torch.nn.Module):
    """CLIP's top-level layout: the image tower under ``visual.`` beside text tensors."""

    def __init__(self, visual: torch.nn.Module) -> None:
        super().__init__()
        self.visual = visual
        self.token_embedding = torch.nn.Embedding(10, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


@pytest.mark.parametrize("whole_model", [True, False], ids=["clip-model", "visual-only"])
def test_clip_loads_openai_torchscript_archive(tmp_path, whole_model):
    from triagan_model.metrics.clip_loader import load_clip_visual
    from triagan_model.metrics.fid import clip_preprocess_dp2

    visual = _tiny_clip_visual()
    x = torch.randn(2, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        archive = torch.jit.trace(_WholeClip(visual) if whole_model else visual, x)
        path = tmp_path / "ViT-B-32.pt"
        torch.jit.save(archive, str(path))
        with pytest.raises(RuntimeError, match="TorchScript"):
            torch.load(path, weights_only=True)  # the crash this loader exists for
        loaded = load_clip_visual(path)
        ex = FeatureExtractor("clip-vit-b32", weights_path=path)
    with torch.no_grad():
        assert torch.allclose(loaded(x), visual(x), atol=1e-6)
        images = torch.rand(3, 3, 288, 160) * 2 - 1
        feats = ex(images)
        assert feats.shape == (3, 16)
        assert torch.allclose(feats, visual(clip_preprocess_dp2(images)), atol=1e-6)


def test_torchscript_tensors_equal_jit_load_state_dict(tmp_path):
    """The restricted reader gives exactly torch.jit.load's state dict (names, dtypes, values,
    fp16 and a transposed view included), from a scripted (not only traced) model."""
    from triagan_model.metrics.ts_archive import read_torchscript_tensors

    clip = _WholeClip(_tiny_clip_visual(3)).half()
    clip.register_buffer("view", torch.randn(3, 5).t())  # a non-contiguous stored tensor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(clip), str(tmp_path / "s.pt"))
        expected = torch.jit.load(str(tmp_path / "s.pt"), map_location="cpu").state_dict()
    got = read_torchscript_tensors(tmp_path / "s.pt")
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].stride() == v.stride(), k
        assert torch.equal(got[k], v), k


class _SetstateRuns(torch.nn.Module):
    """A module whose TorchScript __setstate__ prints (torch.jit.load runs it on load)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("TORCHSCRIPT CODE RAN ON LOAD")
        self.w = state[0]
        self.training = state[1]


def test_torchscript_archive_code_never_runs(tmp_path, capfd):
    """A crafted archive: its __setstate__ (which torch.jit.load runs, checked here) and a
    data.pkl calling os.system are never executed; the load fails naming the file."""
    import os
    import pickle
    import zipfile

    from triagan_model.metrics.clip_loader import ClipWeightsError, load_clip_visual

    path = tmp_path / "evil.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_SetstateRuns()), str(path))
        torch.jit.load(str(path))  # the control: TorchScript's loader runs the archive's code
    assert "TORCHSCRIPT CODE RAN" in capfd.readouterr().out
    with pytest.raises(ClipWeightsError, match="evil.pt: .*missing"):
        load_clip_visual(path)  # the tuple state has no tensor names: nothing to load
    assert "TORCHSCRIPT CODE RAN" not in capfd.readouterr().out

    marker = tmp_path / "marker"

    class _Shell:  # pickles as os.system("touch marker")
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(crafted, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, pickle.dumps(_Shell()) if name.endswith("/data.pkl") else data)
    with pytest.raises(ClipWeightsError, match=r"crafted.pt: .*pickles (posix|os)\.system"):
        load_clip_visual(crafted)
    assert not marker.exists()


def test_evaluate_fid_clip_with_a_torchscript_archive(tmp_path, monkeypatch, capsys):
    """`triagan evaluate --metrics fid_clip` end to end with a ViT-B-32.pt in OpenAI's format
    (TorchScript) in $TRIAGAN_WEIGHTS; a broken file fails with its name and the cause."""
    from triagan_model.cli import main
    from triagan_model.configs import get_config
    from triagan_model.networks.generator import TriaGANGenerator
    from triagan_model.weights import save_generator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = get_config("A-tiny").generator_config("72x40")
        clip = _WholeClip(_tiny_clip_visual(2, 512))  # FID_CLIP's 512-d features
        archive = torch.jit.trace(clip, torch.randn(1, 3, 224, 224))
        torch.manual_seed(0)
        save_generator(TriaGANGenerator(cfg), tmp_path / "g", config_name="A-tiny", stage="72x40")
        (tmp_path / "w").mkdir()
        torch.jit.save(archive, str(tmp_path / "w" / "ViT-B-32.pt"))
    monkeypatch.setenv("TRIAGAN_WEIGHTS", str(tmp_path / "w"))
    manifest = make_shards(tmp_path / "val", n_shards=1, per_shard=4, seed=6)
    args = ["evaluate", "--weights", str(tmp_path / "g"), "--manifest", str(manifest),
            "--metrics", "fid_clip", "--out", str(tmp_path / "eval"), "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(args) == 0
    line = json.loads((tmp_path / "eval" / "metric-fid_clip.jsonl").read_text().splitlines()[0])
    assert np.isfinite(line["value"]) and line["value"] > 0
    assert [p.name.split("-")[1] for p in (tmp_path / "cache").iterdir()] == ["clip"]
    assert "clip-vit-b32.dp2" in next((tmp_path / "cache").iterdir()).name
    (tmp_path / "w" / "ViT-B-32.pt").write_bytes(b"\x00" * 64)
    assert main([*args, "--cache-dir", str(tmp_path / "cache2")]) == 2  # the user's file
    err = capsys.readouterr().err
    assert "ViT-B-32.pt: cannot read CLIP weights" in err and "Traceback" not in err


def test_clip_state_dicts_fp16_and_bad_files(tmp_path):
    from triagan_model.metrics.clip_loader import ClipWeightsError, load_clip_visual

    visual = _tiny_clip_visual(1)
    half = {f"visual.{k}": v.half() for k, v in visual.state_dict().items()}  # OpenAI stores fp16
    torch.save(half, tmp_path / "half.pt")
    loaded = load_clip_visual(tmp_path / "half.pt")
    rounded = _tiny_clip_visual(1)
    rounded.load_state_dict({k[7:]: v.float() for k, v in half.items()})
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded(x), rounded(x), atol=1e-6)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ClipWeightsError, match="junk.pt: cannot read CLIP weights"):
        FeatureExtractor("clip-vit-b32", weights_path=tmp_path / "junk.pt")
    torch.save({"attnpool.c_proj.weight": torch.zeros(2, 2)}, tmp_path / "rn50.pt")
    with pytest.raises(ClipWeightsError, match="rn50.pt: a ResNet CLIP"):
        load_clip_visual(tmp_path / "rn50.pt")
    state = {k: v for k, v in visual.state_dict().items() if "resblocks.1." not in k}
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ClipWeightsError, match="odd.pt: not an OpenAI-layout"):
        load_clip_visual(tmp_path / "odd.pt")


def test_clip_preprocessing_is_dp2s():
    import torchvision.transforms as T

    from triagan_model.metrics.fid import (
        _OPENAI_MEAN,
        _OPENAI_STD,
        clip_preprocess_antialias,
        clip_preprocess_dp2,
    )

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 288, 160, generator=gen) * 2.2 - 1.1  # some values outside [-1, 1]
    x[:, :, 100:140, 40:80], x[:, :, 140:, 40:80] = 1.0, -1.0  # hard edges: bicubic overshoots
    # DP2: dp2.utils.denormalize_img, then torchvision Resize((224, 224), BICUBIC) + Normalize
    # (torchvision 0.14, DP2's Docker image, does not antialias tensors)
    dp2 = torch.round(torch.clamp(x * 0.5 + 0.5, 0, 1) * 255) / 255
    dp2 = T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC, antialias=False)(dp2)
    dp2 = T.Normalize(_OPENAI_MEAN, _OPENAI_STD)(dp2)
    ours = clip_preprocess_dp2(x)
    assert torch.allclose(ours, dp2, atol=1e-6, rtol=0)
    lowest = (0 - torch.tensor(_OPENAI_MEAN)) / torch.tensor(_OPENAI_STD)
    assert (ours.amin(dim=(0, 2, 3)) < lowest - 0.01).all()  # no clamp after the resize
    level = torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1  # on the 1/255 grid
    assert torch.equal(clip_preprocess_dp2(level + 0.4 / 127.5), clip_preprocess_dp2(level))
    old = clip_preprocess_antialias(x)
    assert old.shape == ours.shape and (old - ours).abs().max() > 0.05


# --- OKS ------------------------------------------------------------------------------------


def _coco_oks(gt, dt, areas, bboxes):
    """OKS of pycocotools' COCOeval.computeOks, one gt and one detection per image."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    n = len(gt)
    anns = [
        {"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
         "keypoints": gt[i].ravel().tolist(), "num_keypoints": int((gt[i, :, 2] > 0).sum()),
         "area": float(areas[i]), "bbox": list(map(float, bboxes[i]))}
        for i in range(n)
    ]  # fmt: skip
    results = [{"image_id": i + 1, "category_id": 1, "score": 1.0,
                "keypoints": dt[i].ravel().tolist()} for i in range(n)]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": i + 1} for i in range(n)], "annotations": anns,
                           "categories": [{"id": 1, "name": "person"}]}  # fmt: skip
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.imgIds = list(range(1, n + 1))
        ev._prepare()
        return np.array([ev.computeOks(i + 1, 1)[0, 0] for i in range(n)])


def _fixtures(rng, n=6):
    gt = np.zeros((n, 17, 3))
    gt[..., 0], gt[..., 1] = rng.uniform(0, 160, (n, 17)), rng.uniform(0, 288, (n, 17))
    gt[..., 2] = rng.choice([0, 1, 2], size=(n, 17), p=[0.3, 0.2, 0.5])
    gt[0, :, 2] = 0  # no visible keypoint: COCO's box rule
    dt = gt.copy()
    dt[..., :2] += rng.normal(0, 6, (n, 17, 2))
    dt[..., 2] = rng.uniform(0.2, 1.0, (n, 17))
    return gt, dt


def test_oks_matches_pycocotools():
    rng = np.random.default_rng(5)
    gt, dt = _fixtures(rng)
    crop = np.array([[0.0, 0.0, 160.0, 288.0]] * len(gt))
    ours = oks(gt, dt)
    np.testing.assert_allclose(ours, _coco_oks(gt, dt, [CROP_AREA] * len(gt), crop), rtol=1e-12)
    areas, boxes = rng.uniform(500, 9000, len(gt)), np.tile([20.0, 30.0, 80.0, 150.0], (6, 1))
    np.testing.assert_allclose(oks(gt, dt, areas, gt_bbox=boxes), _coco_oks(gt, dt, areas, boxes),
                               rtol=1e-12)  # fmt: skip
    assert oks(gt[1], dt[1]) == pytest.approx(ours[1])


def test_oks_takes_the_conditioning_as_ground_truth():
    gt = np.zeros((17, 3))
    gt[:, 0], gt[:, 1], gt[:, 2] = np.linspace(10, 150, 17), np.linspace(10, 270, 17), 2
    gt[5:, 2] = 0  # only the face is visible in the conditioning
    dt = gt.copy()
    dt[:, 2] = 1.0
    dt[5:, :2] += 40  # the estimate is far off on keypoints the conditioning did not give
    assert oks(gt, dt) == pytest.approx(1.0)  # only conditioning-visible keypoints count
    assert oks(dt, gt) < 0.9  # the reference's swapped call would be penalised for them
    coco = _coco_oks(gt[None], dt[None], [CROP_AREA], [[0, 0, 160, 288]])[0]
    assert oks(gt, dt) == pytest.approx(coco)


def test_region_area_and_results_file(tmp_path):
    mask = np.ones((288, 160))
    mask[100:150, 40:60] = 0
    assert region_area(mask) == 50 * 20
    cond = {"0042": np.tile([0.5, 0.5, 1.0], (17, 1)), "7": np.tile([0.25, 0.5, 1.0], (17, 1))}
    good = normalized_to_pixels(cond["0042"]).ravel().tolist()
    bad = (np.array(good) + 30).tolist()
    results = [{"image_id": 42, "category_id": 1, "keypoints": bad, "score": 0.3},
               {"image_id": 42, "category_id": 1, "keypoints": good, "score": 0.9}]  # fmt: skip
    path = tmp_path / "res.json"
    path.write_text(json.dumps(results))
    dets = read_coco_results(path)
    assert list(dets) == [42] and np.allclose(dets[42], np.reshape(good, (17, 3)))
    value, count = mean_oks(cond, dets)
    assert count == 2 and value == pytest.approx(0.5)  # "7" has no detection: a miss scores 0
    value_small, _ = mean_oks(cond, {42: np.reshape(bad, (17, 3))}, areas={"0042": 1000.0})
    assert value_small < mean_oks(cond, {42: np.reshape(bad, (17, 3))})[0]


def test_mean_oks_scores_only_what_the_generator_saw():
    """Ground truth = the keypoints drawn into the conditioning (v > 0, inside the crop); a
    sample with none is left out (COCOeval ignores a ground truth without keypoints)."""
    from triagan_model.metrics.oks import mean_oks, normalized_to_pixels

    kp = np.tile([0.5, 0.5, 2.0], (17, 1))
    outside = kp.copy()
    outside[3] = [1.5, 0.5, 2.0]  # outside the crop: not drawn, so not scored
    nothing = kp.copy()
    nothing[:, 2] = 0
    det = normalized_to_pixels(kp[None])[0]
    det[3, 0] += 500.0  # far off, but only on the keypoint that was never drawn
    mean, n = mean_oks({"1": outside, "2": nothing}, {1: det, 2: det})
    assert n == 1 and mean == pytest.approx(1.0)
