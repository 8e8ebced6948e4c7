"""TOML files for ``TrainConfig`` (``pipelines/triagan_*.toml``): read with overrides, write.

A file names a registered ``base`` config and overrides fields::

    base = "E"
    name = "E-lr"                       # top-level scalars replace
    [g_optim]
    lr = 0.001                          # tables override single fields of a section
    [[stages]]                          # an array of stages replaces ALL stages
    resolution = [18, 10]
    dim = 512
    dim_mults = [1, 1]
    batch = 1024
    kimg = 300000.0

Unknown keys are errors naming the file and the key. ``dumps_config`` writes every field, so a
written file reads back to an equal config (tests/test_configs.py checks the shipped ones).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from triagan_model import configs as C

_SECTIONS = {
    "generator": C.GeneratorArch,
    "discriminator": C.DiscriminatorConfig,
    "loss": C.LossConfig,
    "g_optim": C.OptimizerConfig,
    "d_optim": C.OptimizerConfig,
    "ema": C.EMAConfig,
    "augment": C.AugmentConfig,
}
_SCALARS = ("name", "description", "mixed_precision", "tiny")


def _coerce(value: Any, hint: Any) -> Any:
    """Lists -> tuples (nested), ints -> floats where the field is a float."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _coerce(value, next(a for a in typing.get_args(hint) if a is not type(None)))
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _override(obj: Any, table: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    return dataclasses.replace(obj, **{k: _coerce(v, hints[k]) for k, v in table.items()})


def _stage(table: dict[str, Any], where: str) -> C.StageConfig:
    hints = typing.get_type_hints(C.StageConfig)
    names = {f.name for f in dataclasses.fields(C.StageConfig)}
    if set(table) != names:
        raise ValueError(
            f"{where}: a stage needs exactly the keys {sorted(names)}, got {sorted(table)}"
        )
    return C.StageConfig(**{k: _coerce(v, hints[k]) for k, v in table.items()})


def read_config_toml(path: str | Path) -> C.TrainConfig:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config {str(path)!r} is neither a registered name nor a file")
    with p.open("rb") as f:
        doc = tomllib.load(f)
    base = doc.pop("base", None)
    if base not in C.CONFIGS:
        raise ValueError(f"{p}: 'base' must name a registered config {sorted(C.CONFIGS)}")
    cfg = C.CONFIGS[base]
    changes: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _SCALARS:
            changes[key] = value
        elif key in _SECTIONS:
            changes[key] = _override(getattr(cfg, key), value, f"{p} [{key}]")
        elif key == "stages":
            changes[key] = tuple(_stage(t, f"{p} [[stages]] #{i}") for i, t in enumerate(value))
        else:
            raise ValueError(f"{p}: unknown key {key!r}")
    return dataclasses.replace(cfg, **changes)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def dumps_config(cfg: C.TrainConfig, base: str | None = None) -> str:
    """Every field of ``cfg`` as TOML (``base`` defaults to the config's own name)."""
    lines = [f"base = {_fmt(base or cfg.name)}"]
    lines += [f"{k} = {_fmt(getattr(cfg, k))}" for k in _SCALARS]
    for section in _SECTIONS:
        lines += ["", f"[{section}]"]
        for f in dataclasses.fields(getattr(cfg, section)):
            v = getattr(getattr(cfg, section), f.name)
            if v is None:
                lines.append(f"# {f.name} unset (None)")
            else:
                note = "  # the seed table's 0.099 is a typo" if f.name == "beta2" else ""
                lines.append(f"{f.name} = {_fmt(v)}{note}")
    for s in cfg.stages:
        lines += ["", "[[stages]]"]
        lines += [f"{f.name} = {_fmt(getattr(s, f.name))}" for f in dataclasses.fields(s)]
    return "\n".join(lines) + "\n"
