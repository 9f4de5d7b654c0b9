"""Neutral helpers every layer may use (it imports nothing from lambdaskip): the dtype rule, argument
checks, the λ-skip norms, atomic writes and the versions that produced a record.

- :func:`compute_dtype`: the precision the math runs in (references and kernel launchers);
- :func:`check_tensor`, :func:`check_same_device`, :func:`check_finite_float`, :func:`check_bool`: input
  validation at an API boundary; errors name the argument and what was expected; :func:`renamed_argument`
  keeps an old keyword working with a DeprecationWarning;
- :data:`NORMS`: the post-norms of a λ-skip (``None``, where a caller allows it, means no norm);
- :func:`atomic_write`, :func:`versions`: how studies, the trainer and the benchmark report write results.
"""
from __future__ import annotations

import math
import os
import platform
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np
import torch

__version__ = "0.1.0"

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NORMS = ("layernorm", "rmsnorm", "l2")


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The widest floating dtype among ``tensors`` (None skipped), at least float32 (float64 stays)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# ---------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------

def check_tensor(name: str, t, *, ndim: int | Sequence[int] | None = None, dtypes=FLOAT_DTYPES,
                 shape: Sequence[int | None] | None = None) -> torch.Tensor:
    """Check that ``t`` is a tensor of an allowed dtype, rank and shape (None in shape = any size)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have a floating dtype ({allowed}), got {t.dtype}")
    if ndim is not None:
        ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in ndims:
            raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, "
                             f"got shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != ts for s, ts in zip(shape, t.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    return t


def check_same_device(**tensors) -> torch.device:
    """All non-None tensors share one device; returns it."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    unique = set(devices.values())
    if len(unique) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    return next(iter(unique))


def check_finite_float(name: str, value, *, positive: bool = False) -> float:
    """A finite Python number (optionally > 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def renamed_argument(owner: str, old: str, new: str, old_value, value):
    """``value``, or ``old_value`` with a DeprecationWarning when a caller still passes the old keyword
    ``old`` (not None) instead of ``new``."""
    if old_value is None:
        return value
    warnings.warn(f"{owner}: the keyword {old}= is deprecated, use {new}=", DeprecationWarning, stacklevel=3)
    return old_value


def check_bool(name: str, value) -> bool:
    """A Python bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------

def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``:
    a reader sees the old file or the new one, never half of one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def versions() -> dict:
    """Versions of Python, the platform and the packages that produced the numbers."""
    found = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
             "numpy": np.__version__, "lambdaskip": __version__}
    try:
        import matplotlib
        found["matplotlib"] = matplotlib.__version__
    except ImportError:
        found["matplotlib"] = None
    return found
