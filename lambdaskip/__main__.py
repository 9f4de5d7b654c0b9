import sys

try:
    from lambdaskip.cli import main
    code = main()
except KeyboardInterrupt:  # Ctrl-C before a command started (while importing torch)
    print("lambdaskip: interrupted", file=sys.stderr)
    code = 130
sys.exit(code)
