"""How experiments write their records: atomically, with the versions that produced them."""
from __future__ import annotations

import os
import platform
import tempfile

import numpy as np
import torch


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
    import lambdaskip
    found = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
             "numpy": np.__version__, "lambdaskip": lambdaskip.__version__}
    try:
        import matplotlib
        found["matplotlib"] = matplotlib.__version__
    except ImportError:
        found["matplotlib"] = None
    return found
