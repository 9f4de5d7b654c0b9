"""Loading the compiled S4D extension (``csrc/``): ahead-of-time build, else just-in-time, else none.

On first use (never at ``import lambdaskip``) :func:`load` tries, in order:

1. the module ``lambdaskip._s4d_ext`` built by ``setup.py`` when torch was importable at install time;
2. a just-in-time build of ``csrc/`` with ``torch.utils.cpp_extension.load`` (ninja), cached in
   ``$LAMBDASKIP_EXTENSION_DIR`` or ``$XDG_CACHE_HOME/lambdaskip`` (default ``~/.cache/lambdaskip``);
   CUDA sources are included when torch has CUDA and nvcc is found, with a CPU-only build as fallback.

If neither works, the ops use the PyTorch reference and ONE warning says what is missing.
``LAMBDASKIP_DISABLE_EXTENSION=1`` skips the extension altogether. Either way the operators live in
the ``torch.ops.lambdaskip_ext`` namespace (see ``csrc/s4d_bindings.cpp``).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import sysconfig
import threading
import warnings
from pathlib import Path

import torch

AOT_MODULE = "lambdaskip._s4d_ext"
JIT_NAME = "lambdaskip_s4d_ext"
# csrc/ is installed as package data lambdaskip/csrc; in a source checkout it sits beside lambdaskip/.
SOURCE_DIR = next((d for d in (Path(__file__).resolve().parent / "csrc", Path(__file__).resolve().parent.parent / "csrc")
                   if (d / "s4d.h").exists()), Path(__file__).resolve().parent / "csrc")
CPU_SOURCES = ("s4d_cpu.cpp", "s4d_bindings.cpp")
CUDA_SOURCES = ("s4d_cuda.cu",)
CXX_FLAGS = ["-O3"]
CUDA_FLAGS = ["-O3", "--expt-relaxed-constexpr"]

_logger = logging.getLogger(__name__)
_lock = threading.Lock()
_state = {"loaded": False, "tried": False, "how": "not loaded yet (built on first use)"}


def _ops_registered() -> bool:
    try:
        torch.ops.lambdaskip_ext.vandermonde  # noqa: B018 - raises AttributeError when absent
        return True
    except (AttributeError, RuntimeError):
        return False


def cache_dir() -> Path:
    """Where just-in-time builds go: one folder per Python, torch and CUDA version."""
    root = os.environ.get("LAMBDASKIP_EXTENSION_DIR")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lambdaskip"
    flavour = f"cu{torch.version.cuda}" if torch.version.cuda else "cpu"
    return Path(root) / f"s4d_ext-py{sysconfig.get_python_version()}-torch{torch.__version__}-{flavour}"


def _missing_for_jit() -> str | None:
    """What a just-in-time build lacks here, or None when it can be tried."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} not on PATH; set CXX)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "the Python development headers (Python.h) are not installed"
    if not all((SOURCE_DIR / s).exists() for s in CPU_SOURCES):
        return f"the C++ sources are not at {SOURCE_DIR} (install from a source checkout)"
    return None


def _cuda_buildable() -> bool:
    from torch.utils import cpp_extension

    return (torch.cuda.is_available() and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
            and all((SOURCE_DIR / s).exists() for s in CUDA_SOURCES))


def _jit_build(with_cuda: bool) -> None:
    from torch.utils import cpp_extension

    build_dir = cache_dir() / ("cuda" if with_cuda else "cpu")
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(SOURCE_DIR / s) for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
    defines = ["-DLAMBDASKIP_WITH_CUDA"] if with_cuda else []
    name = JIT_NAME + ("_cuda" if with_cuda else "")
    if not (build_dir / f"{name}.so").exists():
        _logger.warning("lambdaskip: compiling the S4D extension into %s (first use only, about a minute)",
                        build_dir)
    cpp_extension.load(name, sources, extra_cflags=CXX_FLAGS + defines,
                       extra_cuda_cflags=CUDA_FLAGS + defines, build_directory=str(build_dir),
                       with_cuda=with_cuda, is_python_module=False)


def _try_load() -> tuple[bool, str]:
    if os.environ.get("LAMBDASKIP_DISABLE_EXTENSION", "0") == "1":
        return False, "disabled by LAMBDASKIP_DISABLE_EXTENSION=1"
    if _ops_registered():
        return True, "loaded (registered before lambdaskip loaded it)"
    aot_error = None
    if importlib.util.find_spec(AOT_MODULE) is not None:
        try:
            importlib.import_module(AOT_MODULE)
            return True, "loaded (built ahead of time by setup.py)"
        except (ImportError, OSError) as error:  # e.g. built against another torch
            aot_error = f"the prebuilt {AOT_MODULE} failed to load ({error})"
    missing = _missing_for_jit()
    if missing is not None:
        return False, missing if aot_error is None else f"{aot_error}; and {missing}"
    errors = []
    for with_cuda in ((True, False) if _cuda_buildable() else (False,)):
        try:
            _jit_build(with_cuda)
            return True, f"loaded (compiled just in time, {'CPU+CUDA' if with_cuda else 'CPU only'})"
        except Exception as error:  # a failed compile must not break the ops: they fall back
            errors.append(f"{'CUDA' if with_cuda else 'CPU'} build failed: {str(error).splitlines()[0]}")
    return False, "; ".join(errors) + f" (build log in {cache_dir()})"


def load() -> bool:
    """Load (building if needed) the extension once per process; True when its operators are usable."""
    if _state["tried"]:
        return _state["loaded"]
    with _lock:
        if not _state["tried"]:
            ok, how = _try_load()
            _state.update(loaded=ok, how=how, tried=True)
            if not ok:
                warnings.warn(f"lambdaskip: the S4D C++/CUDA extension is unavailable: {how}. "
                              f"The S4D ops use the PyTorch reference instead.", RuntimeWarning, stacklevel=3)
    return _state["loaded"]


@torch.compiler.assume_constant_result
def can_run(device: torch.device) -> bool:
    """Whether the extension runs on ``device`` (CPU: it loads; CUDA: it also has CUDA kernels)."""
    if device.type not in ("cpu", "cuda") or not load():
        return False
    return device.type == "cpu" or bool(torch.ops.lambdaskip_ext.cuda_built())


def extension_status() -> str:
    """A short description of the extension: loaded how, or why not (does not trigger a build)."""
    if not _state["loaded"]:
        return f"S4D extension: {_state['how']}"
    devices = "CPU+CUDA" if torch.ops.lambdaskip_ext.cuda_built() else "CPU"
    return f"S4D extension: {_state['how']}; kernels for {devices}"
