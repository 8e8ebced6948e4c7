"""Local weights only (refine-spec section 7): existence checks and sha256 of checkpoints.

A backend takes a local path; its sha256 is always computed, recorded in the provenance and
checked against `--checkpoint-sha256` when one is given. Nothing here downloads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 22


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hf_weight_files(directory: Path) -> list[Path]:
    """The safetensors weight files of a transformers checkpoint directory (sorted)."""
    return sorted(directory.glob("*.safetensors"))


def sha256_checkpoint(path: str | Path) -> str:
    """sha256 of a checkpoint: a file's own hash; for a transformers directory the hash of its
    single `*.safetensors` file, or, when it is sharded, the sha256 of the lines
    "<name> <sha256>\\n" of its shards in name order."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    files = hf_weight_files(path)
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in checkpoint directory {path}")
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def require_local(path: str | Path, *, kind: str, directory: bool) -> Path:
    """The path as a Path, or a FileNotFoundError naming it (weights never download)."""
    path = Path(path).expanduser()
    if directory and not path.is_dir():
        raise FileNotFoundError(
            f"{kind} checkpoint directory not found: {path} (weights are never downloaded; "
            "pass a local directory, e.g. one written by `fdhclean convert-vitpose`)"
        )
    if not directory and not path.is_file():
        raise FileNotFoundError(f"{kind} checkpoint file not found: {path}")
    return path


def verify_sha256(path: str | Path, expected: str | None) -> str:
    """Compute the checkpoint's sha256 and compare it with `expected` (when given)."""
    actual = sha256_checkpoint(path)
    if expected is not None and actual.lower() != expected.strip().lower():
        raise ValueError(
            f"checkpoint sha256 mismatch for {path}: expected {expected.strip().lower()}, "
            f"got {actual}"
        )
    return actual
