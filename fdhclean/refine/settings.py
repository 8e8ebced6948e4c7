"""Settings of a refine run: flags > environment > config file > built-in defaults.

The bare `fdhclean refine --split train` works once the data root, output, part table and the
estimator (or predictions) are in a config file or the environment:

- config file: `--config PATH`, else `$FDHCLEAN_CONFIG`, else `./fdhclean.toml`, else
  `~/.config/fdhclean/config.toml` (first that exists); its `[refine]` table holds any of the
  fields of `RefineSettings` (paths may contain `{split}` and `$VARIABLES`);
- environment: `FDHCLEAN_<FIELD>` in upper case, e.g. `FDHCLEAN_DATA_ROOT`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIE_POLICIES = ("new", "original")
ESTIMATORS = ("vitpose-hf", "vitpose-mmpose")
DEFAULT_CONFIG_LOCATIONS = (Path("fdhclean.toml"), Path("~/.config/fdhclean/config.toml"))
ENV_PREFIX = "FDHCLEAN_"
# Settings that change what is written: a rerun into the same OUT must agree on them
# (rank, world size, workers, batch size and device may differ between runs).
OUTPUT_FIELDS = (
    "split",
    "data_root",
    "part_table",
    "predictions",
    "estimator",
    "checkpoint",
    "rules",
    "orig_min_score",
    "new_min_score",
    "tie_policy",
    "flip_test",
)


@dataclass(frozen=True)
class RefineSettings:
    split: str
    data_root: Path
    out: Path
    part_table: Path
    predictions: Path | None = None
    estimator: str | None = None
    checkpoint: Path | None = None
    checkpoint_sha256: str | None = None
    rules: Path | None = None
    orig_min_score: float = 0.0
    new_min_score: float = 0.3
    tie_policy: str = "new"
    rank: int = 0
    world_size: int = 1
    workers: int = 0
    batch_size: int = 32
    device: str = "auto"
    flip_test: bool = True
    overwrite: bool = False
    parent_manifest: Path | None = None
    # `fdhclean revote`: data_root/split is a cleaned split; estimates and original annotations
    # come from its report instead of an estimator (style.md point 3)
    revote: bool = False

    def __post_init__(self) -> None:
        if self.tie_policy not in TIE_POLICIES:
            raise ValueError(f"--tie-policy must be one of {TIE_POLICIES}, got {self.tie_policy!r}")
        sources = (self.predictions is not None) + (self.estimator is not None) + self.revote
        if sources != 1:
            raise ValueError("give exactly one of --predictions FILE.json or --estimator NAME")
        if self.estimator is not None:
            if self.estimator not in ESTIMATORS:
                raise ValueError(f"--estimator must be one of {ESTIMATORS}")
            if self.checkpoint is None:
                raise ValueError(f"--estimator {self.estimator} needs --checkpoint PATH")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world size {self.world_size})")

    @property
    def split_out(self) -> Path:
        return self.out / self.split

    def output_fingerprint(self) -> dict[str, Any]:
        """The settings a rerun must share with the run that made OUT (rank/workers may differ)."""
        fields = {name: _jsonable(getattr(self, name)) for name in OUTPUT_FIELDS}
        if self.revote:  # only then, so refine runs keep the fingerprints they had
            fields["revote"] = True
        return fields

    def fingerprint_sha256(self) -> str:
        blob = json.dumps(self.output_fingerprint(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def find_config_file(explicit: str | Path | None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return path
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        return find_config_file(env)
    for candidate in DEFAULT_CONFIG_LOCATIONS:
        candidate = candidate.expanduser()
        if candidate.is_file():
            return candidate
    return None


def load_config_table(path: Path | None, table: str = "refine") -> dict[str, Any]:
    if path is None:
        return {}
    with open(path, "rb") as f:
        data = tomllib.load(f)
    values = data.get(table, {})
    if not isinstance(values, dict):
        raise ValueError(f"{path}: [{table}] must be a table")
    return values


def resolve_settings(
    flags: dict[str, Any], config_file: str | Path | None = None
) -> RefineSettings:
    """Merge flags (None = not given) over `FDHCLEAN_*` env vars over the config file."""
    path = find_config_file(config_file)
    from_file = load_config_table(path)
    fields = {f.name: f for f in dataclasses.fields(RefineSettings)}
    unknown = sorted(set(from_file) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown [refine] settings {unknown}; known: {sorted(fields)}")
    merged: dict[str, Any] = {}
    for name, f in fields.items():
        value = flags.get(name)
        if value is None:
            value = os.environ.get(ENV_PREFIX + name.upper())
        if value is None:
            value = from_file.get(name)
        if value is not None:
            merged[name] = _coerce(name, value, f.type)
    missing = [n for n in ("split", "data_root", "out", "part_table") if n not in merged]
    if missing:
        where = f" (config file: {path})" if path else " (no config file found)"
        flags_text = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ValueError(f"missing settings {flags_text}{where}; see `fdhclean refine --help`")
    split = merged["split"]
    for name in ("data_root", "out", "part_table", "predictions", "checkpoint", "rules"):
        if name in merged:
            text = os.path.expandvars(str(merged[name]).format(split=split))
            merged[name] = Path(text).expanduser()
    return RefineSettings(**merged)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    text = str(annotation)
    if isinstance(value, str):
        if "bool" in text:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"setting {name}: expected a boolean, got {value!r}")
        if "int" in text:
            return int(value)
        if "float" in text:
            return float(value)
    return value
