import sys

from lambdaskip.cli import main

sys.exit(main())
