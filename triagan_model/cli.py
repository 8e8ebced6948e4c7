"""Command line of triagan: a thin shell over `triagan_model.commands.*`.

Every module in `triagan_model/commands/` that defines `register(subparsers)` contributes one
sub-command; `register` adds its parser and sets `func=run` (a callable taking the parsed
namespace and returning an exit code). Command modules import their heavy dependencies inside
`run`, so `triagan --help` stays fast and works without the optional extras.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from triagan_model import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triagan",
        description="Train, sample and evaluate TriA-GAN on cleaned FDH shards.",
    )
    parser.add_argument("--version", action="version", version=f"triagan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
