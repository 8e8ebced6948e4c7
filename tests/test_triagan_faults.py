"""triagan_model under faults (issue 12, classes 10-12): one atomic writer and one hash helper,
killed training, damaged checkpoints and weights, shards that differ from their manifest,
junk members and samples refine marked as errors."""

from __future__ import annotations

import hashlib
import json
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


# ---------------------------------------------------------------- class 10: resume and weights

TOML = (
    'base = "A-tiny"\nname = "test-faults"\n[loss]\nkind = "masked-hinge"\n'
    "[generator]\nw_dim = 64\nz_dim = 16\n"
    "[[stages]]\nresolution = [18, 10]\ndim = 16\ndim_mults = [1, 1]\nbatch = 2\nkimg = 0.006\n"
    "[[stages]]\nresolution = [36, 20]\ndim = 16\ndim_mults = [1, 1, 1]\nbatch = 2\nkimg = 0.002\n"
)
STAGES = ("18x10", "36x20")

# Runs `triagan train` with checkpoint.save wrapped so that the process SIGKILLs itself right
# after writing the checkpoint at image KILL_AT of stage KILL_STAGE (before the EMA weights).
# It takes the parent's torch thread count: the reruns happen in this process, and another
# thread count sums in another order (in-process `prepare` sets 1 thread, for instance).
KILLER = """
import os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(int(os.environ["KILL_THREADS"]))  # the parent's: same float reductions
from triagan_model.training import checkpoint
real = checkpoint.save
def save_then_die(directory, nimg, state, keep=2):
    out = real(directory, nimg, state, keep)
    stage, at = os.environ["KILL_STAGE"], int(os.environ["KILL_AT"])
    if Path(directory).parent.name == stage and nimg == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
checkpoint.save = save_then_die
from triagan_model.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train_args(cfg: Path, manifest: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(cfg), "--manifest", str(manifest), "--run-dir", str(run),
            "--device", "cpu", "--workers", "0", "--tick-kimg", "0.002", "--grid-size", "2",
            "--no-progress", "--snapshot-ticks", "1", "--image-ticks", "4", *extra]  # fmt: skip


def _train(args: list[str]) -> int:
    import warnings

    from triagan_model.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny-config warning
        return main(args)


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    from triagan_shards import make_shards

    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=5)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_manifest) -> tuple[Path, Path]:
    """(config, run dir) of an uninterrupted two-stage run: 3 + 1 steps, a checkpoint each."""
    d = tmp_path_factory.mktemp("reference")
    cfg = d / "c.toml"
    cfg.write_text(TOML)
    assert _train(_train_args(cfg, tiny_manifest, d / "run")) == 0
    return cfg, d / "run"


def _weights_sha(run: Path, stage: str) -> str:
    return sha256_file(run / stage / "weights" / "generator.safetensors")


def test_sigkill_after_the_final_checkpoint_rerun_finishes_the_weights(
    tmp_path, tiny_manifest, reference_run, capsys
):
    import os
    import signal
    import subprocess
    import sys

    cfg, ref = reference_run
    run = tmp_path / "run"
    import torch

    env = {**os.environ, "KILL_STAGE": "18x10", "KILL_AT": "6",
           "KILL_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": str(PACKAGE.parent), "PYTHONWARNINGS": "ignore"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", KILLER, *_train_args(cfg, tiny_manifest, run)],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    doc = json.loads((run / "18x10" / "weights" / "generator.json").read_text())
    assert doc["nimg"] == 4  # the kill left step 2's weights beside step 3's checkpoint
    assert not (run / "18x10" / "stage-complete.json").exists()
    assert _train(_train_args(cfg, tiny_manifest, run)) == 0
    assert "weights are at 4 images, the checkpoint at 6" in capsys.readouterr().out
    for stage in STAGES:  # the stage's weights, and so the next stage's, as if never killed
        assert _weights_sha(run, stage) == _weights_sha(ref, stage), stage
    assert json.loads((run / "18x10" / "weights" / "generator.json").read_text())["nimg"] == 6


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside the tensor data (past the header), so safetensors still loads it."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + (len(data) - start) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_flipped_bytes_is_moved_aside_and_the_previous_used(
    tmp_path, tiny_manifest, reference_run, capsys
):
    from triagan_model.training import checkpoint

    cfg, ref = reference_run
    run = tmp_path / "run"
    assert _train(_train_args(cfg, tiny_manifest, run, "--slice-kimg", "0.004")) == 0
    ckpts = run / "18x10" / "checkpoints"
    newest = checkpoint.list_states(ckpts)[0]
    assert newest.name == "state-000000000004.safetensors"
    _flip_tensor_byte(newest)
    checkpoint.load(newest)  # safetensors alone does not notice
    capsys.readouterr()
    assert _train(_train_args(cfg, tiny_manifest, run)) == 0
    out = capsys.readouterr().out
    assert f"{newest} moved aside" in out and "is not the recorded" in out
    assert "resuming from" in out and "state-000000000002.safetensors (2 images)" in out
    assert (ckpts / f"{newest.name}.unreadable").is_file()
    for stage in STAGES:
        assert _weights_sha(run, stage) == _weights_sha(ref, stage), stage


def test_a_checkpoint_without_its_record_is_not_trusted(tmp_path, capsys):
    import torch

    from triagan_model.training import checkpoint

    for nimg in (2, 4):
        checkpoint.save(tmp_path, nimg, {"x": torch.full((3,), float(nimg))})
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "state-000000000004.safetensors.sha256"
    checkpoint.sidecar_path(checkpoint.state_path(tmp_path, 4)).unlink()  # killed in between
    path, state = checkpoint.load_latest(tmp_path)
    assert path.name.endswith("02.safetensors") and state["x"].tolist() == [2.0, 2.0, 2.0]
    assert "stopped before recording it" in capsys.readouterr().out
    # A directory from before sidecars existed: loaded, with a warning.
    for side in tmp_path.glob("*.safetensors.sha256"):
        side.unlink()
    assert checkpoint.load_latest(tmp_path)[0].name.endswith("02.safetensors")
    assert "no recorded sha256 (older run)" in capsys.readouterr().out


@pytest.fixture()
def weights_dir(tmp_path, reference_run) -> Path:
    import shutil

    d = tmp_path / "weights"
    shutil.copytree(reference_run[1] / "18x10" / "weights", d)
    return d


def _generate(weights: Path, manifest: Path, out: Path, capsys) -> tuple[int, str]:
    from triagan_model.cli import main

    capsys.readouterr()
    rc = main(["generate", "--weights", str(weights), "--manifest", str(manifest),
               "--out", str(out), "--num", "2", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_generate_requires_and_checks_the_weights_sha256(weights_dir, tiny_manifest, tmp_path,
                                                         capsys):  # fmt: skip
    assert _generate(weights_dir, tiny_manifest, tmp_path / "ok", capsys)[0] == 0
    _flip_tensor_byte(weights_dir / "generator.safetensors")
    rc, err = _generate(weights_dir, tiny_manifest, tmp_path / "flipped", capsys)
    assert rc == 2 and f"{weights_dir / 'generator.safetensors'}: sha256" in err
    assert not (tmp_path / "flipped").exists()
    _edit_json(weights_dir / "generator.json", lambda d: d.pop("weights_sha256"))
    rc, err = _generate(weights_dir, tiny_manifest, tmp_path / "nohash", capsys)
    assert rc == 2 and f"{weights_dir / 'generator.json'} has no valid weights_sha256" in err


@pytest.mark.parametrize("field, value", [("dim", 32), ("dim_mults", [1, 2]), ("w_dim", 48),
                                          ("z_dim", 8)])  # fmt: skip
def test_an_edited_dimension_in_generator_json_is_a_message(weights_dir, tiny_manifest, tmp_path,
                                                            capsys, field, value):  # fmt: skip
    _edit_json(weights_dir / "generator.json", lambda d: d["generator"].__setitem__(field, value))
    rc, err = _generate(weights_dir, tiny_manifest, tmp_path / "out", capsys)
    assert rc == 2, err
    assert f"{weights_dir / 'generator.json'} does not describe" in err
    assert "is (" in err or "missing from the file" in err or "not in the config" in err


# ---------------------------------------------------------------- class 11: what training reads

ONE_STEP = TOML.split("[[stages]]")[0] + (
    "[[stages]]\nresolution = [18, 10]\ndim = 16\ndim_mults = [1, 1]\nbatch = 2\nkimg = 0.002\n"
)


def _replace_member(manifest: Path, shard: str, key: str, suffix: str, data: bytes) -> None:
    """Rewrite one member of a shard and record the new bytes in the manifest, as a refine
    that let the member through would have."""
    import io
    import tarfile

    path = manifest.parent / shard
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for info, old in members:
            new = data if info.name == f"{key}.{suffix}" else old
            info.size = len(new)
            tar.addfile(info, io.BytesIO(new))
    doc = json.loads(manifest.read_text())
    entry = next(s for s in doc["shards"] if s["path"] == shard)
    entry["bytes"], entry["sha256"] = path.stat().st_size, sha256_file(path)
    manifest.write_text(json.dumps(doc))


def _list_error_samples(manifest: Path, listed: dict) -> None:
    doc = json.loads(manifest.read_text())
    doc.setdefault("totals", {})["error_samples"] = listed
    manifest.write_text(json.dumps(doc))


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


def _train_cli(tmp_path: Path, manifest: Path, run: str, *extra: str, capsys) -> tuple:
    cfg = tmp_path / "one.toml"
    cfg.write_text(ONE_STEP)
    capsys.readouterr()
    rc = _train(_train_args(cfg, manifest, tmp_path / run, *extra))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_a_shard_changed_after_its_manifest_never_feeds_a_batch(tmp_path, capsys):
    from triagan_shards import make_shards

    from triagan_model.data.loader import build_loader
    from triagan_model.data.manifest import ManifestError

    manifest = make_shards(tmp_path, n_shards=2, per_shard=3)
    import tarfile

    shard = tmp_path / "out-000001.tar"
    with tarfile.open(shard) as tar:  # a byte of a member training skips: only a hash can tell
        offset = tar.getmember("1004.E_mask.png").offset_data + 40
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))
    kw = dict(batch_size=1, seed=0, shuffle=False, flip=False, infinite=False)
    seen = []
    with pytest.raises(ManifestError, match=r"out-000001\.tar sha256 .* != manifest"):
        for batch in build_loader(manifest, verify="sha256", **kw):
            seen += batch["key"]
    assert seen and set(seen) <= {"1000", "1001", "1002"}  # no sample of the changed shard
    assert len(_keys(build_loader(manifest, verify="size", **kw))) == 6  # sizes cannot tell
    rc, _, err = _train_cli(tmp_path, manifest, "run", capsys=capsys)
    assert rc == 2 and f"shard {shard} sha256" in err
    shard.write_bytes(bytes(data[:-512]))  # truncated: refused at the start, even by size
    with pytest.raises(ManifestError, match=r"out-000001\.tar has \d+ bytes, manifest says"):
        build_loader(manifest, verify="size", **kw)
    rc, _, err = _train_cli(tmp_path, manifest, "run2", "--verify", "size", capsys=capsys)
    assert rc == 2 and "out-000001.tar has" in err


def test_a_junk_image_names_shard_and_key_and_listed_errors_are_skipped(tmp_path, capsys):
    from triagan_shards import make_shards

    manifest = make_shards(tmp_path, n_shards=2, per_shard=3)
    _replace_member(manifest, "out-000001.tar", "1004", "image.png", b"\x89PNG\r\n\x1a\n junk")
    # in a DataLoader worker (the error crosses a process boundary), after the grid's samples
    rc, _, err = _train_cli(tmp_path, manifest, "a", "--workers", "1", capsys=capsys)
    assert rc == 2, err
    assert f"shard {tmp_path / 'out-000001.tar'}, sample 1004: cannot decode" in err
    assert "UnidentifiedImageError" in err and len(err.strip().splitlines()) == 1
    _list_error_samples(manifest, {"out-000001.tar": {"1004": "bad-member"}})
    rc, out, err = _train_cli(tmp_path, manifest, "b", capsys=capsys)
    assert rc == 0, err
    assert "error samples: skipping the 1 the manifest lists (bad-member 1)" in out
    rc, out, err = _train_cli(tmp_path, manifest, "c", "--include-error-samples", capsys=capsys)
    assert rc == 2 and "sample 1004: cannot decode" in err


def test_listed_error_samples_are_skipped_once_everywhere_and_resume_exactly(tmp_path):
    import itertools

    from triagan_shards import make_shards

    from triagan_model.data.loader import FDHStream, LoaderConfig, build_loader
    from triagan_model.data.manifest import error_sample_counts, read_manifest

    manifest = make_shards(tmp_path, n_shards=3, per_shard=4)
    listed = {"out-000000.tar": {"1001": "no-estimate"},
              "out-000002.tar": {"1008": "bad-member", "1011": "bad-keypoints"}}  # fmt: skip
    _list_error_samples(manifest, listed)
    m = read_manifest(manifest)
    assert error_sample_counts(m) == {"bad-keypoints": 1, "bad-member": 1, "no-estimate": 1}
    assert [s.usable_samples for s in m.shards] == [3, 4, 2]
    expected = {str(k) for k in range(1000, 1012)} - {"1001", "1008", "1011"}
    # 2 ranks x 2 workers = 4 slots over 3 shards: every shard is a remainder shard (stride 4)
    keys = []
    for rank, worker in itertools.product(range(2), range(2)):
        cfg = LoaderConfig(resolution=(18, 10), batch_size=2, seed=3, rank=rank, world_size=2,
                           infinite=False, shuffle_buffer=3)  # fmt: skip
        keys += [k for b in FDHStream(m, cfg).pipeline(worker, 2) for k in b["key"]]
    assert sorted(keys) == sorted(expected)
    kw = dict(resolution=(18, 10), batch_size=2, seed=1, shuffle_buffer=3)
    full = [b["key"] for b in itertools.islice(build_loader(manifest, **kw), 10)]
    assert not {"1001", "1008", "1011"} & {k for b in full for k in b}
    for k in (2, 4, 7):  # inside the first epoch (9 samples), across it, in the next
        rest = build_loader(manifest, skip_batches=k, **kw)
        assert [b["key"] for b in itertools.islice(rest, 10 - k)] == full[k:]
    every = build_loader(manifest, include_error_samples=True, infinite=False, **kw)
    assert len(_keys(every)) == 12


def test_an_error_list_that_does_not_match_the_shards_is_refused(tmp_path):
    from triagan_shards import make_shards

    from triagan_model.data.loader import ShardError, build_loader
    from triagan_model.data.manifest import ManifestError, read_manifest

    manifest = make_shards(tmp_path, n_shards=2, per_shard=2)
    _list_error_samples(manifest, {"out-000009.tar": {"1": "bad-member"}})
    with pytest.raises(ManifestError, match="names shard 'out-000009.tar'"):
        read_manifest(manifest)
    _list_error_samples(manifest, {"out-000001.tar": ["1002"]})
    with pytest.raises(ManifestError, match="must map key -> status"):
        read_manifest(manifest)
    _list_error_samples(manifest, {"out-000001.tar": {"7777": "bad-member"}})
    with pytest.raises(ShardError, match=r"out-000001\.tar holds no samples \['7777'\]"):
        _keys(build_loader(manifest, batch_size=1, seed=0, infinite=False))


def test_a_listed_error_key_the_shard_lacks_is_refused_before_its_samples(tmp_path):
    """The tar headers are read before the shard's first sample is used: no batch of it is
    trained on before the refusal (read_shard's own check fires only at the shard's end)."""
    from triagan_shards import make_shards

    from triagan_model.data.loader import ShardError, build_loader

    manifest = make_shards(tmp_path, n_shards=1, per_shard=4)
    _list_error_samples(manifest, {"out-000000.tar": {"1001": "bad-member", "7777": "bad-member"}})
    seen = []
    with pytest.raises(ShardError, match=r"out-000000\.tar holds no samples \['7777'\]"):
        for batch in build_loader(manifest, batch_size=1, seed=0, shuffle=False, infinite=False):
            seen += batch["key"]
    assert seen == []


def test_prepare_leaves_out_listed_error_samples_and_names_a_junk_one(tmp_path):
    from triagan_shards import make_shards

    from triagan_model.data.manifest import read_manifest
    from triagan_model.data.prepare import prepare
    from triagan_model.data.transforms import SampleError

    manifest = make_shards(tmp_path / "src", n_shards=2, per_shard=2)
    _replace_member(manifest, "out-000000.tar", "1001", "mask.png", b"GIF89a")
    with pytest.raises(SampleError, match=r"out-000000\.tar, sample 1001: cannot decode"):
        prepare(manifest, [18], tmp_path / "p1")
    _list_error_samples(manifest, {"out-000000.tar": {"1001": "bad-member"}})
    out = read_manifest(prepare(manifest, [18], tmp_path / "p2").manifests[(18, 10)])
    assert [s.samples for s in out.shards] == [1, 2]
    assert out.provenance["error_samples_skipped"] == 1


def test_include_error_samples_with_prepared_shards_is_refused(tmp_path, capsys):
    """`triagan prepare` always leaves the listed error samples out, so the flag could not do
    what it says with --prepared: refused up front (exit 2), not silently ignored."""
    from triagan_shards import make_shards

    manifest = make_shards(tmp_path, n_shards=1, per_shard=3)
    _list_error_samples(manifest, {"out-000000.tar": {"1001": "no-estimate"}})
    rc, _, err = _train_cli(tmp_path, manifest, "r", "--include-error-samples", "--prepared",
                            str(tmp_path / "prep"), capsys=capsys)  # fmt: skip
    assert rc == 2 and "cannot be combined with --prepared" in err


def test_a_stage_grown_from_weights_of_another_conditioning_mode_is_refused(
    reference_run, tiny_manifest, tmp_path, capsys
):
    """Weights written before `conditioning_mode` existed read as flip-exact; the next stage
    (configured "reference") must not silently switch the keypoint and limb rule."""
    import shutil

    cfg, run = reference_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    stages = sorted(p.name for p in copy.iterdir() if (p / "weights").is_dir())
    first, second = stages[0], stages[-1]
    _edit_json(copy / first / "weights" / "generator.json",
               lambda d: d["generator"].pop("conditioning_mode"))  # fmt: skip
    shutil.rmtree(copy / second)
    capsys.readouterr()
    rc = _train(_train_args(cfg, tiny_manifest, copy))
    err = capsys.readouterr().err
    assert rc == 2 and "conditioning_mode 'flip-exact'" in err and "Traceback" not in err
