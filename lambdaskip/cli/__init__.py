"""The ``lambdaskip`` console script (also ``python -m lambdaskip``): it parses the command line, builds
config objects and calls the studies and the trainer. Nothing in the library imports it.

- ``lambdaskip collapse``: :mod:`lambdaskip.cli.collapse` → :mod:`lambdaskip.studies.collapse`;
- ``lambdaskip train`` / ``lambdaskip sweep``: :mod:`lambdaskip.cli.train` → :mod:`lambdaskip.training`.

This module imports only the standard library; torch and the library load inside :func:`main`, so a Ctrl-C
at any moment of start-up is answered like one during a command.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from lambdaskip.cli import collapse, train
    from lambdaskip.cli.flags import OneLineParser
    from lambdaskip.common import __version__
    parser = OneLineParser(prog="lambdaskip", description="λ-skip layers and rank-collapse studies")
    parser.add_argument("--version", action="version", version=f"lambdaskip {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    collapse.add_subcommand(commands)
    train.add_subcommands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status is 0, 1 (a failure while running), 2 (bad input, one line on stderr)
    or 130 (Ctrl-C: "interrupted"; output folders are then left whole, old or new)."""
    args = None
    try:
        args = build_parser().parse_args(argv)  # imports torch: a Ctrl-C there is handled too
        return args.run(args)
    except KeyboardInterrupt:
        print(f"lambdaskip{f' {args.command}' if args else ''}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
