"""``python -m lambdaskip``: the ``lambdaskip`` command (:func:`lambdaskip.cli.main`). The package and
:mod:`lambdaskip.cli` import only the standard library, so torch loads inside main's Ctrl-C handling."""
import sys

try:
    from lambdaskip.cli import main
    code = main()
except KeyboardInterrupt:  # Ctrl-C in the few milliseconds before main starts
    print("lambdaskip: interrupted", file=sys.stderr)
    code = 130
sys.exit(code)
