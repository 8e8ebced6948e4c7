"""Register a manifest under `data_manifests/NAME/SPLIT.json`, paths relative to `$FDH_ROOT`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fdhclean.manifest import Manifest, sha256_file

ROOT_VARIABLE = "$FDH_ROOT"


def register_manifest(manifest_path: Path, data_root: Path, target: Path) -> Path:
    """Copy the manifest with every shard path re-based onto `data_root` (which must hold them)."""
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} does not exist: is the split finalised?")
    manifest = Manifest.read(manifest_path)
    data_root = data_root.resolve()
    entries = []
    for entry in manifest.shards:
        shard = manifest.shard_path(entry, manifest_path).resolve()
        if not shard.is_relative_to(data_root):
            raise ValueError(f"shard {shard} is not under the data root {data_root}")
        entries.append(dataclasses.replace(entry, path=shard.relative_to(data_root).as_posix()))
    provenance = dict(manifest.provenance)
    provenance["registered_from"] = {
        "path": str(manifest_path),
        "sha256": sha256_file(manifest_path),
    }
    registered = dataclasses.replace(
        manifest, shards=entries, root=ROOT_VARIABLE, provenance=provenance
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    registered.write(target)
    return target
