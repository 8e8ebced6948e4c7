"""`triagan import-dp2 CKPT --config E --out DIR`: the authors' released TriA-GAN generator.

Reads a DeepPrivacy2 checkpoint (the EMA generator), maps its names to this project's (table in
``triagan_model/dp2_import.py``), picks the config stage whose level count matches, loads it into
this project's generator with NO missing or unexpected keys, and writes
``DIR/generator.safetensors`` + ``DIR/generator.json`` (plus ``DIR/w_centers.safetensors``
when the checkpoint has the multi-modal truncation centres). The checkpoint is read with
``torch.load(weights_only=True)``; ``--allow-pickle`` lifts that for trusted files.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


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


def import_checkpoint(state: dict, cfg, out_dir: str, stage: str | None = None, source: str = ""):
    """Convert a reference generator state dict and write it; returns the output directory."""
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
    out = save_generator(
        g, out_dir, config_name=cfg.name, stage=stage, source=f"import-dp2 {source}".strip()
    )
    if conv.w_centers is not None:  # the reference's multi-modal truncation centres
        from triagan_model.sampling.truncation import save_centres

        save_centres(out / "w_centers.safetensors", conv.w_centers, source=f"import-dp2 {source}")
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from triagan_model.configs import load_config
    from triagan_model.dp2_import import extract_generator_state

    try:
        ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=not args.allow_pickle)
    except FileNotFoundError:
        print(f"triagan import-dp2: {args.ckpt} not found", file=sys.stderr)
        return 2
    except Exception as e:  # re-raised as a message: torch's unpickling errors vary by version
        print(f"triagan import-dp2: cannot read {args.ckpt} with weights_only: {e}",
              file=sys.stderr)  # fmt: skip
        print("  (if you trust the file, rerun with --allow-pickle)", file=sys.stderr)
        return 2
    try:
        state = extract_generator_state(ckpt)
        out = import_checkpoint(state, load_config(args.config), args.out, args.stage, args.ckpt)
    except (KeyError, ValueError) as e:
        print(f"triagan import-dp2: {args.ckpt}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
