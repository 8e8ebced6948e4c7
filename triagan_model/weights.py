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
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    _atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "generator": dataclasses.asdict(cfg),
        "weights_sha256": sha256_file(out / WEIGHTS_FILE),
        **meta,
    }

    def write_json(p: str) -> None:
        Path(p).write_text(json.dumps(doc, indent=2) + "\n")

    _atomic_write(out / CONFIG_FILE, write_json)
    return out


def save_generator(generator: TriaGANGenerator, out_dir: str | Path, **meta: Any) -> Path:
    """Save a generator's weights + config (e.g. ``config_name="E", stage="288x160"``)."""
    return save_state(generator.state_dict(), generator.cfg, out_dir, **meta)


def read_weights_dir(path: str | Path, verify: bool = True):
    """(GeneratorConfig, state dict, JSON document) of a weights directory."""
    from safetensors.torch import load_file

    d = Path(path)
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: not a triagan generator weights directory")
    doc = json.loads(cfg_path.read_text())
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(
            f"{cfg_path}: format {doc.get('format')!r} v{doc.get('version')} is not "
            f"{FORMAT!r} v{VERSION}"
        )
    if verify and doc.get("weights_sha256") and sha256_file(w_path) != doc["weights_sha256"]:
        raise ValueError(f"{w_path}: sha256 differs from {cfg_path} (corrupt or replaced file)")
    return generator_config_from_dict(doc["generator"]), load_file(str(w_path)), doc


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> TriaGANGenerator:
    """Build the generator described in ``path/generator.json`` and load its weights (strict)."""
    from triagan_model.networks.generator import TriaGANGenerator

    cfg, state, _ = read_weights_dir(path)
    g = TriaGANGenerator(cfg)
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
