"""triagan train: two-stage CPU smoke run, kill/slice + resume equality, EMA by hand, losses,
augmentation, checkpoint format, loader resume position, and a two-process gloo run."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
from triagan_shards import make_shards

from triagan_model.cli import main
from triagan_model.configs import EMAConfig, load_config
from triagan_model.training import checkpoint, loop
from triagan_model.training.augment import blur, blur_sigma, color, cutout, stage_blur_fade_kimg
from triagan_model.training.ema import make_ema, update_ema
from triagan_model.training.losses import (
    HingeLoss,
    MaskedHingeLoss,
    build_loss,
    g_terms,
    hinge_d_terms,
    masked_hinge_d_terms,
)
from triagan_model.training.options import TrainOptions, plan_batch

# A tiny progressive config: narrow G (w 64), one tiny CNN feature network, masked hinge.
STAGE = "[[stages]]\nresolution = [{h}, {w}]\ndim = 16\ndim_mults = {m}\nbatch = 2\nkimg = {k}\n"
TOML = (
    'base = "A-tiny"\nname = "test-progressive"\n[loss]\nkind = "masked-hinge"\n'
    "[generator]\nw_dim = 64\nz_dim = 16\n"
)


def write_config(path: Path, stages=((18, 10, "[1, 1]", 0.004), (36, 20, "[1, 1, 1]", 0.002))):
    text = TOML + "".join(STAGE.format(h=h, w=w, m=m, k=k) for h, w, m, k in stages)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=5)


def train_args(cfg: Path, manifest: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(cfg), "--manifest", str(manifest), "--run-dir", str(run),
            "--device", "cpu", "--workers", "0", "--tick-kimg", "0.002", "--grid-size", "2",
            "--no-progress", *extra]  # fmt: skip


def _run(args: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny-config warning
        return main(args)


def test_two_stage_smoke_run_writes_every_output(tmp_path, manifest, capsys):
    cfg, run = write_config(tmp_path / "c.toml"), tmp_path / "run"
    args = train_args(cfg, manifest, run, "--snapshot-ticks", "1", "--image-ticks", "1")
    assert _run([*args, "--dry-run"]) == 0
    assert "stage 1 36x20" in capsys.readouterr().out and not run.exists()
    assert _run([*args, "--tensorboard"]) == 0
    doc = json.loads((run / "run.json").read_text())
    from triagan_model.data.manifest import manifest_sha256

    assert doc["manifest"]["sha256"] == manifest_sha256(manifest)
    assert load_config(str(run / "config.toml"), warn_tiny=False).stages[1].resolution == (36, 20)
    for stage, steps in (("18x10", 2), ("36x20", 1)):
        d = run / stage
        for name in ("config.toml", "stage.json", "loss.png", "stage-complete.json",
                     "weights/generator.safetensors", "weights/generator.json",
                     "images/samples-final.png"):  # fmt: skip
            assert (d / name).is_file(), d / name
        records = [json.loads(x) for x in (d / "stats.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == list(range(1, steps + 1))
        assert all(math.isfinite(r["loss/D"]) and math.isfinite(r["loss/G"]) for r in records)
        assert checkpoint.list_states(d / "checkpoints")
        assert list((d / "tensorboard").iterdir())
        assert json.loads((d / "stage.json").read_text())["manifest"]["sha256"]
    from triagan_model.weights import load_generator

    assert load_generator(run / "36x20" / "weights").cfg.resolution == (36, 20)
    out = capsys.readouterr().out
    assert "stage 36x20:" in out and "tensors from" in out  # stage 2 started from stage 1's EMA
    # EMA by hand on the stage-1 checkpoints: step 1 copies G (ramp-up: beta 0), step 2 mixes.
    s2, s4 = (checkpoint.load(checkpoint.state_path(run / "18x10" / "checkpoints", n))
              for n in (2, 4))  # fmt: skip
    beta = EMAConfig().beta_at(2, 2)
    params = {n for n, _ in load_generator(run / "18x10" / "weights").named_parameters()}
    for k, v in s2["G_ema"].items():
        assert torch.equal(v, s2["G"][k]), k
        expect = s4["G"][k].lerp(v, beta) if k in params else s4["G"][k]  # buffers: copied
        assert torch.allclose(s4["G_ema"][k], expect, atol=1e-6, rtol=0), k
    # Rerunning a finished run does nothing and succeeds; another manifest is refused.
    assert _run(args) == 0
    other = make_shards(tmp_path / "other", n_shards=1, per_shard=3, seed=5)
    assert _run(train_args(cfg, other, run)) == 2


def _final_state(run: Path, stage: str = "18x10"):
    return checkpoint.load(checkpoint.list_states(run / stage / "checkpoints")[0])


def test_kill_slice_and_resume_equal_an_uninterrupted_run(tmp_path, manifest, monkeypatch, capsys):
    cfg = write_config(tmp_path / "c.toml", ((18, 10, "[1, 1]", 0.008),))  # 4 steps
    common = ("--snapshot-ticks", "2", "--image-ticks", "2")
    assert _run(train_args(cfg, manifest, tmp_path / "a", *common)) == 0
    run = tmp_path / "b"
    # Slice: 2 steps, checkpoint, exit 0 without finishing.
    assert _run(train_args(cfg, manifest, run, *common, "--slice-kimg", "0.004")) == 0
    assert not (run / "18x10" / "stage-complete.json").exists()
    # Kill during step 4 (the second step of this invocation): exit 1, checkpoint stays at 2.
    real_step, calls = loop.train_step, itertools.count(1)

    def dying_step(*a, **k):
        if next(calls) == 2:
            raise RuntimeError("simulated kill")
        return real_step(*a, **k)

    monkeypatch.setattr(loop, "train_step", dying_step)
    assert _run(train_args(cfg, manifest, run, *common)) == 1
    monkeypatch.setattr(loop, "train_step", real_step)
    assert checkpoint.list_states(run / "18x10" / "checkpoints")[0].name.endswith("04.safetensors")
    # Resuming with another seed would read another data stream: refused.
    assert _run(train_args(cfg, manifest, run, *common, "--seed", "1")) == 2
    # ... and so would toggling --include-error-samples (it changes the set of samples).
    capsys.readouterr()
    assert _run(train_args(cfg, manifest, run, *common, "--include-error-samples")) == 2
    err = capsys.readouterr().err
    assert "started without --include-error-samples" in err and "another data stream" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # --verify only checks the shards: the same stream, so a resume may change it.
    assert _run(train_args(cfg, manifest, run, *common, "--verify", "size")) == 0
    assert json.loads((run / "18x10" / "stage.json").read_text())["include_error_samples"] is False
    a, b = _final_state(tmp_path / "a"), _final_state(run)
    assert a["progress"]["nimg"] == b["progress"]["nimg"] == 8
    for part in ("G", "D", "G_ema"):
        for k, v in a[part].items():
            if torch.is_tensor(v):
                assert torch.equal(v, b[part][k]), (part, k)
    for part in ("G_opt", "D_opt"):
        for i, st in a[part]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, b[part]["state"][i][k]), (part, i, k)
    lines = [[json.loads(x) for x in (r / "18x10" / "stats.jsonl").read_text().splitlines()]
             for r in (tmp_path / "a", run)]  # fmt: skip
    assert [x["nimg"] for x in lines[1]] == [x["nimg"] for x in lines[0]] == [2, 4, 6, 8]
    assert [x["loss/G"] for x in lines[1]] == [x["loss/G"] for x in lines[0]]


def test_all_checkpoints_unreadable_is_an_error_not_a_restart(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    for nimg in (1000, 2000):
        (d / f"state-{nimg:012d}.safetensors").write_bytes(b"torn")
    with pytest.raises(checkpoint.UnreadableCheckpointsError):
        checkpoint.load_latest(d)
    assert len(list(d.glob("*.unreadable"))) == 2 and not checkpoint.list_states(d)


def test_ema_beta_and_update_by_hand():
    ema = EMAConfig(rule="seed", beta=0.9976, rampup=0.05)
    assert ema.beta_at(0, 4) == 0.0  # the first step copies G
    assert ema.beta_at(1000, 4) == pytest.approx(0.5 ** (4 / 50))  # half-life 5 % of 1000
    assert ema.beta_at(10**9, 4) == pytest.approx(0.9976)  # steady state: the seed's per step
    assert EMAConfig(rule="seed", rampup=None).beta_at(0, 64) == pytest.approx(0.9976)
    g = torch.nn.Linear(3, 2)
    g.register_buffer("w_avg", torch.zeros(2))
    e = make_ema(g)
    with torch.no_grad():
        g.weight.add_(1.0)
        g.w_avg.fill_(3.0)
    expected = 0.25 * e.weight + 0.75 * g.weight
    update_ema(e, g, 0.25)
    assert torch.allclose(e.weight, expected) and torch.equal(e.w_avg, g.w_avg)
    assert not any(p.requires_grad for p in e.parameters())


@pytest.mark.parametrize("batch", [4, 128, 512, 1024])
def test_ema_default_is_deepprivacy2s_half_life_rule(batch):
    """DP2 (dp2/utils/ema.py): y = min(batch * 10 / 32 * 1000, nimg * rampup), beta =
    0.5 ** (batch / max(y, 1e-8)); written out here from that description, compared exactly."""
    ema = EMAConfig()
    for nimg in (0, batch, 10 * batch, 5000 * batch, 10**9):
        y = min(batch * 10 / 32 * 1000, nimg * 0.05)
        assert ema.beta_at(nimg, batch) == 0.5 ** (batch / max(y, 1e-8)), nimg
    assert ema.beta_at(10**12, batch) == pytest.approx(0.997784, abs=5e-7)  # 312.5 steps
    seed = EMAConfig(rule="seed").beta_at(10**12, batch)
    assert math.log(0.5) / math.log(seed) == pytest.approx(288.5, abs=0.05)  # the seed's
    cfg = load_config("A-tiny", warn_tiny=False)
    for section, bad in (("ema", EMAConfig(rule="dp2")), ("augment", {"blur_border": "reflect"}),
                         ("loss", {"masked_hinge_norm": "mean"})):  # fmt: skip
        if isinstance(bad, dict):
            bad = dataclasses.replace(getattr(cfg, section), **bad)
        with pytest.raises(ValueError, match=f"unknown {section}"):
            dataclasses.replace(cfg, **{section: bad})


def _grouped(seed: int, groups=(2, 1)) -> list[list[torch.Tensor]]:
    """Random logits grouped as D returns them: per feature network, maps of 4x2 then 2x1."""
    gen = torch.Generator().manual_seed(seed)
    shapes = ((4, 2), (2, 1))
    return [[torch.randn(2, 1, *shapes[i % 2], generator=gen) for i in range(n)] for n in groups]


def _dp2_masked_hinge(real, fake, mask):
    """DeepPrivacy2's masked_hinge_D_loss as its code reads: N_real = positions - N_fake, and the
    4th term divided by N_real. Written here from that description, not shared with the code."""
    real_loss = fake_loss = 0.0
    for r_maps, f_maps in zip(real, fake, strict=True):
        fake_px = [torch.nn.functional.adaptive_max_pool2d(1 - mask, m.shape[-2:]) for m in f_maps]
        n_fake = sum(p.sum() for p in fake_px)
        n_real = sum(m.numel() for m in f_maps) - n_fake
        for rl, fl, fp in zip(r_maps, f_maps, fake_px, strict=True):
            rp = 1 - fp
            fake_loss = fake_loss + ((1 + fl) * fp).relu().sum() / n_fake
            real_loss = real_loss + ((1 - fl) * rp).relu().sum() / n_real / 2
            real_loss = real_loss + ((1 - rl) * rp).relu().sum() / n_real / 2
            real_loss = real_loss + ((1 - rl) * fp).relu().sum() / n_real
    return real_loss, fake_loss


def test_losses_by_hand():
    real, fake = _grouped(0, groups=(2,)), _grouped(1, groups=(2,))
    r, f = hinge_d_terms(real, fake)
    cat = lambda ms: torch.cat([m.flatten(1) for m in ms], 1)  # noqa: E731
    assert torch.allclose(r, (1 - cat(real[0])).relu().mean())
    assert torch.allclose(f, (1 + cat(fake[0])).relu().mean())
    split = [[fake[0][0]], [fake[0][1]]]  # two feature networks: one term each, summed
    assert torch.allclose(g_terms(split), -fake[0][0].mean() - fake[0][1].mean())
    # All unknown: masked hinge = hinge with the own-positions divisor; the reference's divides
    # by N_r = 0 (DP2: inf), clamped to 1 here, so its 4th term is an unnormalised sum.
    mr, mf = masked_hinge_d_terms(real, fake, torch.zeros(2, 1, 8, 4), "own-positions")
    assert torch.allclose(mr, r) and torch.allclose(mf, f)
    mr, mf = masked_hinge_d_terms(real, fake, torch.zeros(2, 1, 8, 4))
    assert torch.allclose(mr, (1 - cat(real[0])).relu().sum()) and torch.allclose(mf, f)
    for norm in ("reference", "own-positions"):
        # All known: generated images are "real" everywhere.
        mr, mf = masked_hinge_d_terms(real, fake, torch.ones(2, 1, 8, 4), norm)
        want = ((1 - cat(fake[0])).relu().mean() + (1 - cat(real[0])).relu().mean()) / 2
        assert mf == 0 and torch.allclose(mr, want)
    # Left half known: the right half's logits are "generated" (max-pool of 1 - mask).
    mask = torch.ones(2, 1, 8, 4)
    mask[..., 2:] = 0
    big = [[torch.zeros(2, 1, 4, 2)]]
    big[0][0][..., 1] = 5.0  # confident "real" where the image is generated
    _, mf = masked_hinge_d_terms(big, big, mask)
    assert torch.allclose(mf, torch.tensor(6.0))
    with pytest.raises(ValueError, match="masked hinge norm"):
        masked_hinge_d_terms(big, big, mask, "mean")


@pytest.mark.parametrize("known", [0.15, 0.5, 0.85])
def test_masked_hinge_default_is_deepprivacy2s_divisor(known):
    real, fake = _grouped(2), _grouped(3)
    gen = torch.Generator().manual_seed(4)
    mask = (torch.rand(2, 1, 8, 4, generator=gen) < known).float()
    mask[0, :, :4] = 1.0  # a known band: some logit positions see only known pixels
    ours = masked_hinge_d_terms(real, fake, mask)
    dp2 = _dp2_masked_hinge(real, fake, mask)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(ours, dp2, strict=True))
    own_r, own_f = masked_hinge_d_terms(real, fake, mask, "own-positions")
    assert torch.equal(own_f, ours[1]) and not torch.allclose(own_r, ours[0])


def test_loss_objects_call_d_and_pool_its_groups():
    from triagan_model.configs import get_config
    from triagan_model.networks.discriminator import ProjectedDiscriminator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        D = ProjectedDiscriminator(get_config("E-tiny").discriminator).eval()  # 2 networks
    gen = torch.Generator().manual_seed(5)
    real, fake = (torch.rand(2, 3, 18, 10, generator=gen) * 2 - 1 for _ in range(2))
    mask = torch.ones(2, 1, 18, 10)
    mask[..., 4:14, 3:8] = 0
    with torch.no_grad():
        rl, fl = D(real), D(fake)
        assert len(rl) == 2 and all(len(maps) == 4 for maps in rl)
        for loss, terms in ((HingeLoss(), hinge_d_terms(rl, fl)),
                            (MaskedHingeLoss(), masked_hinge_d_terms(rl, fl, mask))):  # fmt: skip
            d = loss.d_loss(D, real, fake, mask)
            assert torch.equal(d.real, terms[0]) and torch.equal(d.fake, terms[1])
            assert torch.equal(d.total, terms[0] + terms[1])
            every = torch.cat([m.flatten() for maps in fl for m in maps])
            assert torch.equal(d.fake_score, every.mean())
            assert torch.equal(loss.g_loss(D, fake), g_terms(fl))
    assert isinstance(build_loss("hinge"), HingeLoss)
    assert build_loss("masked-hinge", "own-positions").norm == "own-positions"
    with pytest.raises(ValueError, match="unknown loss kind"):
        build_loss("wgan")


def test_blur_and_augment():
    assert blur_sigma(0, 4.0, 10.0) == 4.0 and blur_sigma(5000, 4.0, 10.0) == 2.0
    assert blur_sigma(20_000, 4.0, 10.0) == 0.0
    assert stage_blur_fade_kimg(4000, 300_000, tiny=False) == 4000
    assert stage_blur_fade_kimg(4000, 0.5, tiny=True) == pytest.approx(0.04)
    x = torch.full((1, 3, 18, 10), 0.3)
    assert torch.allclose(blur(x, 4.0, "replicate"), x)  # constant stays constant (replicate)
    y = torch.randn(2, 3, 18, 10)
    assert torch.equal(blur(y, 0.1), y) and blur(y, 2.0).std() < y.std()
    with pytest.raises(ValueError, match="blur border"):
        blur(y, 2.0, "reflect")
    torch.manual_seed(0)
    z = torch.ones(4, 3, 50, 40)
    cut = cutout(z)
    zeros = (cut[:, 0] == 0).flatten(1).sum(1)
    assert torch.all(zeros > 0) and torch.all(zeros <= 10 * 8)
    assert color(y).shape == y.shape


@pytest.mark.parametrize(("sigma", "hw"), [(4.0, (18, 10)), (1.3, (36, 20)), (0.7, (72, 40))])
def test_blur_default_is_deepprivacy2s_zero_padded_filter(sigma, hw):
    """DP2's blur: taps exp2(-(x / sigma)^2), |x| <= round(3 sigma), normalised, through
    upfirdn2d.filter2d (zero padding); here the same filter as one 2-D convolution of the
    outer-product kernel with zero padding, an independent computation."""
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, *hw, generator=gen) * 2 - 1
    r = int(round(3 * sigma))
    taps = torch.arange(-r, r + 1).div(sigma).square().neg().exp2()
    taps = taps / taps.sum()
    kernel = (taps[:, None] * taps[None, :]).expand(3, 1, 2 * r + 1, 2 * r + 1)
    want = torch.nn.functional.conv2d(img, kernel, padding=r, groups=3)
    assert torch.allclose(blur(img, sigma), want, atol=1e-6, rtol=0)
    zeros = blur(torch.full((1, 3, *hw), 0.6), sigma)
    assert zeros[..., 0, 0].max() < 0.6 - 0.05  # the border pulled towards grey (0)
    assert not torch.allclose(blur(img, sigma, "replicate"), want, atol=1e-3)


def test_checkpoint_round_trip_and_latest(tmp_path):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], betas=(0.0, 0.99))
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    state = {"opt": opt.state_dict(), "t": (1, "a", None), "x": [torch.arange(3), 2.5]}
    checkpoint.save(tmp_path, 10, state)
    back = checkpoint.load(checkpoint.state_path(tmp_path, 10))
    assert back["t"] == (1, "a", None) and back["opt"]["param_groups"][0]["betas"] == (0.0, 0.99)
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))])
    opt2.load_state_dict(back["opt"])  # int keys survive
    for n in (20, 30):
        checkpoint.save(tmp_path, n, state, keep=2)
    assert [p.name for p in checkpoint.list_states(tmp_path)] == [
        "state-000000000030.safetensors", "state-000000000020.safetensors"]  # fmt: skip
    checkpoint.state_path(tmp_path, 30).write_bytes(b"torn")
    path, _ = checkpoint.load_latest(tmp_path)
    assert path.name == "state-000000000020.safetensors"


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_skip_batches_resumes_the_stream(manifest, workers):
    from triagan_model.data.loader import build_loader

    kw = dict(resolution=(18, 10), batch_size=3, seed=1, num_workers=workers, shuffle_buffer=4)
    full = [b["key"] for b in itertools.islice(build_loader(manifest, **kw), 9)]
    for k in (1, 4, 7):  # within the first epoch, at its end, in the second
        rest = build_loader(manifest, skip_batches=k, **kw)
        assert [b["key"] for b in itertools.islice(rest, 9 - k)] == full[k:]


def test_batch_plan():
    stage = load_config("E", warn_tiny=False).stages[0]  # batch 1024
    assert plan_batch(stage, 32, 8).accum == 4
    assert plan_batch(stage, None, 8).batch_gpu == 128
    with pytest.raises(ValueError, match="batch-gpu"):
        plan_batch(stage, 48, 8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: str, manifest: str, out: str) -> None:
    from safetensors.torch import save_file

    from triagan_model.data.loader import build_loader
    from triagan_model.training import distributed
    from triagan_model.training.augment import diff_augment

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    info = distributed.init("cpu")
    opts = TrainOptions(config=load_config(cfg, warn_tiny=False), manifest=manifest,
                        run_dir=f"{out}/run", num_workers=0, tick_kimg=0.002, grid_size=2,
                        snapshot_ticks=1, image_ticks=1, progress=False)  # fmt: skip
    nets = loop.build_nets(opts, 0, info.device, None)
    batches = build_loader(manifest, resolution=(18, 10), batch_size=1, seed=3, rank=rank,
                           world_size=world)  # fmt: skip
    torch.manual_seed(100 + rank)  # different augmentation/noise draws per rank
    data = iter(batches)
    for _ in range(2):
        loop.train_step(nets, [next(data)], opts=opts, info=info, sigma=1.0,
                        augment=diff_augment(("color", "cutout")),
                        autocast=contextlib.nullcontext)  # fmt: skip
    tensors = {f"{p}/{k}": v.contiguous() for p, m in (("G", nets.G), ("D", nets.D))
               for k, v in m.state_dict().items() if torch.is_tensor(v)}  # fmt: skip
    save_file(tensors, f"{out}/rank{rank}.safetensors")
    loop.train(opts)  # the whole (one-stage) run under gloo: only rank 0 writes


def test_two_process_gloo_replicas_stay_identical(tmp_path, manifest):
    from safetensors.torch import load_file

    cfg = write_config(tmp_path / "c.toml", ((18, 10, "[1, 1]", 0.004),))
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(cfg), str(manifest),
                                str(tmp_path)), nprocs=2, join=True)  # fmt: skip
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "run" / "18x10" / "stage-complete.json").is_file()
    stats = (tmp_path / "run" / "18x10" / "stats.jsonl").read_text().splitlines()
    assert [json.loads(x)["nimg"] for x in stats] == [2, 4]  # written once, by rank 0
    assert json.loads((tmp_path / "run" / "18x10" / "stage.json").read_text())["world_size"] == 2


def test_prepared_shards_feed_the_stages_they_hold(tmp_path, manifest):
    """`--prepared DIR` (from `triagan prepare`): a stage whose resolution DIR holds reads the
    pre-resized shards, the others the manifest; a preparation of other bytes is refused."""
    from triagan_model.data.manifest import manifest_sha256

    prepared = tmp_path / "prepared"
    assert main(["prepare", "--manifest", str(manifest), "--resolutions", "18",
                 "--out", str(prepared)]) == 0  # fmt: skip
    cfg, run = write_config(tmp_path / "c.toml"), tmp_path / "run"
    assert _run(train_args(cfg, manifest, run, "--prepared", str(prepared))) == 0
    stage_18 = json.loads((run / "18x10" / "stage.json").read_text())["stage_manifest"]
    stage_36 = json.loads((run / "36x20" / "stage.json").read_text())["stage_manifest"]
    assert Path(stage_18).parent.name == "18x10" and Path(stage_18).is_relative_to(prepared)
    assert Path(stage_36) == manifest.resolve()

    prepared_manifest = Path(stage_18)
    doc = json.loads(prepared_manifest.read_text())
    assert doc["provenance"]["parent"]["sha256"] == manifest_sha256(manifest)
    doc["provenance"]["parent"]["sha256"] = "0" * 64  # as if prepared from other bytes
    prepared_manifest.write_text(json.dumps(doc))
    assert _run(train_args(cfg, manifest, tmp_path / "run2", "--prepared", str(prepared))) == 2


def test_keypoints_overlay_is_used_and_recorded(tmp_path, manifest):
    from triagan_model.data.manifest import file_sha256

    overlay = tmp_path / "fdh_keypoints_train.json"
    overlay.write_text(json.dumps({"999999": [[0.5, 0.5, 2.0]] * 17}))
    cfg = write_config(tmp_path / "c.toml", ((18, 10, "[1, 1]", 0.002),))
    run = tmp_path / "run"
    assert _run(train_args(cfg, manifest, run, "--keypoints-overlay", str(overlay))) == 0
    record = json.loads((run / "18x10" / "stage.json").read_text())["keypoints_overlay"]
    assert record == {"path": str(overlay.resolve()), "sha256": file_sha256(overlay)}
