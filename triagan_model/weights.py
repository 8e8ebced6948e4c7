"""Generator inference weights: safetensors + a JSON config, no pickled code (style.md 9).

A weights directory holds ``generator.safetensors`` (the state dict, buffers ``w_avg`` and
``noise_const`` included) and ``generator.json``::

    {"format": "triagan-generator", "version": 1, "generator": {GeneratorConfig fields,
     "conditioning_mode" included (absent = written before it existed = "flip-exact")},
     "config_name": "E", "stage": "288x160", "weights_sha256": "<hex>", "source": "...", ...}

``load_matching`` is the progressive-training loader: it copies every tensor whose name and shape
match and reports the rest, so a stage-36 generator takes a stage-18 one's levels (named from the
lowest resolution up) and only its new top level stays freshly initialised.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triagan_model.atomic import atomic_path, atomic_write_json, sha256_file

if TYPE_CHECKING:
    import torch

    from triagan_model.configs import GeneratorConfig
    from triagan_model.networks.generator import TriaGANGenerator

FORMAT = "triagan-generator"
VERSION = 1
WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "generator.json"


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # in the module, absent from the state
    mismatched: list[str] = field(default_factory=list)  # same name, other shape: left new
    unexpected: list[str] = field(default_factory=list)  # in the state, absent from the module


def generator_config_from_dict(d: dict[str, Any]) -> GeneratorConfig:
    from triagan_model.configs import GeneratorConfig

    names = {f.name for f in dataclasses.fields(GeneratorConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown generator config fields {unknown}")
    d = dict(d)
    # A generator.json without the field was written by the previous version, whose only rule
    # was today's "flip-exact": its weights were trained on those maps.
    d.setdefault("conditioning_mode", "flip-exact")
    d["resolution"] = tuple(d["resolution"])
    d["dim_mults"] = tuple(d["dim_mults"])
    return GeneratorConfig(**d)


def save_state(
    state: dict[str, torch.Tensor], cfg: GeneratorConfig, out_dir: str | Path, **meta: Any
) -> Path:
    """Write ``state`` and ``cfg`` to ``out_dir`` (atomic); ``meta`` goes into the JSON."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(tensors, tmp, metadata={"format": FORMAT})
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "generator": dataclasses.asdict(cfg),
        "weights_sha256": sha256_file(out / WEIGHTS_FILE),
        **meta,
    }
    atomic_write_json(out / CONFIG_FILE, doc)
    return out


def save_generator(generator: TriaGANGenerator, out_dir: str | Path, **meta: Any) -> Path:
    """Save a generator's weights + config (e.g. ``config_name="E", stage="288x160"``)."""
    return save_state(generator.state_dict(), generator.cfg, out_dir, **meta)


class WeightsError(ValueError):
    """A weights directory that cannot be used as it is; the message names the file and the fix
    (the commands exit 2 on it: the user's input, not the program, is wrong)."""


def _read_doc(cfg_path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise WeightsError(f"{cfg_path}: not valid UTF-8 JSON ({exn})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        got = (doc.get("format"), doc.get("version")) if isinstance(doc, dict) else type(doc)
        raise WeightsError(f"{cfg_path}: format/version {got} is not {FORMAT!r} v{VERSION}")
    return doc


def _check_sha256(doc: dict[str, Any], cfg_path: Path, w_path: Path) -> None:
    """The hash is required: safetensors has no checksum of its own, so without it a flipped
    byte would silently give other images."""
    expected = doc.get("weights_sha256")
    if not (isinstance(expected, str) and re.fullmatch(r"[0-9a-f]{64}", expected)):
        raise WeightsError(
            f"{cfg_path} has no valid weights_sha256, so {w_path.name} cannot be checked; "
            "export the weights again (`triagan train`, `triagan import-dp2`), or, if you trust "
            f"the file, record its sha256 (`sha256sum {w_path}`) as weights_sha256"
        )
    actual = sha256_file(w_path)
    if actual != expected:
        raise WeightsError(
            f"{w_path}: sha256 {actual[:16]}... is not the {expected[:16]}... recorded in "
            f"{cfg_path} (a corrupt or replaced file); restore both files from the run directory"
        )


def read_weights_dir(path: str | Path, verify: bool = True):
    """(GeneratorConfig, state dict, JSON document) of a weights directory; with `verify`
    (the default) the weights must match the sha256 that generator.json records."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(path)
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: not a triagan generator weights directory")
    doc = _read_doc(cfg_path)
    if verify:
        _check_sha256(doc, cfg_path, w_path)
    try:
        cfg = generator_config_from_dict(doc["generator"])
    except (KeyError, TypeError, ValueError) as exn:
        raise WeightsError(f"{cfg_path}: 'generator' is not a generator config ({exn!r})") from None
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError) as exn:
        raise WeightsError(f"{w_path}: not a readable safetensors file ({exn})") from None
    return cfg, state, doc


def _shape_mismatches(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    own = module.state_dict()
    bad = [f"{k} missing from the file" for k in own if k not in state]
    bad += [f"{k} in the file, not in the config's network" for k in state if k not in own]
    bad += [f"{k} is {tuple(state[k].shape)} in the file, {tuple(v.shape)} for the config"
            for k, v in own.items() if k in state and state[k].shape != v.shape]  # fmt: skip
    return bad


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> TriaGANGenerator:
    """Build the generator described in ``path/generator.json`` and load its weights (strict).
    A config that does not describe the tensors (an edited dimension) is a WeightsError that
    names both files, not a RuntimeError from deep inside torch."""
    from triagan_model.networks.generator import TriaGANGenerator

    cfg, state, _ = read_weights_dir(path)
    cfg_path = Path(path) / CONFIG_FILE
    try:
        g = TriaGANGenerator(cfg)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as exn:
        raise WeightsError(f"{cfg_path}: cannot build a generator from it ({exn!r})") from None
    bad = _shape_mismatches(g, state)
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise WeightsError(
            f"{cfg_path} does not describe {Path(path) / WEIGHTS_FILE}: {'; '.join(bad[:3])}"
            f"{more}; was generator.json edited or copied from other weights?"
        )
    g.load_state_dict(state, strict=True)
    return g.to(device).eval()


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Copy every tensor of ``state`` whose name and shape match ``module``'s; report the rest."""
    import torch

    own = module.state_dict()
    report = LoadReport()
    with torch.no_grad():
        for name, t in own.items():
            if name not in state:
                report.new.append(name)
            elif tuple(state[name].shape) != tuple(t.shape):
                report.mismatched.append(name)
            else:
                t.copy_(state[name])
                report.loaded.append(name)
    report.unexpected = sorted(set(state) - set(own))
    return report
