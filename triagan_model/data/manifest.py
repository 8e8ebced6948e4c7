"""Read, verify and write FDH dataset manifests (the schema of docs/manifest.md).

Training takes a manifest, never a glob or a URL (style.md item 5). This module is the
training side's own implementation of the schema; `fdhclean` has its own and never shares code.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from triagan_model.atomic import atomic_write_json, sha256_file
from triagan_model.data.fdh import KEYPOINT_UNITS

MANIFEST_FORMAT = "fdh-manifest"
KNOWN_VERSIONS = (1,)


class ManifestError(ValueError):
    """A manifest (or a shard it lists) is malformed, missing, or does not match its record."""


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a manifest, with its path already resolved to an absolute path."""

    path: Path
    samples: int
    bytes: int | None
    sha256: str | None
    keypoint_units: str
    # key -> refine status of the samples refine marked as errors (totals.error_samples)
    error_samples: Mapping[str, str] = field(default_factory=dict)

    @property
    def usable_samples(self) -> int:
        """Samples the loader reads by default: all but the listed error samples."""
        return self.samples - len(self.error_samples)


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest. `data` keeps the raw JSON for fields this reader does not model."""

    path: Path
    split: str | None
    shards: tuple[ShardEntry, ...]
    totals: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def resolution(self) -> tuple[int, int] | None:
        """(H, W) of the shards when `triagan prepare` resized them, else None (full 288x160)."""
        res = self.provenance.get("resolution")
        if res is None:
            return None
        if not (isinstance(res, list | tuple) and len(res) == 2):
            raise ManifestError(f"{self.path}: provenance.resolution must be [H, W], got {res!r}")
        return int(res[0]), int(res[1])


# The package's one hash helper, under the name the data modules have always used.
file_sha256 = sha256_file


def manifest_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the manifest file itself (what `provenance.parent.sha256` records)."""
    return file_sha256(path)


def _resolve_root(manifest_path: Path, root: Any) -> Path:
    """Base directory of shard paths: the manifest's directory, or `root` (`$NAME` = env var)."""
    if root is None:
        return manifest_path.parent
    if not isinstance(root, str) or not root:
        raise ManifestError(f"{manifest_path}: 'root' must be null or a non-empty string")
    if root.startswith("$"):
        name = root[1:].strip("{}")
        value = os.environ.get(name)
        if not value:
            raise ManifestError(
                f"{manifest_path}: root is {root!r} but the environment variable {name} is not set"
            )
        return Path(value)
    base = Path(root)
    return base if base.is_absolute() else manifest_path.parent / base


def _parse_shard(manifest_path: Path, base: Path, index: int, raw: Any) -> ShardEntry:
    where = f"{manifest_path}: shards[{index}]"
    if not isinstance(raw, dict) or "path" not in raw or "samples" not in raw:
        raise ManifestError(f"{where} must be an object with at least 'path' and 'samples'")
    units = raw.get("keypoint_units")
    if units not in KEYPOINT_UNITS:
        # Never guessed on the training side: the writer detects units and records them.
        raise ManifestError(f"{where}: keypoint_units {units!r} is not one of {KEYPOINT_UNITS}")
    rel = Path(raw["path"])
    return ShardEntry(
        path=(rel if rel.is_absolute() else base / rel),
        samples=int(raw["samples"]),
        bytes=None if raw.get("bytes") is None else int(raw["bytes"]),
        sha256=raw.get("sha256"),
        keypoint_units=units,
    )


def read_manifest(path: str | os.PathLike, *, verify: bool = False) -> Manifest:
    """Parse a manifest; with `verify`, check every shard's size and sha256 (slow: reads all)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except json.JSONDecodeError as exn:
        raise ManifestError(f"{path}: not valid JSON ({exn})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ManifestError(f"{path}: format must be {MANIFEST_FORMAT!r}, got {got!r}")
    if data.get("version") not in KNOWN_VERSIONS:
        raise ManifestError(
            f"{path}: manifest version {data.get('version')!r} is not known "
            f"(this reader knows {KNOWN_VERSIONS})"
        )
    shards_raw = data.get("shards")
    if not isinstance(shards_raw, list) or not shards_raw:
        raise ManifestError(f"{path}: 'shards' must be a non-empty list")
    base = _resolve_root(path, data.get("root"))
    shards = tuple(_parse_shard(path, base, i, s) for i, s in enumerate(shards_raw))
    shards = _attach_error_samples(path, shards, shards_raw, data.get("totals"))
    manifest = Manifest(
        path=path,
        split=data.get("split"),
        shards=shards,
        totals=dict(data.get("totals") or {}),
        provenance=dict(data.get("provenance") or {}),
        data=data,
    )
    _ = manifest.resolution  # validate early
    if verify:
        verify_shards(manifest)
    return manifest


def _attach_error_samples(
    path: Path, shards: tuple[ShardEntry, ...], raw: list[Any], totals: Any
) -> tuple[ShardEntry, ...]:
    """`totals.error_samples` ({shard path as listed, or its unique file name: {key: status}},
    written by `fdhclean refine`) attached to the shards it names. A name that matches no
    shard is an error: the samples it lists would otherwise be trained on silently."""
    listed = (totals or {}).get("error_samples") if isinstance(totals, dict) else None
    if not listed:
        return shards
    if not isinstance(listed, dict):
        raise ManifestError(f"{path}: totals.error_samples must map shard -> {{key: status}}")
    exact = {str(entry["path"]): i for i, entry in enumerate(raw)}
    bases = Counter(Path(name).name for name in exact)
    by_base = {Path(n).name: i for n, i in exact.items() if bases[Path(n).name] == 1}
    found: dict[int, dict[str, str]] = {}
    for name, keys in listed.items():
        index = exact.get(name, by_base.get(name))
        if index is None:
            raise ManifestError(f"{path}: totals.error_samples names shard {name!r}, which "
                                "matches no single entry of 'shards'")  # fmt: skip
        ok = isinstance(keys, dict) and all(isinstance(v, str) for v in keys.values())
        if not ok:
            raise ManifestError(f"{path}: totals.error_samples[{name!r}] must map key -> status")
        found.setdefault(index, {}).update({str(k): v for k, v in keys.items()})
    out = list(shards)
    for i, keys in found.items():
        if len(keys) > out[i].samples:
            raise ManifestError(f"{path}: totals.error_samples lists {len(keys)} samples of "
                                f"{out[i].path}, which holds {out[i].samples}")  # fmt: skip
        out[i] = replace(out[i], error_samples=keys)
    return tuple(out)


def error_sample_counts(manifest: Manifest) -> dict[str, int]:
    """Listed error samples by refine status (e.g. {"bad-member": 3})."""
    counts: dict[str, int] = {}
    for shard in manifest.shards:
        for status in shard.error_samples.values():
            counts[status] = counts.get(status, 0) + 1
    return dict(sorted(counts.items()))


def check_shard_size(manifest: Manifest, shard: ShardEntry) -> None:
    """The shard exists and has the byte count its record names (cheap: one stat)."""
    try:
        size = shard.path.stat().st_size
    except FileNotFoundError:
        raise ManifestError(f"{manifest.path}: shard {shard.path} does not exist") from None
    if shard.bytes is not None and size != shard.bytes:
        raise ManifestError(
            f"{manifest.path}: shard {shard.path} has {size} bytes, manifest says {shard.bytes}"
            " (changed or truncated after the manifest was written)"
        )


def check_shard_sha256(manifest_path: Path, shard: ShardEntry) -> None:
    """The shard's bytes are the ones its record names (reads the whole shard)."""
    if shard.sha256 is None:
        raise ManifestError(f"{manifest_path}: shard {shard.path} has no sha256 to verify; "
                            "use --verify size, or write the manifest again")  # fmt: skip
    digest = file_sha256(shard.path)
    if digest != shard.sha256:
        raise ManifestError(
            f"{manifest_path}: shard {shard.path} sha256 {digest} != manifest {shard.sha256} "
            "(changed after the manifest was written: restore it, or clean it again)"
        )


def verify_shards(manifest: Manifest, *, sha256: bool = True) -> None:
    """Raise ManifestError naming the first shard that is missing or differs from its record
    (sizes only when `sha256` is False)."""
    for shard in manifest.shards:
        check_shard_size(manifest, shard)
        if sha256:
            check_shard_sha256(manifest.path, shard)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON under a temporary name in the same directory, then rename (style.md)."""
    atomic_write_json(path, data)
