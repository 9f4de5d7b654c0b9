"""The ``lambdaskip`` console script (also ``python -m lambdaskip``): it parses the command line, builds
config objects and calls the studies and the trainer. Nothing in the library imports it.

- ``lambdaskip collapse``: :mod:`lambdaskip.cli.collapse` → :mod:`lambdaskip.studies.collapse`;
- ``lambdaskip train`` / ``lambdaskip sweep``: :mod:`lambdaskip.cli.train` → :mod:`lambdaskip.training`.
"""
from __future__ import annotations

import argparse
import sys

from lambdaskip.cli import collapse, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambdaskip", description="λ-skip layers and rank-collapse studies")
    commands = parser.add_subparsers(dest="command", required=True)
    collapse.add_subcommand(commands)
    train.add_subcommands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
