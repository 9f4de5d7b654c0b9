"""The precision the math runs in; the rule lives in :mod:`lambdaskip.common` (re-exported here for the
references that import it from this package)."""
from lambdaskip.common import compute_dtype

__all__ = ["compute_dtype"]
