"""Neutral helpers every layer may use (it imports nothing from lambdaskip): the dtype rule, argument
checks, the λ-skip norms, atomic writes and the versions that produced a record.

- :func:`compute_dtype`: the precision the math runs in (references and kernel launchers);
- :func:`check_tensor`, :func:`check_same_device`, :func:`check_finite_float`, :func:`check_bool`: input
  validation at an API boundary; errors name the argument and what was expected; :func:`renamed_argument`
  keeps an old keyword working with a DeprecationWarning;
- :data:`NORMS`: the post-norms of a λ-skip (``None``, where a caller allows it, means no norm);
- :func:`atomic_write`, :func:`versions`: how studies, the trainer and the benchmark report write results;
- :func:`output_lock`, :func:`staged_folder`: output folders that one run at a time owns and that appear (or
  are replaced) whole.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import math
import os
import platform
import shutil
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence

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


class OutputError(ValueError):
    """An output folder that cannot be used; the message is one line naming the flag and the folder."""


def _sibling(out: str, kind: str) -> str:
    """``parent/.name.<kind>``: the hidden siblings of ``out`` (its lock, temporary and old copies)."""
    parent, name = os.path.split(out)
    return os.path.join(parent, f".{name}.{kind}")


def _make_parents(parent: str) -> list[str]:
    """Create ``parent`` and its missing ancestors; returns the folders created, innermost first."""
    missing = []
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for folder in reversed(missing):
        os.mkdir(folder)
    return missing


def _remove_empty(folders: list[str]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _clean_leftovers(out: str) -> None:
    """Remove what a killed run left beside ``out`` (temporary copies); put back a moved-aside old copy when
    the kill fell between the two renames of a replacement."""
    for leftover in glob.glob(glob.escape(_sibling(out, "tmp-")) + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
    old = sorted(glob.glob(glob.escape(_sibling(out, "old-")) + "*"), key=os.path.getmtime)
    if old and not os.path.exists(out):
        os.rename(old.pop(), out)
    for leftover in old:
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, flag: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on the output folder ``out`` (an ``flock`` on the hidden sibling file
    ``.<name>.lock``) while the block runs, so that a second run into the same folder fails at once.

    Checks before any work that ``out`` can be a folder: OutputError when it is a file, when its parent
    cannot be created or written, or when another process holds the lock. Missing parent folders are
    created, and removed again when ``out`` was not created. Leftovers of a killed run are cleaned up.
    """
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"{flag} {out} is a file, not a folder")
    try:
        created = _make_parents(os.path.dirname(out))
    except OSError as err:
        raise OutputError(f"cannot create {flag} {out}: {err.strerror}") from None
    lock = _sibling(out, "lock")
    try:
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(f"{flag} {out} is in use by another run (it holds {lock}); wait for it to "
                                  f"end or choose another {flag}") from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break  # else the previous holder removed the file while we waited: lock the new one
            os.close(fd)
    except OSError as err:
        _remove_empty(created)
        raise OutputError(f"cannot create {flag} {out}: {err.strerror}") from None
    try:
        _clean_leftovers(out)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)
        os.close(fd)
        if not os.path.exists(out):
            _remove_empty(created)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the block has run; raise KeyboardInterrupt then if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[str]:
    """Yield a new temporary sibling folder of ``out`` to fill; when the block succeeds it is renamed to
    ``out`` (an existing ``out`` is moved aside, replaced, then removed; Ctrl-C waits for the renames), so
    ``out`` holds the old files or the new ones, never a mix. On an error the temporary folder is removed.
    Hold :func:`output_lock` around it."""
    out = os.path.abspath(os.fspath(out))
    staged = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=os.path.basename(_sibling(out, "tmp-")))
    try:
        yield staged
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staged, 0o777 & ~umask)  # mkdtemp makes 0700 folders; give the usual permissions
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    with _sigint_deferred():
        if os.path.exists(out):
            old = os.path.join(os.path.dirname(staged), os.path.basename(staged).replace(".tmp-", ".old-", 1))
            os.rename(out, old)
            os.rename(staged, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staged, out)


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
