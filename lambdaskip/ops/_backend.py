"""Backend selection shared by every public op.

An op supports a subset of the backends below. ``backend="auto"`` picks the fastest one that can run
on the input's device; a forced backend that cannot run raises instead of silently falling back.

- ``"reference"``: plain PyTorch from :mod:`lambdaskip.reference`; runs everywhere, differentiable
  by autograd.
- ``"triton"``: the Triton kernels in :mod:`lambdaskip.kernels`; runs on CUDA, and on CPU only under
  Triton's interpreter (``TRITON_INTERPRET=1`` set before the kernels are imported).
- ``"extension"``: the compiled C++/CUDA extension from ``csrc/``.

(Attention's fast path is PyTorch's own ``scaled_dot_product_attention``: what ``"auto"`` gives it unless
the reference is preferred, see :func:`reference_preferred`.)
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "reference", "triton", "extension")

_preferred: list[str] = []


@contextlib.contextmanager
def prefer_backend(backend: str):
    """Within the block, ops called with ``backend="auto"`` resolve to ``backend`` wherever they implement
    it and it can run on their inputs; other ops keep their usual choice. Blocks nest: the innermost
    preference that applies to an op wins, so ``prefer_backend("triton")`` around
    ``prefer_backend("extension")`` steers both kinds of ops.

    This is how whole models switch paths without changing their code, e.g. the μ-parity checks run
    a stack once under ``prefer_backend("reference")`` and once under ``prefer_backend("triton")``.
    """
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    _preferred.append(backend)
    try:
        yield
    finally:
        _preferred.pop()


def reference_preferred() -> bool:
    """Whether a ``prefer_backend("reference")`` block is active (for ops whose only other path is PyTorch's own,
    like attention's SDPA)."""
    return "reference" in _preferred


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_importable() -> bool:
    """True when the ``triton`` package is installed (checked once, without importing it)."""
    return _TRITON_INSTALLED


def triton_interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is switched on for this process."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_can_run(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device`` in this process."""
    if not triton_importable():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and triton_interpreter_enabled()


def choose_backend(op: str, backend: str, device: torch.device, supported: tuple[str, ...],
                   extension_can_run=None) -> str:
    """Resolve ``backend`` for ``op`` on ``device``.

    Args:
        op: the op's name, used in error messages.
        backend: the caller's request, one of :data:`BACKENDS`.
        device: the device of the op's inputs.
        supported: the backends this op implements (``"reference"`` always among them).
        extension_can_run: callable ``device -> bool`` for ops with a compiled extension.
    Returns:
        one of ``supported``.
    Raises:
        ValueError: ``backend`` is unknown or not implemented by ``op``; the message lists only the
            backends ``op`` takes.
        RuntimeError: a forced backend cannot run on ``device`` here.
    """
    if backend != "auto" and backend not in supported:
        # one message for an unknown name and for a backend this op lacks: it lists only what this op takes
        lacks = f" ({op} has no {backend!r} backend)" if backend in BACKENDS else ""
        raise ValueError(f"{op}: backend must be one of {('auto',) + tuple(supported)}, got {backend!r}{lacks}")
    if backend == "auto":
        for preferred in reversed(_preferred):
            if preferred in supported and _can_run(preferred, device, extension_can_run):
                return preferred
        if "triton" in supported and device.type == "cuda" and triton_can_run(device):
            return "triton"
        if "extension" in supported and extension_can_run is not None and extension_can_run(device):
            return "extension"
        return "reference"
    if not _can_run(backend, device, extension_can_run):
        if backend == "extension":
            raise RuntimeError(f"{op}: backend='extension' cannot run on {device.type}: the compiled "
                               f"extension is unavailable (see lambdaskip.extension_status())")
        why = ("triton is not installed" if not triton_importable()
               else f"tensors are on {device.type}; Triton runs on CUDA, or on CPU with TRITON_INTERPRET=1")
        raise RuntimeError(f"{op}: backend='triton' cannot run: {why}")
    return backend


def _can_run(backend: str, device: torch.device, extension_can_run) -> bool:
    if backend == "triton":
        return triton_can_run(device)
    if backend == "extension":
        return extension_can_run is not None and extension_can_run(device)
    return True
