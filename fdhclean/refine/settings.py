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
    # backend options (`--estimator-option KEY=VALUE`, repeatable; a list in the config file)
    estimator_options: tuple[str, ...] = ()
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
            from fdhclean.estimators import ESTIMATORS  # the registry is the one list of names

            if self.estimator not in ESTIMATORS:
                raise ValueError(f"--estimator must be one of {sorted(ESTIMATORS)}")
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
        if self.estimator_options:  # likewise: runs without options keep their fingerprint
            fields["estimator_options"] = list(self.estimator_options)
        return fields

    def estimator_kwargs(self) -> dict[str, Any]:
        """`estimator_options` as keyword arguments: VALUE parsed as JSON where it is JSON
        (`batch_norm=true`, `size=3`), else kept as text (`decoding=mmpose1`)."""
        return parse_options(self.estimator_options)

    def fingerprint_sha256(self) -> str:
        blob = json.dumps(self.output_fingerprint(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def parse_options(options: tuple[str, ...]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in options:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"estimator option {item!r} is not KEY=VALUE (KEY a Python name)")
        try:
            parsed[key.strip()] = json.loads(text)
        except ValueError:
            parsed[key.strip()] = text
    return parsed


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
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {path} is not UTF-8 text: {exc}") from None
    values = data.get(table, {})
    if not isinstance(values, dict):
        raise ValueError(f"{path}: [{table}] must be a table")
    return values


def resolve_settings(
    flags: dict[str, Any], config_file: str | Path | None = None
) -> RefineSettings:
    """Merge flags (None = not given) over `FDHCLEAN_*` env vars over the config file, then
    torchrun's `RANK`/`WORLD_SIZE` for the rank, then the defaults.

    Every value is checked against its field's type where it comes from, so a bad value is
    a ValueError naming the setting and its source (never a TypeError later on).
    """
    path = find_config_file(config_file)
    from_file = load_config_table(path)
    fields = {f.name: f for f in dataclasses.fields(RefineSettings)}
    unknown = sorted(set(from_file) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown [refine] settings {unknown}; known: {sorted(fields)}")
    merged: dict[str, Any] = {}
    for name, f in fields.items():
        for source, value in _candidates(name, flags, from_file, path):
            if value is not None:
                merged[name] = coerce_setting(name, value, str(f.type), source)
                break
    missing = [n for n in ("split", "data_root", "out", "part_table") if n not in merged]
    if missing:
        where = f" (config file: {path})" if path else " (no config file found)"
        flags_text = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ValueError(f"missing settings {flags_text}{where}; see `fdhclean refine --help`")
    split = merged["split"]
    for name in ("data_root", "out", "part_table", "predictions", "checkpoint", "rules"):
        if name in merged:
            text = os.path.expandvars(_format_split(name, merged[name], split))
            merged[name] = Path(text).expanduser()
    _check_ranges(merged)
    return RefineSettings(**merged)


# torchrun's variables: below FDHCLEAN_RANK / [refine] rank, so an explicit setting wins.
_TORCHRUN_ENV = {"rank": "RANK", "world_size": "WORLD_SIZE"}


def _candidates(name: str, flags: dict[str, Any], from_file: dict[str, Any], path: Path | None):
    """(source, value) in precedence order; the first value that is not None wins."""
    yield f"--{name.replace('_', '-')}", flags.get(name)
    env = ENV_PREFIX + name.upper()
    yield f"${env}", _env(env)
    yield f"{path} [refine] {name}", from_file.get(name)
    if name in _TORCHRUN_ENV:
        yield f"${_TORCHRUN_ENV[name]}", _env(_TORCHRUN_ENV[name])


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None or value.strip() == "" else value


def _format_split(name: str, value: Any, split: str) -> str:
    try:
        return str(value).format(split=split)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"setting {name} = {value!r}: only {{split}} may appear in braces ({exc})"
        ) from None


def coerce_setting(name: str, value: Any, annotation: str, source: str) -> Any:
    """`value` as the field's type, or a ValueError naming the setting and where it came from.

    Strings (flags, environment) are parsed; config-file values must already have the TOML
    type (`workers = 1.5` or `split = 5` is refused, not truncated or stringified).
    """
    if annotation.startswith("tuple"):  # estimator_options: a list, or one comma-separated text
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"setting {name} ({source}) must be a list of KEY=VALUE strings")
        parse_options(tuple(items))  # refused here, with the setting's name, if malformed
        return tuple(i.strip() for i in items if i.strip())
    kind = next(
        k for k in ("bool", "int", "float", "str") if k in annotation.replace("Path", "str")
    )
    if isinstance(value, str) and kind != "str":
        return _parse(name, value, kind, source)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, (str, Path)),
    }[kind]
    if not ok:
        expected = {"bool": "a boolean", "int": "an integer", "float": "a number"}
        raise ValueError(
            f"setting {name} ({source}) must be {expected.get(kind, 'a string')}, "
            f"got {type(value).__name__} {value!r}"
        )
    return float(value) if kind == "float" else value


def _parse(name: str, value: str, kind: str, source: str) -> Any:
    text = value.strip().lower()
    if kind == "bool":
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    else:
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            pass
    expected = {"bool": "a boolean", "int": "an integer", "float": "a number"}[kind]
    raise ValueError(f"setting {name} ({source}) must be {expected}, got {value!r}")


def _check_ranges(merged: dict[str, Any]) -> None:
    import math

    for name, low in (("workers", 0), ("batch_size", 1), ("world_size", 1), ("rank", 0)):
        if name in merged and merged[name] < low:
            raise ValueError(f"setting {name} must be >= {low}, got {merged[name]}")
    for name in ("orig_min_score", "new_min_score"):
        if name in merged and not math.isfinite(merged[name]):
            raise ValueError(f"setting {name} must be a finite number, got {merged[name]}")
