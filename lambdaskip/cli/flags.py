"""Flag conventions of the ``lambdaskip`` command line: every flag is the field's name in kebab case
(``d_model`` → ``--d-model``, ``seqlen`` → ``--seqlen``); an old spelling stays accepted as a hidden alias;
a parsing error is one line (:class:`OneLineParser`)."""
from __future__ import annotations

import argparse


def add_alias(parser: argparse.ArgumentParser, old: str, dest: str, **kwargs) -> None:
    """Accept ``old`` (a former spelling) for ``dest``, hidden from ``--help``."""
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``prog: error: message`` (exit status 2), without the
    usage block (``--help`` shows it); sub-command parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")
