"""Flag conventions of the ``lambdaskip`` command line: every flag is the field's name in kebab case
(``d_model`` → ``--d-model``, ``seqlen`` → ``--seqlen``); an old spelling stays accepted as a hidden alias."""
from __future__ import annotations

import argparse


def flag(field: str) -> str:
    """The flag of a config field: ``d_model`` → ``--d-model``."""
    return "--" + field.replace("_", "-")


def add_alias(parser: argparse.ArgumentParser, old: str, dest: str, **kwargs) -> None:
    """Accept ``old`` (a former spelling) for ``dest``, hidden from ``--help``."""
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)
