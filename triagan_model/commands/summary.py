"""`triagan summary --config NAME`: parameter counts per stage, built on the meta device.

Prints a rich table per stage (generator parameters, discriminator trainable parameters, frozen
feature-network sizes), then one plain line per stage and network with the exact integer, e.g.
``generator 288x160: 124212639 parameters``. Nothing is allocated or loaded (meta device, random
feature-network structure), so it runs without weights files.
"""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "summary",
        help="parameter counts of a config's generator and discriminator per stage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="A-E, A-tiny..E-tiny, or a TOML file path")
    p.set_defaults(func=run)


def _meta_networks(cfg, stage):
    import warnings

    import torch

    from triagan_model.networks.discriminator import ProjectedDiscriminator
    from triagan_model.networks.generator import TriaGANGenerator

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random structure only: nothing is trained or sampled
        if stage is not None:
            return TriaGANGenerator(cfg.generator_config(stage)), None
        d_cfg = dataclasses.replace(cfg.discriminator, pretrained=False)
        return None, ProjectedDiscriminator(d_cfg)


def count_parameters(cfg) -> dict[str, dict[str, int]]:
    """Exact counts per stage name: generator, discriminator (trainable), frozen:<network>."""
    _, d = _meta_networks(cfg, None)
    d_counts = {"discriminator": sum(p.numel() for p in d.trainable_parameters())}
    for name, f in d.feature_networks.items():
        d_counts[f"frozen:{name}"] = sum(p.numel() for p in f.parameters())
    out = {}
    for s in cfg.stages:  # D does not depend on the stage: built once
        g, _ = _meta_networks(cfg, s)
        out[s.name] = {"generator": sum(p.numel() for p in g.parameters()), **d_counts}
    return out


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from triagan_model.configs import load_config

    try:
        cfg = load_config(args.config)
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"triagan summary: {e}")
        return 2
    console = Console()
    counts = count_parameters(cfg)
    table = Table(title=f"Config {cfg.name}: {cfg.description}")
    table.add_column("stage")
    table.add_column("batch", justify="right")
    table.add_column("kimg", justify="right")
    table.add_column("generator", justify="right")
    table.add_column("D trainable", justify="right")
    fnets = cfg.discriminator.feature_networks
    for name in fnets:
        table.add_column(f"frozen {name}", justify="right")
    for s in cfg.stages:
        c = counts[s.name]
        row = [s.name, str(s.batch), f"{s.kimg:g}", f"{c['generator'] / 1e6:.2f}M"]
        row += [f"{c['discriminator'] / 1e6:.2f}M"]
        row += [f"{c[f'frozen:{n}'] / 1e6:.2f}M" for n in fnets]
        table.add_row(*row)
    console.print(table)
    if cfg.tiny:
        console.print("[bold red]TINY TEST CONFIG: NOT the paper's model.[/]")
    for s in cfg.stages:
        c = counts[s.name]
        print(f"generator {s.name}: {c['generator']} parameters")
        print(f"discriminator {s.name}: {c['discriminator']} trainable parameters")
        for n in fnets:
            print(f"feature network {n} {s.name}: {c[f'frozen:{n}']} frozen parameters")
    return 0
