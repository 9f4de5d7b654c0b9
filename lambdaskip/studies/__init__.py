"""Studies built on the library: :mod:`lambdaskip.studies.collapse`, the rank-collapse depth study."""
