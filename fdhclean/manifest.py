"""The dataset manifest, the only contract between cleaning and training (docs/manifest.md).

One JSON file describes one split: every shard (path, samples, bytes, sha256, keypoint units),
totals, and provenance. `triagan_model` implements the same schema on its own; this module is
`fdhclean`'s side. Writes are atomic; reads reject formats and versions they do not know.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from fdhclean import __version__
from fdhclean.fdh import MEMBER_KEYPOINTS
from fdhclean.shards import (
    UNITS,
    ShardReadError,
    atomic_write_bytes,
    count_samples,
    decode_keypoints,
    detect_units,
    iter_shard,
)

MANIFEST_FORMAT = "fdh-manifest"
MANIFEST_VERSION = 1
_ROOT_VAR_RE = re.compile(r"^\$(?:\{(\w+)\}|(\w+))(?:/(.*))?$")


class ManifestError(ValueError):
    """A manifest that cannot be used: unknown format/version, bad field, unresolved root."""


def utc_now() -> str:
    """UTC time to the second, e.g. `2026-11-27T15:30:00Z` (the manifest's `created`)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ShardEntry:
    """One shard of the split: `path` is relative to the manifest's directory or to `root`."""

    path: str
    samples: int
    bytes: int
    sha256: str
    keypoint_units: str

    def __post_init__(self) -> None:
        if not self.path or Path(self.path).is_absolute():
            raise ManifestError(f"shard path must be relative and non-empty, got {self.path!r}")
        if self.keypoint_units not in UNITS:
            raise ManifestError(
                f"shard {self.path}: keypoint_units {self.keypoint_units!r} not in {UNITS}"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ManifestError(f"shard {self.path}: sha256 {self.sha256!r} is not 64 hex digits")
        for name in ("samples", "bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ManifestError(f"shard {self.path}: {name} must be an int >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "samples": self.samples,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "keypoint_units": self.keypoint_units,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardEntry:
        missing = [
            k for k in ("path", "samples", "bytes", "sha256", "keypoint_units") if k not in d
        ]
        if missing:
            raise ManifestError(f"shard entry {d!r} lacks {', '.join(missing)}")
        return cls(
            path=d["path"],
            samples=d["samples"],
            bytes=d["bytes"],
            sha256=d["sha256"],
            keypoint_units=d["keypoint_units"],
        )


@dataclass
class Manifest:
    """One split of one dataset version (docs/manifest.md)."""

    FORMAT: ClassVar[str] = MANIFEST_FORMAT
    VERSION: ClassVar[int] = MANIFEST_VERSION

    split: str
    shards: list[ShardEntry]
    totals: dict[str, Any]
    provenance: dict[str, Any]
    root: str | None = None
    created: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "version": self.VERSION,
            "split": self.split,
            "created": self.created,
            "root": self.root,
            "shards": [entry.to_dict() for entry in self.shards],
            "totals": self.totals,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> Manifest:
        """Parse a manifest dict; ManifestError on an unknown format/version or a bad field."""
        if not isinstance(d, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{source}: format {d.get('format')!r} is not {MANIFEST_FORMAT!r}")
        if d.get("version") != MANIFEST_VERSION:
            raise ManifestError(
                f"{source}: manifest version {d.get('version')!r} is not supported "
                f"(this fdhclean reads version {MANIFEST_VERSION})"
            )
        missing = [k for k in ("split", "shards", "totals", "provenance") if k not in d]
        if missing:
            raise ManifestError(f"{source}: missing field(s) {', '.join(missing)}")
        if not isinstance(d["shards"], list):
            raise ManifestError(f"{source}: 'shards' must be a list")
        root = d.get("root")
        if root is not None and not isinstance(root, str):
            raise ManifestError(f"{source}: 'root' must be a string or null, got {root!r}")
        return cls(
            split=str(d["split"]),
            shards=[ShardEntry.from_dict(s) for s in d["shards"]],
            totals=dict(d["totals"]),
            provenance=dict(d["provenance"]),
            root=root,
            created=str(d.get("created") or utc_now()),
        )

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def write(self, path: str | Path) -> None:
        """Atomic, pretty JSON with sorted keys and a trailing newline."""
        atomic_write_bytes(path, self.to_json().encode("utf-8"))

    def base_dir(self, manifest_path: str | Path) -> Path:
        """Directory the shard paths are relative to: `root` resolved, or the manifest's dir."""
        here = Path(manifest_path).resolve().parent
        if self.root is None:
            return here
        match = _ROOT_VAR_RE.match(self.root)
        if match:
            name = match.group(1) or match.group(2)
            value = os.environ.get(name)
            if not value:
                raise ManifestError(
                    f"{manifest_path}: root {self.root!r} needs environment variable {name}, "
                    "which is not set (export it to the directory holding the data)"
                )
            base = Path(value) / (match.group(3) or "")
        else:
            base = Path(self.root)
        return base if base.is_absolute() else here / base

    def shard_path(self, entry: ShardEntry, manifest_path: str | Path) -> Path:
        return self.base_dir(manifest_path) / entry.path

    def verify(
        self,
        manifest_path: str | Path,
        *,
        check_hash: bool = True,
        check_samples: bool = False,
        progress: Callable[[ShardEntry], None] | None = None,
    ) -> list[str]:
        """Problems found (missing file, size, sha256, sample count); an empty list means OK."""
        problems: list[str] = []
        for entry in self.shards:
            problems.extend(_verify_entry(self, entry, manifest_path, check_hash, check_samples))
            if progress is not None:
                progress(entry)
        total = sum(entry.samples for entry in self.shards)
        if "samples" in self.totals and self.totals["samples"] != total:
            problems.append(f"totals.samples = {self.totals['samples']} but shards sum to {total}")
        return problems


def _verify_entry(
    manifest: Manifest, entry: ShardEntry, manifest_path: str | Path, hashes: bool, samples: bool
) -> list[str]:
    path = manifest.shard_path(entry, manifest_path)
    if not path.is_file():
        return [f"{entry.path}: missing ({path})"]
    size = path.stat().st_size
    if size != entry.bytes:
        return [f"{entry.path}: size {size} bytes, manifest says {entry.bytes}"]
    problems = []
    if hashes and (digest := sha256_file(path)) != entry.sha256:
        problems.append(f"{entry.path}: sha256 {digest}, manifest says {entry.sha256}")
    if samples:
        try:
            count = count_samples(path)
        except ShardReadError as exc:
            return [*problems, f"{entry.path}: {exc}"]
        if count != entry.samples:
            problems.append(f"{entry.path}: {count} samples, manifest says {entry.samples}")
    return problems


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shard_units_and_count(path: str | Path) -> tuple[str, int]:
    """(keypoint units, sample count) of one shard from its decoded `keypoints.npy` members."""
    count, arrays = 0, []
    for sample in iter_shard(path):
        count += 1
        stored = sample.find(MEMBER_KEYPOINTS)
        if stored is None:
            continue
        try:
            arrays.append(decode_keypoints(sample.members[stored]))
        except ValueError as exc:
            raise ShardReadError(path, f"sample {sample.key}: {exc}") from exc
    return detect_units(arrays), count


def shard_entry(
    path: str | Path,
    *,
    keypoint_units: str | None = None,
    samples: int | None = None,
    base: str | Path,
) -> ShardEntry:
    """Describe one shard; samples (headers only) and units (keypoints.npy) found when not given."""
    path = Path(path)
    if keypoint_units is None:
        keypoint_units, counted = shard_units_and_count(path)
        samples = counted if samples is None else samples
    elif samples is None:
        samples = count_samples(path)
    try:
        rel = path.resolve().relative_to(Path(base).resolve())
    except ValueError:
        raise ValueError(f"shard {path} is not under the manifest base directory {base}") from None
    return ShardEntry(
        path=rel.as_posix(),
        samples=samples,
        bytes=path.stat().st_size,
        sha256=sha256_file(path),
        keypoint_units=keypoint_units,
    )


def listing_hash(entries: Iterable[ShardEntry]) -> str:
    """sha256 of `"name\\tbytes\\tsha256\\n"` lines sorted by name (refine-spec 6 input listing).

    `name` is the entry's path as recorded (relative to its manifest base).
    """
    lines = sorted(f"{e.path}\t{e.bytes}\t{e.sha256}\n" for e in entries)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def base_provenance(tool: str, parent: str | Path | None = None) -> dict[str, Any]:
    """The provenance fields every stage records: tool, version, commit, parent manifest."""
    parent_info = None
    if parent is not None:
        parent_info = {"path": str(parent), "sha256": sha256_file(parent)}
    return {
        "tool": tool,
        "package_version": __version__,
        "git_commit": git_commit(),
        "parent": parent_info,
    }


def build_manifest(
    shard_paths: Sequence[str | Path] | Iterable[ShardEntry | str | Path],
    *,
    split: str,
    base_dir: str | Path,
    provenance: dict[str, Any],
    totals: dict[str, Any] | None = None,
    root: str | None = None,
) -> Manifest:
    """Manifest over shard files (or ready `ShardEntry`s); totals.samples/bytes are computed.

    Extra `totals` (updated, ties, errors) are merged in; a given samples/bytes total that
    disagrees with the shards is an error rather than a silently wrong manifest.
    """
    entries = [
        item if isinstance(item, ShardEntry) else shard_entry(item, base=base_dir)
        for item in shard_paths
    ]
    computed = {"samples": sum(e.samples for e in entries), "bytes": sum(e.bytes for e in entries)}
    merged = dict(totals or {})
    for name, value in computed.items():
        if name in merged and merged[name] != value:
            raise ValueError(f"totals.{name} = {merged[name]} but the shards sum to {value}")
        merged[name] = value
    return Manifest(
        split=split, shards=entries, totals=merged, provenance=dict(provenance), root=root
    )
