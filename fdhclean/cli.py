"""Command line of fdhclean: a thin shell over `fdhclean.commands.*`.

Every module in `fdhclean/commands/` that defines `register(subparsers)` contributes one
sub-command; `register` adds its parser and sets `func=run` (a callable taking the parsed
namespace and returning an exit code). Command modules import their heavy dependencies inside
`run`, so `fdhclean --help` stays fast and works without the optional extras.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from fdhclean import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fdhclean",
        description="Clean FDH keypoints with ViTPose and CSE body-part matching (TriA-GAN S1).",
    )
    parser.add_argument("--version", action="version", version=f"fdhclean {__version__}")
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
