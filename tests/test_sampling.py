"""Sampling: truncation toward w_avg, k-means centres (planted clusters), the nearest-centre
rule, and the `triagan clusters` / `triagan generate` commands (manifest and single input)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from triagan_shards import make_shards

from triagan_model.cli import main
from triagan_model.configs import get_config
from triagan_model.networks.generator import TriaGANGenerator
from triagan_model.sampling.generate import (
    Truncation,
    generate_batch,
    manifest_batches,
    region_box,
    sample_z,
)
from triagan_model.sampling.truncation import (
    centre_indices,
    check_psi,
    kmeans,
    load_centres,
    nearest_centre,
    save_centres,
    truncate,
    truncate_to_centres,
)
from triagan_model.weights import load_generator, save_generator


def test_truncation_toward_w_avg():
    w, avg = torch.tensor([[2.0, 4.0]]), torch.tensor([0.0, 2.0])
    assert torch.equal(truncate(w, avg, 1.0), w)
    assert torch.equal(truncate(w, avg, 0.0), avg[None])
    assert torch.allclose(truncate(w, avg, 0.5), torch.tensor([[1.0, 3.0]]))


def test_nearest_centre_rule():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    w = torch.tensor([[1.0, 1.0], [9.0, -1.0], [2.0, 7.0], [6.0, 0.0]])
    idx, dist = nearest_centre(w, centres)
    assert idx.tolist() == [0, 1, 2, 1]
    assert torch.allclose(dist, torch.tensor([2.0, 2.0, 13.0, 16.0]))
    assert torch.equal(truncate_to_centres(w, centres, 0.0), centres[idx])
    assert torch.allclose(truncate_to_centres(w, centres, 1.0), w)
    assert torch.allclose(truncate_to_centres(w, centres, 0.5), (w + centres[idx]) / 2)


def test_index_centre_rule_is_dp2s_z_idx_mod_k():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    w = torch.tensor([[1.0, 1.0], [9.0, -1.0], [2.0, 7.0], [6.0, 0.0]])
    z_idx = [7, 3, 2**32 - 2, 5]  # DP2 draws z_idx in [0, 2**32 - 1)
    idx = centre_indices(w, centres, "index", z_idx)
    assert idx.tolist() == [7 % 3, 0, (2**32 - 2) % 3, 2]  # independent of w
    assert centre_indices(w, centres, "nearest").tolist() == [0, 1, 2, 1]
    out = truncate_to_centres(w, centres, 0.25, centre_rule="index", z_indices=z_idx)
    assert torch.allclose(out, centres[idx] + 0.25 * (w - centres[idx]))
    with pytest.raises(ValueError, match="needs the latents' integer indices"):
        truncate_to_centres(w, centres, 0.5, centre_rule="index")
    with pytest.raises(ValueError, match="unknown centre rule 'random'"):
        centre_indices(w, centres, "random")


@pytest.mark.parametrize("psi", [-0.1, 1.5, float("nan")])
def test_psi_outside_0_1_is_refused(psi):
    """DeepPrivacy2 clamps psi to [0, 1]; here it is refused, naming the value DP2 would use."""
    w, c = torch.zeros(1, 2), torch.ones(1, 2)
    for call in (lambda: truncate(w, c[0], psi), lambda: truncate_to_centres(w, c, psi),
                 lambda: Truncation(psi), lambda: check_psi(psi)):  # fmt: skip
        with pytest.raises(ValueError, match=r"outside \[0, 1\].*clamps"):
            call()
    assert check_psi(0.0) == 0.0 and check_psi(1) == 1.0


def test_kmeans_recovers_planted_clusters():
    gen = torch.Generator().manual_seed(0)
    true = torch.randn(6, 16, generator=gen) * 10
    labels = torch.arange(6).repeat_interleave(150)
    x = true[labels] + 0.5 * torch.randn(900, 16, generator=gen)
    centres, assign = kmeans(x, 6, seed=1)
    match, dist = nearest_centre(true, centres)
    assert sorted(match.tolist()) == list(range(6))  # one found centre per planted cluster
    assert dist.max() < 0.15  # squared: ~16 * 0.5^2 / 150 = 0.027 expected
    for i in range(6):  # a Lloyd fixed point: each centre is the mean of its planted points
        assert torch.allclose(centres[match[i]], x[labels == i].mean(0), atol=1e-4)
    assert torch.equal(assign, match[labels])  # every point in its planted cluster
    again, _ = kmeans(x, 6, seed=1)
    assert torch.equal(centres, again)  # deterministic for a seed


def test_kmeans_with_duplicate_points_and_errors():
    x = torch.tensor([[0.0], [0.0], [0.0], [5.0]])
    centres, assign = kmeans(x, 3, seed=0)
    assert centres.shape == (3, 1) and set(assign.tolist()) <= {0, 1, 2}
    assert torch.isfinite(centres).all()
    with pytest.raises(ValueError, match="N >= k"):
        kmeans(x, 5)


def test_centres_round_trip(tmp_path):
    c = torch.randn(4, 8)
    save_centres(tmp_path / "c.safetensors", c, num_samples=100)
    back, meta = load_centres(tmp_path / "c.safetensors")
    assert torch.equal(back, c) and meta["num_samples"] == 100
    with pytest.raises(FileNotFoundError, match="triagan clusters"):
        load_centres(tmp_path / "missing.safetensors")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = get_config("E-tiny").generator_config("18x10")
    torch.manual_seed(0)
    g = TriaGANGenerator(cfg)
    with torch.no_grad():  # a non-zero w_avg so that truncation moves things
        g.mapping(torch.randn(64, cfg.z_dim), update_w_avg=True)
    out = tmp_path_factory.mktemp("w") / "weights"
    save_generator(g, out, config_name="E-tiny", stage="18x10")
    return out


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"), n_shards=2, per_shard=3)


def test_latents_do_not_depend_on_batching(weights, manifest):
    G = load_generator(weights)
    assert torch.equal(sample_z([0, 1, 2], 64, 5)[1], sample_z([1], 64, 5)[0])
    a = torch.cat([generate_batch(G, b, sample_z(list(range(i * 2, i * 2 + len(b["key"]))), 64, 0))
                   for i, b in enumerate(manifest_batches(manifest, (18, 10), 2, 5))])  # fmt: skip
    b = generate_batch(G, next(manifest_batches(manifest, (18, 10), 5, 5)),
                       sample_z(list(range(5)), 64, 0))  # fmt: skip
    assert torch.allclose(a, b, atol=1e-5)
    # psi 0 is the generator at w_avg for every latent.
    batch = next(manifest_batches(manifest, (18, 10), 2, 2))
    zero = generate_batch(G, batch, sample_z([0, 1], 64, 0), Truncation(0.0))
    from triagan_model.networks.conditioning import build_condition

    cond = build_condition(batch["img"], batch["mask"], batch["maskrcnn_mask"],
                           batch["keypoints"], (18, 10))  # fmt: skip
    with torch.no_grad():
        ref = G(cond, w=G.mapping.w_avg.expand(2, -1), noise_mode="const")["img"]
    assert torch.allclose(zero, ref, atol=1e-6)


def test_clusters_and_generate_commands(weights, manifest, tmp_path):
    centres = tmp_path / "c.safetensors"
    assert main(["clusters", "--weights", str(weights), "--num-centres", "3",
                 "--num-samples", "200", "--out", str(centres)]) == 0  # fmt: skip
    assert load_centres(centres)[0].shape == (3, 512)
    out = tmp_path / "gen"
    args = [
        "generate",
        "--weights",
        str(weights),
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--num",
        "5",
        "--batch-size",
        "2",
        "--clusters",
        str(centres),
        "--truncation",
        "0.5",
    ]
    assert main(args) == 0
    index = json.loads((out / "index.json").read_text())
    assert [e["image_id"] for e in index["images"]] == [1000, 1001, 1002, 1003, 1004]
    for e in index["images"]:
        with Image.open(out / e["file"]) as im:
            assert im.size == (10, 18)
        assert len(e["keypoints"]) == 17 and len(e["box"]) == 4
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["grid-0000.png"]
    assert main(["generate", "--weights", str(weights), "--out", str(out)]) == 2


def test_generate_single_input(weights, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (288, 160, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    mask = np.full((288, 160), 255, np.uint8)
    mask[100:200, 40:120] = 0
    Image.fromarray(mask).save(tmp_path / "m.png")
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0], kp[:, 1], kp[:, 2] = 80, np.linspace(100, 199, 17), 2
    np.save(tmp_path / "k.npy", kp)
    out = tmp_path / "one"
    assert main(["generate", "--weights", str(weights), "--image", str(tmp_path / "a.png"),
                 "--mask", str(tmp_path / "m.png"), "--keypoints", str(tmp_path / "k.npy"),
                 "--keypoint-units", "pixels", "--out", str(out),
                 "--truncation", "0"]) == 0  # fmt: skip
    entry = json.loads((out / "index.json").read_text())["images"][0]
    assert entry["key"] == "a" and entry["keypoints"][0][0] == pytest.approx(0.5)
    # rows 100..199 and columns 40..119 unknown at 288x160: at 18x10 (16 px per pixel) a pixel
    # is known only if all its pixels are, so rows 6..12 and columns 2..7 are unknown
    assert entry["box"] == [2, 6, 8, 13]
    assert region_box(np.ones((4, 3))) == [0, 0, 3, 4]


def test_generate_centre_rule_index(weights, manifest, tmp_path, capsys):
    """--centre-rule index: sample i is truncated toward centre i % K, as DP2's anonymiser."""
    G = load_generator(weights)
    centres = torch.randn(2, 512, generator=torch.Generator().manual_seed(3)) + G.mapping.w_avg
    save_centres(tmp_path / "c.safetensors", centres)
    batch = next(manifest_batches(manifest, (18, 10), 4, 4))
    z = sample_z([0, 1, 2, 3], 64, 0)
    got = generate_batch(G, batch, z, Truncation(0.0, centres, "index"), [0, 1, 2, 3])
    from triagan_model.networks.conditioning import build_condition

    cond = build_condition(batch["img"], batch["mask"], batch["maskrcnn_mask"],
                           batch["keypoints"], (18, 10), mode=G.cfg.conditioning_mode)  # fmt: skip
    with torch.no_grad():
        want = G(cond, w=centres[[0, 1, 0, 1]], noise_mode="const")["img"]
    assert torch.allclose(got, want, atol=1e-6)
    base = ["generate", "--weights", str(weights), "--manifest", str(manifest), "--num", "4",
            "--clusters", str(tmp_path / "c.safetensors"), "--truncation", "0"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "i"), "--centre-rule", "index"]) == 0
    assert main([*base, "--out", str(tmp_path / "n")]) == 0
    index = json.loads((tmp_path / "i" / "index.json").read_text())
    assert index["centre_rule"] == "index"
    first = index["images"][0]["file"]
    with Image.open(tmp_path / "i" / first) as a, Image.open(tmp_path / "n" / first) as b:
        pix_i, pix_n = np.asarray(a), np.asarray(b)
    nearest = centre_indices(G.mapping(z[:1]), centres, "nearest")
    assert np.array_equal(pix_i, pix_n) == (int(nearest[0]) == 0)  # sample 0: centre 0 by index
    capsys.readouterr()
    assert main([*base[:-1], "1.5", "--out", str(tmp_path / "x")]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err and not (tmp_path / "x").exists()
    rc = main(["generate", "--weights", str(weights), "--manifest", str(manifest), "--out",
               str(tmp_path / "y"), "--centre-rule", "index"])  # fmt: skip
    assert rc == 2 and "needs --clusters" in capsys.readouterr().err


def test_bad_centres_files_are_the_users_error(weights, manifest, tmp_path, capsys):
    """A truncated or corrupt centres file is a ValueError naming it (no SafetensorError), and
    `triagan generate` exits 2 naming the file for it and for centres of another w_dim (instead
    of a RuntimeError from the mapping network's matmul)."""
    save_centres(tmp_path / "narrow.safetensors", torch.randn(4, 7))
    good = (tmp_path / "narrow.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(good[:50])
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 200)
    for name in ("trunc", "junk"):
        with pytest.raises(ValueError, match=f"{name}.safetensors: unreadable centres file"):
            load_centres(tmp_path / f"{name}.safetensors")
    with pytest.raises(ValueError, match="7-dimensional but the generator's w has 512"):
        load_centres(tmp_path / "narrow.safetensors", w_dim=512)
    base = ["generate", "--weights", str(weights), "--manifest", str(manifest), "--num", "1"]
    for name in ("narrow", "trunc", "missing"):
        capsys.readouterr()
        path = tmp_path / f"{name}.safetensors"
        rc = main([*base, "--out", str(tmp_path / name), "--clusters", str(path)])
        err = capsys.readouterr().err
        assert rc == 2 and f"{name}.safetensors" in err and "Traceback" not in err, err
        assert not (tmp_path / name).exists()
