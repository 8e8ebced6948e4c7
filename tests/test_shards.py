"""Shard layer: exact member names, byte-identical rewrites, format variants, atomic writes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fdhclean import fdh
from fdhclean.shards import (
    RawSample,
    ShardReadError,
    ShardWriter,
    copy_sample_members,
    count_samples,
    decode_image,
    decode_keypoints,
    decode_mask,
    decode_vertices,
    detect_units,
    encode_npy,
    encode_png,
    from_normalized,
    iter_shard,
    list_shards,
    rank_from_env,
    read_shard,
    shards_for_rank,
    to_normalized,
)

H, W = fdh.IMAGE_H, fdh.IMAGE_W


def make_members(
    seed: int,
    *,
    emask: str = "E_mask.png",
    mask_scale: int = 1,
    vert_shape: tuple[int, ...] = (H, W),
    vert_dtype: type = np.int32,
    pixels: bool = False,
) -> dict[str, bytes]:
    """One FDH-like sample in a given storage variant (tests build their own shards)."""
    rng = np.random.default_rng(seed)
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = rng.uniform(0.05, 0.95, 17)
    kp[:, 1] = rng.uniform(0.05, 0.95, 17)
    kp[:, 2] = rng.integers(0, 3, 17)
    if pixels:
        kp[:, 0] *= W
        kp[:, 1] *= H
    mask = (rng.random((H, W)) > 0.5).astype(np.uint8) * mask_scale
    verts = rng.integers(0, fdh.CSE_NUM_VERTICES, size=vert_shape).astype(vert_dtype)
    return {
        "image.png": encode_png(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)),
        "mask.png": encode_png(mask),
        "maskrcnn_mask.png": encode_png(mask),
        emask: encode_png(mask),
        "vertices.npy": encode_npy(verts),
        "keypoints.npy": encode_npy(kp),
    }


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]], mtime: int = 0) -> Path:
    with ShardWriter(path, mtime=mtime) as writer:
        for key, members in samples:
            writer.write(key, members)
    return path


@pytest.fixture()
def shard(tmp_path: Path) -> tuple[Path, list[tuple[str, dict[str, bytes]]]]:
    samples = [(str(1000 + i), make_members(i, emask="E_mask.png")) for i in range(3)]
    samples.append(("2000", make_members(9, emask="e_mask.png")))
    (tmp_path / "in").mkdir()
    return write_shard(tmp_path / "in" / "out-000000.tar", samples), samples


def test_read_keeps_names_order_and_bytes(shard) -> None:
    path, samples = shard
    got = read_shard(path)
    assert [s.key for s in got] == [k for k, _ in samples]
    assert [s.index for s in got] == list(range(len(samples)))
    assert all(s.shard == "out-000000.tar" for s in got)
    for sample, (_, members) in zip(got, samples, strict=True):
        assert list(sample.members) == list(members)  # stored case and tar order
        assert sample.members == members
    assert got[0].find("e_mask.png") == "E_mask.png"
    assert got[3].find("E_MASK.PNG") == "e_mask.png"
    assert got[0].get("e_mask.png") == samples[0][1]["E_mask.png"]
    assert got[0].find("keypoints_original.npy") is None
    with pytest.raises(KeyError, match=r"1000.*out-000000\.tar.*keypoints_original"):
        got[0].get("keypoints_original.npy")
    assert count_samples(path) == 4


def test_rewrite_is_byte_identical_and_deterministic(shard, tmp_path: Path) -> None:
    path, _ = shard
    outs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        out = tmp_path / name / "out-000000.tar"
        with ShardWriter(out) as writer:
            for sample in iter_shard(path):
                writer.write(sample.key, copy_sample_members(sample))
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == path.read_bytes()
    with tarfile.open(tmp_path / "a" / "out-000000.tar") as tar:
        for info in tar.getmembers():
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (
                0,
                0,
                0,
                "",
                "",
                0o644,
            )
            assert info.isreg()


def test_copy_sample_members_replace_and_add(shard, tmp_path: Path) -> None:
    path, _ = shard
    sample = read_shard(path)[3]  # stored as e_mask.png
    new_kp = encode_npy(np.ones((17, 3), np.float32))
    out = copy_sample_members(
        sample,
        replace={"KEYPOINTS.npy": new_kp, "E_mask.png": b"x"},
        add={fdh.MEMBER_KEYPOINTS_ORIGINAL: b"o", fdh.MEMBER_KEYPOINTS_ESTIMATED: b"e"},
    )
    assert list(out) == [*sample.members, "keypoints_original.npy", "keypoints_estimated.npy"]
    assert out["keypoints.npy"] == new_kp and out["e_mask.png"] == b"x"
    for name in ("image.png", "mask.png", "maskrcnn_mask.png", "vertices.npy"):
        assert out[name] is sample.members[name]
    with pytest.raises(KeyError, match="2000"):
        copy_sample_members(sample, replace={"nothere.npy": b""})
    with pytest.raises(ValueError, match="already has member"):
        copy_sample_members(sample, add={"IMAGE.png": b""})
    # Written back, only the replaced member differs.
    out_path = write_shard(tmp_path / "out-000001.tar", [(sample.key, out)])
    back = read_shard(out_path)[0]
    assert back.members == out and list(back.members) == list(out)


def test_webdataset_reads_our_shards(shard) -> None:
    wds = pytest.importorskip("webdataset")
    path, samples = shard
    dataset = wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
    got = list(dataset)
    assert [s["__key__"] for s in got] == [k for k, _ in samples]
    for sample, (_, members) in zip(got, samples, strict=True):
        for suffix, data in members.items():
            assert sample[suffix.lower()] == data  # webdataset lowercases suffixes


@pytest.mark.parametrize("emask", ["E_mask.png", "e_mask.png"])
@pytest.mark.parametrize("mask_scale", [1, 255])
def test_mask_variants(tmp_path: Path, emask: str, mask_scale: int) -> None:
    members = make_members(3, emask=emask, mask_scale=mask_scale)
    sample = read_shard(write_shard(tmp_path / "out-000000.tar", [("7", members)]))[0]
    expected = decode_mask(encode_png(np.asarray(decode_mask(members["mask.png"]))))
    for name in ("mask.png", "maskrcnn_mask.png", "E_mask.png"):
        mask = decode_mask(sample.get(name))
        assert mask.dtype == np.bool_ and mask.shape == (H, W)
        np.testing.assert_array_equal(mask, expected)
    assert 0 < expected.sum() < H * W


@pytest.mark.parametrize("shape", [(H, W), (1, H, W)])
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_vertex_variants(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(0, fdh.CSE_NUM_VERTICES, size=shape).astype(dtype)
    verts = decode_vertices(encode_npy(stored))
    assert verts.dtype == np.int32 and verts.shape == (H, W)
    np.testing.assert_array_equal(verts, stored.reshape(H, W))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((H, W), np.float32),  # float ids are not ids
        np.zeros((H, W + 1), np.int32),
        np.zeros((2, H, W), np.int32),
        np.zeros((H * W,), np.int32),
        np.full((H, W), 2**40, np.int64),  # does not fit int32
    ],
)
def test_vertices_rejected(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="vertices|vertex"):
        decode_vertices(encode_npy(bad))


def test_image_decode_and_rejects() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_png(rgb)), rgb)
    grey = decode_image(encode_png(rgb[..., 0]))
    assert grey.shape == (H, W, 3) and grey.dtype == np.uint8
    with pytest.raises(ValueError, match="shape"):
        decode_image(encode_png(rgb[:, :100]))
    assert decode_image(encode_png(rgb[:18, :10]), shape=None).shape == (18, 10, 3)
    with pytest.raises(ValueError, match="undecodable"):
        decode_image(b"not a png")
    with pytest.raises(ValueError, match="mode"):
        decode_image(encode_png(np.zeros((H, W, 4), np.uint8)))
    with pytest.raises(ValueError, match="1-channel"):
        decode_mask(encode_png(rgb))
    with pytest.raises(ValueError, match="shape"):
        decode_mask(encode_png(np.zeros((H, 10), np.uint8)))


def test_keypoints_decode_keeps_dtype_and_rejects() -> None:
    for dtype in (np.float32, np.float64):
        kp = np.arange(51, dtype=dtype).reshape(17, 3)
        got = decode_keypoints(encode_npy(kp))
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, kp)
    for bad in (np.zeros((17, 2), np.float32), np.zeros((1, 17, 3), np.float32)):
        with pytest.raises(ValueError, match="shape"):
            decode_keypoints(encode_npy(bad))
    with pytest.raises(ValueError, match="undecodable"):
        decode_keypoints(b"\x93NUMPY garbage")
    # Pickled object arrays are refused: a shard must never run code.
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}] * 51, dtype=object).reshape(17, 3), allow_pickle=True)
    with pytest.raises(ValueError):
        decode_keypoints(buffer.getvalue())


def test_units_detection_and_conversion(tmp_path: Path) -> None:
    norm = [decode_keypoints(make_members(i)["keypoints.npy"]) for i in range(3)]
    pix = [decode_keypoints(make_members(i, pixels=True)["keypoints.npy"]) for i in range(3)]
    assert detect_units(norm) == fdh.UNITS_NORMALIZED
    assert detect_units(pix) == fdh.UNITS_PIXELS
    assert detect_units([]) == fdh.UNITS_NORMALIZED
    # One pixel-unit point anywhere decides; NaN/inf never do; 1.2 is still normalised.
    edge = np.zeros((17, 3), np.float32)
    edge[0, :2] = (1.2, -0.3)
    edge[1, 0] = np.inf
    edge[2, 1] = np.nan
    assert detect_units([edge]) == fdh.UNITS_NORMALIZED
    assert detect_units([edge, pix[0]]) == fdh.UNITS_PIXELS
    for kp_pix, kp_norm in zip(pix, norm, strict=True):
        conv = to_normalized(kp_pix, fdh.UNITS_PIXELS)
        assert conv.dtype == np.float64
        np.testing.assert_allclose(conv, kp_norm, rtol=1e-6)
        np.testing.assert_array_equal(conv[:, 2], kp_pix[:, 2])
        back = from_normalized(conv, fdh.UNITS_PIXELS, kp_pix.dtype)
        assert back.dtype == np.float32
        np.testing.assert_array_equal(back, kp_pix)  # exact round trip in the input dtype
    same = to_normalized(norm[0], fdh.UNITS_NORMALIZED)
    assert same is not norm[0]
    np.testing.assert_array_equal(same, norm[0])
    with pytest.raises(ValueError, match="units"):
        to_normalized(norm[0], "cm")


def test_truncated_and_corrupt_shards(shard, tmp_path: Path) -> None:
    path, _ = shard
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    cuts = {
        "mid-data": len(data) // 2,
        "mid-header": offsets[7] + 100,
        "member-boundary": offsets[6],  # whole members, but no end-of-archive marker
        "one-byte": 1,
        "empty": 0,
    }
    for label, cut in cuts.items():
        bad = tmp_path / f"out-{label}.tar"
        bad.write_bytes(data[:cut])
        with pytest.raises(ShardReadError, match=f"out-{label}.tar"):
            list(iter_shard(bad))
        with pytest.raises(ShardReadError, match=f"out-{label}.tar"):
            count_samples(bad)
    corrupt = bytearray(data)
    corrupt[offsets[7] + 10] ^= 0xFF  # a header byte: the checksum no longer matches
    bad = tmp_path / "out-corrupt.tar"
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(ShardReadError, match=r"out-corrupt\.tar.*corrupt"):
        list(iter_shard(bad))
    with pytest.raises(ShardReadError, match="out-missing.tar"):
        list(iter_shard(tmp_path / "out-missing.tar"))


def test_bad_member_layouts(tmp_path: Path) -> None:
    def raw_tar(path: Path, names: list[str]) -> Path:
        with tarfile.open(path, "w") as tar:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
        return path

    # count_samples (verify, manifest) refuses exactly what the reader refuses
    dup = raw_tar(tmp_path / "dup.tar", ["1.E_mask.png", "1.e_mask.png"])
    split = raw_tar(tmp_path / "split.tar", ["1.image.png", "2.image.png", "1.mask.png"])
    interleaved = raw_tar(tmp_path / "il.tar", ["1.a.png", "2.a.png", "1.b.png", "2.a.png"])
    nosuffix = raw_tar(tmp_path / "nosuffix.tar", ["README"])
    for path, message in (
        (dup, "repeats"), (split, "not consecutive"), (interleaved, "not consecutive"),
        (nosuffix, "README"),
    ):  # fmt: skip
        for read in (read_shard, count_samples):
            with pytest.raises(ShardReadError, match=message):
                read(path)
    nested = raw_tar(tmp_path / "nested.tar", ["d/12.x.image.png", "d/12.y.npy"])
    got = read_shard(nested)
    assert [(s.key, list(s.members)) for s in got] == [("d/12", ["x.image.png", "y.npy"])]


def test_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out-000000.tar"
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(target) as writer:
        writer.write("1", make_members(0))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # no temp file, no partial target

    write_shard(target, [("1", make_members(0))])
    before = target.read_bytes()
    with pytest.raises(RuntimeError), ShardWriter(target) as writer:
        writer.write("2", make_members(1))
        assert target.read_bytes() == before  # the old shard stays until a clean close
        raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-000000.tar"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "out-000000.tar") as writer:
        writer.write("1", {"a.npy": b"1"})
        for key, members in [
            ("1", {"a.npy": b"1"}),  # repeated key
            ("1.5", {"a.npy": b"1"}),  # a dot would move the key/suffix split
            ("", {"a.npy": b"1"}),
            ("3", {}),
            ("3", {"E_mask.png": b"", "e_mask.png": b""}),
        ]:
            with pytest.raises(ValueError):
                writer.write(key, members)
    assert [s.key for s in read_shard(tmp_path / "out-000000.tar")] == ["1"]
    with pytest.raises(ValueError, match="closed"):
        writer.write("4", {"a.npy": b"1"})


def test_mtime_is_recorded(tmp_path: Path) -> None:
    a = write_shard(tmp_path / "out-000000.tar", [("1", {"a.npy": b"1"})], mtime=0)
    b = write_shard(tmp_path / "out-000001.tar", [("1", {"a.npy": b"1"})], mtime=1700000000)
    assert a.read_bytes() != b.read_bytes()
    with tarfile.open(b) as tar:
        assert tar.getmembers()[0].mtime == 1700000000


def test_list_shards(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train"):
        list_shards(tmp_path, "train")
    split = tmp_path / "train"
    split.mkdir()
    with pytest.raises(FileNotFoundError, match="no shards"):
        list_shards(tmp_path, "train")
    for name in ("out-000002.tar", "out-000000.tar", ".out-000001.tar.abc.tmp", "notes.txt"):
        (split / name).write_bytes(b"")
    assert [p.name for p in list_shards(tmp_path, "train")] == ["out-000000.tar", "out-000002.tar"]


@pytest.mark.parametrize("n_shards", [0, 1, 3, 5, 12])
def test_shards_for_rank_partition(n_shards: int) -> None:
    shards = [f"out-{i:06d}.tar" for i in range(n_shards)]
    for world_size in [*range(1, 8), n_shards + 3]:
        parts = [shards_for_rank(shards, r, world_size) for r in range(world_size)]
        flat = [s for part in parts for s in part]
        assert sorted(flat) == shards and len(flat) == len(set(flat))
        assert parts == [shards_for_rank(shards, r, world_size) for r in range(world_size)]
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced


def test_shards_for_rank_rejects() -> None:
    for rank, world in [(-1, 2), (2, 2), (0, 0), (True, 2)]:
        with pytest.raises(ValueError):
            shards_for_rank([1, 2], rank, world)


def test_rank_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_from_env() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_from_env() == (2, 4)
    assert rank_from_env(1, None) == (1, 4)
    assert rank_from_env(0, 1) == (0, 1)
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="rank"):
        rank_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK"):
        rank_from_env()


def test_raw_sample_find_exact_first() -> None:
    sample = RawSample(key="1", shard="s.tar", index=0, members={"a.png": b"1", "A.PNG": b"2"})
    assert sample.find("A.PNG") == "A.PNG"
    assert sample.get("a.png") == b"1"


def test_writer_bytes_equal_tarfiles_own_output(tmp_path):
    """ShardWriter builds headers itself (fast path); they must be tarfile's, byte for byte."""
    import io
    import tarfile

    from fdhclean.shards import ShardWriter, tar_header

    samples = [
        ("123", {"image.png": b"\x89PNG" + bytes(700), "E_mask.png": b"x" * 512}),
        ("4567", {"keypoints.npy": b"", "vertices.npy": bytes(range(256)) * 9}),
        ("9" * 120, {"long_name.bin": b"long names need a PAX extended header"}),
        ("77", {"ünïcödé.txt": b"non-ASCII member names too"}),
    ]
    ours = tmp_path / "ours.tar"
    with ShardWriter(ours, mtime=1234) as writer:
        for key, members in samples:
            writer.write(key, members)
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples:
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 1234, 0o644, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    assert ours.read_bytes() == reference.getvalue()
    # the reader's fast path (plain headers) and its tarfile fallback (PAX) give them back
    from fdhclean.shards import read_shard

    assert [(s.key, s.members) for s in read_shard(ours)] == samples
    for size in (0, 1, 511, 512, 10**9, 8**11 - 1, 8**11):
        info = tarfile.TarInfo("1.a.png")
        info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
        info.uname = info.gname = ""
        assert tar_header("1.a.png", size, 0) == info.tobuf(
            tarfile.PAX_FORMAT, "utf-8", "surrogateescape"
        )
