"""FDH webdataset shards: read samples, write them back byte for byte, split work by rank.

A shard is the unit of work, output and resume (style.md point 4). Reading keeps each member
under its name *exactly as stored* (webdataset lowercases suffixes, so `E_mask.png` would come
back as `e_mask.png`); writing produces deterministic tar headers, so the same samples always
give the same bytes (refine-spec section 6), and goes through a temporary name in the target
directory that is renamed only after a clean close: a crash never leaves a partial shard.
Member decoding (`fdhclean.decode`) and the writer (`fdhclean.shard_writer`) are re-exported here.
"""

from __future__ import annotations

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
from fdhclean.tar_reader import TarFormatError, TarStream, walk_tar

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
    # Byte offset of the sample's first header in the shard, and what is wrong with its members
    # (a link or other non-regular member, whose data is not in `members`; a name that is not
    # UTF-8, kept under its `\\xNN`-escaped name). Empty for a clean sample.
    offset: int = 0
    problems: list[str] = field(default_factory=list)

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


class ShardReader:
    """Stream the samples of one shard; after a complete pass, what was read.

    `for sample in ShardReader(path)` yields `RawSample`s in tar order, one at a time (memory is
    bounded by one sample). Once the iteration has finished, `sha256` is the hex digest of every
    byte of the file (computed during the one read; None with `hash=False`), `bytes_read` the
    file's size, `samples` the number yielded and `archives` how many concatenated tar archives
    the file held (1 for a normal shard). Raises ShardReadError naming the shard and byte offset
    on what cannot be parsed (see `iter_shard`); samples yielded before it must be treated as
    failed with the shard.
    """

    def __init__(self, path: str | Path, *, hash: bool = True) -> None:
        self.path = Path(path)
        self.hash = hash
        self.sha256: str | None = None
        self.bytes_read = 0
        self.samples = 0
        self.archives = 0

    def __iter__(self) -> Iterator[RawSample]:
        self.sha256, self.bytes_read, self.samples, self.archives = None, 0, 0, 0
        try:
            fh = open(self.path, "rb", buffering=1 << 16)  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise ShardReadError(self.path, f"{type(exc).__name__}: {exc}") from exc
        with fh:
            stream = TarStream(fh, os.fstat(fh.fileno()).st_size, digest=self.hash)
            try:
                yield from self._samples(stream)
            except TarFormatError as exc:
                raise ShardReadError(self.path, str(exc)) from None
            except OSError as exc:  # e.g. EIO from a failing disk
                raise ShardReadError(
                    self.path, f"{type(exc).__name__} at byte {stream.offset}: {exc}"
                ) from exc
            self.bytes_read, self.sha256 = stream.offset, stream.sha256
            self.archives = stream.archives

    def _samples(self, stream: TarStream) -> Iterator[RawSample]:
        current: RawSample | None = None
        grouping = _Grouping()
        for entry in walk_tar(stream):
            key, suffix, starts = grouping.member(entry)
            if starts:
                if current is not None:
                    self.samples += 1
                    yield current
                index = 0 if current is None else current.index + 1
                current = RawSample(key=key, shard=self.path.name, index=index)
                current.offset = entry.offset
            if entry.problem is not None:
                current.problems.append(entry.problem)
            if entry.data is not None:
                current.members[suffix] = entry.data
        if current is not None:
            self.samples += 1
            yield current


class _Grouping:
    """Members into samples, with the checks every reader of a shard applies (the reader and
    `count_samples` alike, so a count never differs from what the reader reads): a name must
    be `<key>.<suffix>`, a sample's members are consecutive, no suffix repeats (ignoring
    case) within a sample."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.keys: set[str] = set()
        self.lowered: set[str] = set()

    def member(self, entry) -> tuple[str, str, bool]:
        """(key, suffix, whether it starts a new sample); TarFormatError on a broken rule."""
        parts = split_member_name(entry.name)
        if parts is None:
            name = entry.name
            raise TarFormatError(entry.offset, f"member {name!r} has no '<key>.<suffix>' name")
        key, suffix = parts
        starts = key != self.key
        if starts:
            if key in self.keys:
                raise TarFormatError(entry.offset, f"members of sample {key} are not consecutive")
            self.keys.add(key)
            self.key, self.lowered = key, set()
        if suffix.lower() in self.lowered:
            raise TarFormatError(entry.offset, f"sample {key} repeats member {suffix!r}")
        self.lowered.add(suffix.lower())
        return key, suffix, starts


def iter_shard(path: str | Path) -> Iterator[RawSample]:
    """Stream the samples of one shard in tar order (members of a sample are consecutive).

    Raises ShardReadError naming the shard and the byte offset on a missing, truncated or
    corrupt file, a zeroed header or unreadable data after the end-of-archive marker, a member
    without a suffix, a suffix repeated (ignoring case) within one sample, or a sample whose
    members are not consecutive. Members that are not regular files (links, devices) and
    names that are not UTF-8 are per-sample problems (`RawSample.problems`). The last sample
    is yielded only after the end-of-archive check, but earlier ones are already out: a caller
    must treat the whole shard as failed. `ShardReader` also gives the file's sha256.
    """
    return iter(ShardReader(path, hash=False))


def read_shard(path: str | Path) -> list[RawSample]:
    """All samples of one shard (see `iter_shard`)."""
    return list(iter_shard(path))


def count_samples(path: str | Path) -> int:
    """Number of samples in a shard, reading only the tar headers (data blocks are skipped),
    with the same checks as `iter_shard`."""
    path = Path(path)
    count, grouping = 0, _Grouping()
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise ShardReadError(path, f"{type(exc).__name__}: {exc}") from exc
    with fh:
        stream = TarStream(fh, os.fstat(fh.fileno()).st_size, digest=False)
        try:
            for entry in walk_tar(stream, read_data=False):
                count += grouping.member(entry)[2]
        except TarFormatError as exc:
            raise ShardReadError(path, str(exc)) from None
        except OSError as exc:
            raise ShardReadError(path, f"{type(exc).__name__}: {exc}") from exc
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
