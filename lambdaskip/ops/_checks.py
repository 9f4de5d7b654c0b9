"""Input validation at the op boundary; the checks live in :mod:`lambdaskip.common` (re-exported here for
the ops that import them from this package)."""
from lambdaskip.common import FLOAT_DTYPES, check_bool, check_finite_float, check_same_device, check_tensor

__all__ = ["FLOAT_DTYPES", "check_bool", "check_finite_float", "check_same_device", "check_tensor"]
