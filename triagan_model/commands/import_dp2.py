"""`triagan import-dp2 CKPT --config E --out DIR`: the authors' released TriA-GAN generator.

Reads any checkpoint DeepPrivacy2 writes (the released EMA-only dict or a full training
checkpoint; its EMA generator), maps its names to this project's (table in
``triagan_model/dp2_import.py``), picks the config stage whose level count matches, loads it into
this project's generator with NO missing or unexpected keys, and writes
``DIR/generator.safetensors`` + ``DIR/generator.json`` (conditioning_mode "reference": DP2's
maps), plus ``DIR/w_centers.safetensors`` when the checkpoint has the multi-modal truncation
centres (top-level ``w_centers`` or ``style_net.w_centers`` in the generator state); a
``w_centers.safetensors`` left in DIR by an earlier import is removed when the checkpoint has
none, and nothing is written unless the whole checkpoint (centres included) is valid. No pickled
code runs: tensors, plain containers and easydict.EasyDict are read by name;
``--allow-pickle`` lifts that for trusted files that pickle other classes. Every failure names
the file and the cause and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

CENTRES_NAME = "w_centers.safetensors"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-dp2",
        help="convert a released DeepPrivacy2 TriA-GAN generator to safetensors + JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ckpt", help="DeepPrivacy2 checkpoint file (.ckpt / .pth / .pt)")
    p.add_argument("--config", default="E", help="config name or TOML (default: E)")
    p.add_argument("--stage", help="stage HxW (default: the one whose level count matches)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--allow-pickle", action="store_true", help="torch.load(weights_only=False)")
    p.set_defaults(func=run)


def import_checkpoint(
    state: dict, cfg, out_dir: str, stage: str | None = None, source: str = "", w_centers=None
):
    """Convert a reference generator state dict and write it; returns the output directory.
    ``w_centers``: the checkpoint's top-level centres; the state's own take precedence (the
    order dp2/infer.py registers them in)."""
    from triagan_model.dp2_import import convert_state_dict
    from triagan_model.networks.generator import TriaGANGenerator
    from triagan_model.weights import save_generator

    conv = convert_state_dict(state)
    if conv.unmapped:
        raise ValueError(f"keys with no mapping (not a TriA-GAN generator?): {conv.unmapped[:8]}")
    if stage is None:
        matches = [s for s in cfg.stages if len(s.dim_mults) == conv.n_levels]
        if not matches:
            raise ValueError(f"config {cfg.name} has no stage with {conv.n_levels} levels")
        stage = matches[0].name
    # DP2's weights were trained on DP2's maps, whatever the config file says
    gcfg = dataclasses.replace(cfg.generator_config(stage), conditioning_mode="reference")
    g = TriaGANGenerator(gcfg)
    ours = g.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}"
             for k, v in conv.state.items() if k in ours and v.shape != ours[k].shape]  # fmt: skip
    if wrong:
        raise ValueError(
            f"checkpoint does not fit config {cfg.name} stage {stage}: shapes {wrong[:4]}"
        )
    result = g.load_state_dict(conv.state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint does not fit config {cfg.name} stage {stage}: missing "
            f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
        )
    centres = conv.w_centers if conv.w_centers is not None else w_centers
    # everything is checked before anything is written: no half-written --out on bad centres
    if centres is not None and (centres.ndim != 2 or centres.shape[1] != gcfg.w_dim):
        raise ValueError(f"w_centers has shape {tuple(centres.shape)}, not (K, {gcfg.w_dim})")
    out = save_generator(
        g, out_dir, config_name=cfg.name, stage=stage, source=f"import-dp2 {source}".strip()
    )
    _write_or_clear_centres(out / CENTRES_NAME, centres, source)
    return out


def _write_or_clear_centres(path: Path, centres, source: str) -> None:
    """The checkpoint's centres, or no centres file at all: a centres file left by an earlier
    import into the same --out would otherwise be used with the new generator."""
    from triagan_model.sampling.truncation import save_centres

    if centres is not None:  # the reference's multi-modal truncation centres
        save_centres(path, centres, source=f"import-dp2 {source}")
    elif path.exists():
        path.unlink()
        print(f"removed {path}: left by an earlier import, this checkpoint has no w_centers")


def run(args: argparse.Namespace) -> int:
    from triagan_model.configs import load_config
    from triagan_model.dp2_import import (
        CheckpointError,
        extract_generator_state,
        load_dp2_checkpoint,
        top_level_centres,
    )

    try:
        cfg = load_config(args.config)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"triagan import-dp2: --config {args.config}: {e}", file=sys.stderr)
        return 2
    try:
        ckpt = load_dp2_checkpoint(args.ckpt, allow_pickle=args.allow_pickle)
        state = extract_generator_state(ckpt)
        centres = top_level_centres(ckpt)
        out = import_checkpoint(state, cfg, args.out, args.stage, args.ckpt, centres)
    except CheckpointError as e:
        print(f"triagan import-dp2: {e}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"triagan import-dp2: {args.ckpt}: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # the output side: an unwritable or full --out
        print(f"triagan import-dp2: cannot write {args.out}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
