"""FDH webdataset shards: read samples, write them back byte for byte, split work by rank.

A shard is the unit of work, output and resume (style.md point 4). Reading keeps each member
under its name *exactly as stored* (webdataset lowercases suffixes, so `E_mask.png` would come
back as `e_mask.png`); writing produces deterministic tar headers, so the same samples always
give the same bytes (refine-spec section 6), and goes through a temporary name in the target
directory that is renamed only after a clean close: a crash never leaves a partial shard.
Member decoding (`fdhclean.decode`) and the writer (`fdhclean.shard_writer`) are re-exported here.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import re
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from fdhclean.atomic import atomic_write_bytes, fsync_dir  # noqa: F401  (re-exported)
from fdhclean.decode import (  # noqa: F401  (re-exported: one import site for shard users)
    FDH_SHAPE,
    KEYPOINTS_SHAPE,
    UNITS,
    decode_image,
    decode_keypoints,
    decode_mask,
    decode_npy,
    decode_vertices,
    detect_units,
    encode_npy,
    encode_png,
    from_normalized,
    to_normalized,
)
from fdhclean.shard_writer import TAR_FORMAT, ShardWriter, tar_header  # noqa: F401  (re-exported)

T = TypeVar("T")

SHARD_PATTERN = "out-%06d.tar"
SHARD_NAME_RE = re.compile(r"^out-\d{6,}\.tar$")
BLOCK = tarfile.BLOCKSIZE


class ShardReadError(Exception):
    """A shard cannot be read (missing, truncated, corrupt, or not FDH-shaped)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read shard {self.path}: {reason}")

    def __reduce__(self):  # picklable: it crosses process boundaries (refine --workers)
        return type(self), (self.path, self.reason)


def split_member_name(name: str) -> tuple[str, str] | None:
    """`dir/123.E_mask.png` -> (`dir/123`, `E_mask.png`): the key ends at the basename's first dot.

    Same rule as webdataset's `base_plus_ext`, but the suffix keeps its case. None when the
    basename has no dot (no suffix).
    """
    head, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    if not dot or not stem or not suffix:
        return None
    return (f"{head}/{stem}" if head else stem), suffix


@dataclass
class RawSample:
    """One sample as stored: its key, where it came from, and its undecoded members."""

    key: str
    shard: str
    index: int
    members: dict[str, bytes] = field(default_factory=dict)

    def find(self, suffix: str) -> str | None:
        """The stored suffix equal to `suffix` ignoring case (`e_mask.png` -> `E_mask.png`)."""
        if suffix in self.members:
            return suffix
        wanted = suffix.lower()
        for stored in self.members:
            if stored.lower() == wanted:
                return stored
        return None

    def get(self, suffix: str) -> bytes:
        """Raw bytes of a member looked up case-insensitively; KeyError names what is missing."""
        stored = self.find(suffix)
        if stored is None:
            raise KeyError(
                f"sample {self.key} (index {self.index}) of shard {self.shard} has no member "
                f"{suffix!r} (members: {', '.join(self.members)})"
            )
        return self.members[stored]


def _check_end_of_archive(path: Path, data: mmap.mmap | bytes, offset: int) -> None:
    """tarfile stops silently at a truncated or corrupt header; a complete tar ends in zeros."""
    block = data[offset : offset + BLOCK]
    if len(block) < BLOCK:
        raise ShardReadError(path, f"truncated: no end-of-archive marker at byte {offset}")
    if block.count(0) != BLOCK:
        raise ShardReadError(path, f"corrupt tar header at byte {offset}")


@contextlib.contextmanager
def _mapped_tar(path: Path) -> Iterator[tuple[tarfile.TarFile, mmap.mmap | bytes]]:
    """The shard memory-mapped, and tarfile reading its headers from the map.

    tarfile over a buffered file spends most of its time in `tell`/`read` calls; over the map
    they are C slices, and member data is sliced straight out of it (no `extractfile`).
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as exc:
        raise ShardReadError(path, f"{type(exc).__name__}: {exc}") from exc
    try:
        tar = tarfile.open(fileobj=data if size else io.BytesIO(), mode="r:")  # noqa: SIM115 (closed below)
    except (OSError, ValueError, tarfile.TarError) as exc:  # mmap: ValueError past its end
        if isinstance(data, mmap.mmap):
            data.close()
        raise ShardReadError(path, f"{type(exc).__name__}: {exc}") from exc
    try:
        yield tar, data
    finally:
        tar.close()
        if isinstance(data, mmap.mmap):
            data.close()


_PLAIN_TYPES = (b"0", b"\0")
_USTAR_MAGIC = (b"ustar\x0000", b"ustar  \0")


def _plain_header(header: bytes) -> tuple[str, int] | None:
    """(name, size) of a plain ustar regular-file header with a valid checksum, else None.

    This covers every member Python's tarfile (and so webdataset) writes for short names;
    anything else (PAX/GNU extension headers, a name prefix, base-256 sizes, other member
    types, a bad checksum) returns None and is left to tarfile.
    """
    if (
        header[156:157] not in _PLAIN_TYPES
        or header[257:265] not in _USTAR_MAGIC
        or header[345] != 0  # a ustar name prefix
        or header[124] & 0x80  # base-256 size
    ):
        return None
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    if stored != sum(header) - sum(header[148:156]) + 8 * 32:  # checksum field as spaces
        return None
    return header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), size


def _tar_members(path: Path, tar: tarfile.TarFile, mapped) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular member, in order, sliced out of the mapped shard.

    Plain headers are parsed here (tarfile's Python header parsing is most of the cost of
    reading a shard); any other header is handed to tarfile at its offset, which applies PAX /
    GNU extensions, skips non-file members, or stops at a corrupt header.
    """
    offset = 0
    while True:
        header = mapped[offset : offset + BLOCK]
        if len(header) < BLOCK:
            raise ShardReadError(path, f"truncated: no end-of-archive marker at byte {offset}")
        if header.count(0) == BLOCK:
            return  # end-of-archive marker
        plain = _plain_header(header)
        if plain is not None:
            name, size = plain
            start = offset + BLOCK
            offset = start + size + (-size % BLOCK)
        else:
            tar.firstmember, tar.offset = None, offset
            try:
                info = tar.next()
            except (OSError, EOFError, ValueError, tarfile.TarError) as exc:  # ValueError: mmap
                raise ShardReadError(path, f"{type(exc).__name__}: {exc}") from exc
            if info is None:  # tarfile stops silently at a corrupt header
                _check_end_of_archive(path, mapped, offset)
                return
            offset = tar.offset
            if not info.isfile():
                continue  # directories and links carry no sample data (webdataset agrees)
            name, size, start = info.name, info.size, info.offset_data
        data = mapped[start : start + size]
        if len(data) != size:
            raise ShardReadError(path, f"member {name} truncated")
        yield name, data


def iter_shard(path: str | Path) -> Iterator[RawSample]:
    """Stream the samples of one shard in tar order (members of a sample are consecutive).

    Raises ShardReadError naming the shard on a missing, truncated or corrupt file, a member
    without a suffix, a suffix repeated (ignoring case) within one sample, or a sample whose
    members are not consecutive. The last sample is yielded only after the end-of-archive
    check, but earlier ones are already out: a caller must treat the whole shard as failed.
    """
    path = Path(path)
    current: RawSample | None = None
    lowered: set[str] = set()
    keys: set[str] = set()
    with _mapped_tar(path) as (tar, mapped):
        for name, data in _tar_members(path, tar, mapped):
            parts = split_member_name(name)
            if parts is None:
                raise ShardReadError(path, f"member {name!r} has no '<key>.<suffix>' name")
            key, suffix = parts
            if current is None or key != current.key:
                if key in keys:
                    raise ShardReadError(path, f"members of sample {key} are not consecutive")
                keys.add(key)
                if current is not None:
                    yield current
                index = 0 if current is None else current.index + 1
                current = RawSample(key=key, shard=path.name, index=index)
                lowered = set()
            if suffix.lower() in lowered:
                raise ShardReadError(path, f"sample {key} repeats member {suffix!r}")
            lowered.add(suffix.lower())
            current.members[suffix] = data
    if current is not None:
        yield current


def read_shard(path: str | Path) -> list[RawSample]:
    """All samples of one shard (see `iter_shard`)."""
    return list(iter_shard(path))


def count_samples(path: str | Path) -> int:
    """Number of samples in a shard, reading only the tar headers (data blocks are skipped)."""
    path = Path(path)
    count, last = 0, None
    with _mapped_tar(path) as (tar, mapped):
        try:
            for info in tar:
                parts = split_member_name(info.name) if info.isfile() else None
                if parts is not None and parts[0] != last:
                    count, last = count + 1, parts[0]
        except (OSError, EOFError, ValueError, tarfile.TarError) as exc:
            raise ShardReadError(path, f"{type(exc).__name__}: {exc}") from exc
        _check_end_of_archive(path, mapped, tar.offset)
    return count


def copy_sample_members(
    sample: RawSample,
    replace: Mapping[str, bytes] | None = None,
    add: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """Members for writing `sample` back: untouched ones byte for byte, original names and order.

    `replace` keys are matched case-insensitively against the stored names (KeyError when one is
    absent) and keep the stored name; `add` members are appended at the end and must be new.
    """
    replaced: dict[str, bytes] = {}
    for suffix, data in (replace or {}).items():
        stored = sample.find(suffix)
        if stored is None:
            sample.get(suffix)  # raises the KeyError naming key, shard and member
        replaced[stored] = data
    out = {suffix: replaced.get(suffix, data) for suffix, data in sample.members.items()}
    for suffix, data in (add or {}).items():
        if sample.find(suffix) is not None:
            raise ValueError(
                f"sample {sample.key} of shard {sample.shard} already has member "
                f"{sample.find(suffix)!r}; replace it instead of adding {suffix!r}"
            )
        out[suffix] = data
    return out


def list_shards(root: str | Path, split: str) -> list[Path]:
    """`ROOT/split/out-%06d.tar`, sorted by name (temporary `.out-*.tmp` files are not shards)."""
    directory = Path(root) / split
    if not directory.is_dir():
        raise FileNotFoundError(f"split directory {directory} does not exist (--data-root/--split)")
    shards = sorted(p for p in directory.iterdir() if SHARD_NAME_RE.match(p.name) and p.is_file())
    if not shards:
        raise FileNotFoundError(f"no shards named out-NNNNNN.tar in {directory}")
    return shards


def shards_for_rank(shards: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's share: every `world_size`-th shard from `rank`, so each has exactly one rank."""
    rank, world_size = _check_rank(rank, world_size)
    return list(shards[rank::world_size])


def _check_rank(rank: int, world_size: int) -> tuple[int, int]:
    if isinstance(rank, bool) or isinstance(world_size, bool):
        raise ValueError("rank and world size must be integers, not booleans")
    rank, world_size = int(rank), int(world_size)
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return rank, world_size


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def rank_from_env(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values win, else `RANK`/`WORLD_SIZE` (torchrun), else (0, 1)."""
    if rank is None:
        rank = _env_int("RANK", 0)
    if world_size is None:
        world_size = _env_int("WORLD_SIZE", 1)
    return _check_rank(rank, world_size)
