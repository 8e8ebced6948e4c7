"""Damaged tars (issue 12 class 1, 2, 5): every byte of a shard is accounted for.

Each test builds the damage itself: a zeroed header mid-shard, a zero-filled tail, archives
concatenated, garbage after the end marker, samples made of links, non-UTF-8 names, a shard
truncated while it is read. Also: reader and writer hash the bytes while they pass.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from fdhclean.shards import ShardReader, ShardReadError, ShardWriter, count_samples, read_shard


def members(i: int, size: int = 700) -> dict[str, bytes]:
    """Small non-zero members (no zero 512-byte block inside, like real PNG/npy data)."""
    body = hashlib.sha256(str(i).encode()).digest()
    return {"image.png": (body * (size // 32 + 1))[:size], "keypoints.npy": body * 3}


def make_shard(path: Path, n: int = 6, first: int = 1000, size: int = 700) -> Path:
    with ShardWriter(path) as writer:
        for i in range(n):
            writer.write(str(first + i), members(first + i, size))
    return path


def test_reader_and_writer_hash_while_streaming(tmp_path: Path) -> None:
    path = tmp_path / "out-000000.tar"
    with ShardWriter(path) as writer:
        assert writer.sha256 is None
        for i in range(5):
            writer.write(str(i), members(i))
    data = path.read_bytes()
    assert writer.sha256 == hashlib.sha256(data).hexdigest()
    assert writer.bytes == len(data)
    reader = ShardReader(path)
    got = [(s.key, s.members, s.problems) for s in reader]
    assert got == [(str(i), members(i), []) for i in range(5)]
    assert reader.sha256 == writer.sha256
    assert (reader.bytes_read, reader.samples, reader.archives) == (len(data), 5, 1)
    assert ShardReader(path, hash=False).sha256 is None


def test_zeroed_header_mid_shard_fails_with_offset(tmp_path: Path) -> None:
    path = make_shard(tmp_path / "out-000000.tar", n=8)
    offset = read_shard(path)[5].offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 512] = bytes(512)  # what a crash leaves
    bad = tmp_path / "out-000001.tar"
    bad.write_bytes(bytes(data))
    for read in (read_shard, count_samples):
        with pytest.raises(ShardReadError, match=rf"out-000001\.tar.*zeroed.*at byte {offset}"):
            read(bad)


def test_zero_filled_tail_is_not_a_clean_end(tmp_path: Path) -> None:
    path = make_shard(tmp_path / "out-000000.tar", n=40)
    data = bytearray(path.read_bytes())
    offset = read_shard(path)[30].offset
    data[offset:] = bytes(len(data) - offset)  # the last pages never reached the disk
    bad = tmp_path / "out-000001.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(ShardReadError, match=rf"zero bytes.*zero-filled.*at byte {offset}"):
        read_shard(bad)


def test_concatenated_archives_are_all_read(tmp_path: Path) -> None:
    a = make_shard(tmp_path / "a.tar", n=3, first=1)
    b = make_shard(tmp_path / "b.tar", n=4, first=10)
    both = tmp_path / "out-000000.tar"
    both.write_bytes(a.read_bytes() + b.read_bytes())
    reader = ShardReader(both)
    assert [s.key for s in reader] == ["1", "2", "3", "10", "11", "12", "13"]
    assert reader.archives == 2
    assert reader.sha256 == hashlib.sha256(both.read_bytes()).hexdigest()
    assert count_samples(both) == 7


def test_data_after_end_marker_fails(tmp_path: Path) -> None:
    path = make_shard(tmp_path / "out-000000.tar", n=2)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"garbage" * 100)
    with pytest.raises(ShardReadError, match=rf"at byte {size}.*not a second tar archive"):
        read_shard(path)


def _add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x"):
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        info.linkname = "1.image.png"
        tar.addfile(info)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_link_members_are_per_sample_problems(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "out-000000.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        _add(tar, "1.image.png")
        _add(tar, "d/", tarfile.DIRTYPE)  # directories carry no data: passed over
        _add(tar, "2.image.png", tarfile.SYMTYPE)
        _add(tar, "2.mask.png", tarfile.LNKTYPE)
        _add(tar, "3.image.png")
        _add(tar, "3.mask.png", tarfile.FIFOTYPE)
    got = read_shard(path)
    assert [(s.key, list(s.members)) for s in got] == [
        ("1", ["image.png"]),
        ("2", []),  # all links: still a sample, reported, not dropped
        ("3", ["image.png"]),
    ]
    assert got[0].problems == []
    assert len(got[1].problems) == 2
    assert "'2.image.png' at byte" in got[1].problems[0]
    assert "symbolic link" in got[1].problems[0] and "hard link" in got[1].problems[1]
    assert "FIFO" in got[2].problems[0]
    assert count_samples(path) == 3


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_non_utf8_name_is_a_sample_problem(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "out-000000.tar"
    with tarfile.open(path, "w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        _add(tar, "1.image.png")
        _add(tar, "2\udcff.image.png", data=b"y")  # raw byte 0xff in the stored name
        _add(tar, "3.image.png")
    got = read_shard(path)
    assert [s.key for s in got] == ["1", "2\\xff", "3"]
    bad = got[1]
    assert bad.members == {"image.png": b"y"}
    assert "not valid UTF-8" in bad.problems[0] and f"at byte {bad.offset}" in bad.problems[0]
    bad.key.encode("utf-8")  # printable and encodable: reports and JSON can carry it
    with pytest.raises(ValueError, match="not valid UTF-8"):
        ShardWriter(tmp_path / "out.tar").write("2\udcff", {"image.png": b"y"})


def test_long_names_and_prefixes_read_like_tarfile(tmp_path: Path) -> None:
    names = ["a" * 150 + "/1.image.png", "b" * 90 + "/" + "c" * 60 + "/2.image.png"]
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / f"{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as tar:
            for i, name in enumerate(names):
                _add(tar, name, data=bytes([65 + i]) * (600 + i))
        got = read_shard(path)
        assert [s.key + "." + next(iter(s.members)) for s in got] == names
        assert got[1].members["image.png"] == b"B" * 601


def test_shard_truncated_while_read_is_a_clear_error(tmp_path: Path) -> None:
    """With the old memory map this was SIGBUS; now a short read names the file and offset."""
    path = make_shard(tmp_path / "out-000000.tar", n=12, size=400_000)  # > the 1 MiB buffer
    reader = iter(ShardReader(path))
    first = next(reader)
    assert first.key == "1000"
    with open(path, "r+b") as fh:
        fh.truncate(2_000_000)
    with pytest.raises(ShardReadError, match=r"out-000000\.tar.*truncated.*at byte \d+"):
        list(reader)


def test_forged_member_size_is_an_error_not_an_allocation(tmp_path: Path) -> None:
    path = tmp_path / "out-000000.tar"
    info = tarfile.TarInfo("1.image.png")
    info.size = 2**40  # a terabyte claimed by a 10 KiB file
    path.write_bytes(info.tobuf(tarfile.GNU_FORMAT) + bytes(9216))
    for read in (read_shard, count_samples):
        with pytest.raises(
            ShardReadError, match=r"truncated.*1\.image\.png.*from byte 512.*ends at byte 9728"
        ):
            read(path)


def test_memory_is_bounded_by_one_sample(tmp_path: Path) -> None:
    import tracemalloc

    path = make_shard(tmp_path / "out-000000.tar", n=30, size=200_000)  # 6 MB shard
    tracemalloc.start()
    try:
        reader = ShardReader(path)
        for _ in reader:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reader.samples == 30
    assert peak < 1_000_000, peak  # one 200 kB sample + the 64 KiB read buffer, not 6 MB


def test_random_damage_is_always_a_shard_read_error(tmp_path: Path) -> None:
    """Flipped bytes and cuts anywhere (headers, PAX records, data, end marker): the reader
    returns samples or raises ShardReadError, never another exception."""
    import random

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, name in enumerate(["1.image.png", "1.mask.png", "2.imäge.png", "a" * 120 + "/3.x"]):
            _add(tar, name, data=bytes([i + 1]) * (300 + 700 * i))
    base = buffer.getvalue()
    rng = random.Random(12)
    path = tmp_path / "out-000000.tar"
    outcomes = {"read": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.choice([1, 2, 8])):
            data[rng.randrange(min(len(data), 4096))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        path.write_bytes(bytes(data))
        for read in (read_shard, count_samples):
            try:
                read(path)
                outcomes["read"] += 1
            except ShardReadError:
                outcomes["refused"] += 1
    assert min(outcomes.values()) > 20, outcomes  # both kinds of damage were produced
