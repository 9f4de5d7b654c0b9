"""Numerical comparison used by the test and benchmark suites: the one table of tolerances, the device
kernel tests run on, and a counter that proves a fast path ran.

Errors are measured normwise, ``max|actual − expected| / max|expected|``, against a float64
reference computed from the same inputs. The bound per dtype is a small multiple of that dtype's unit
roundoff u times the length of the longest reduction a kernel does in that precision:

- float64: 1e-9 — two float64 algorithms differ only by reassociation (u = 1.1e-16).
- float32: 1e-4 on CPU (u = 6e-8; reductions of up to ~1e3 terms accumulate ~1e-5 relative error,
  and the Triton interpreter computes ``tl.dot`` in exact fp32). On CUDA ``tl.dot`` on fp32 uses TF32
  (u = 4.9e-4 per product), so 5e-3 there — for the SSD kernels and models built on them; ops without
  ``tl.dot`` have their own, tighter entry in :data:`OP_TOLERANCES`.
- float16: 5e-3 — inputs and outputs are rounded to fp16 (u = 4.9e-4), math is in fp32; a few
  roundings of inputs and output plus one of a normalised intermediate.
- bfloat16: 3e-2 — the same argument with u = 3.9e-3 (bf16 has 8 significant bits).

Per op (:data:`OP_TOLERANCES`, used with ``op=``):

- ``lambda_norm`` float32: 1e-5 on every device. No ``tl.dot`` (so no TF32); each row is one fp32 tree
  reduction over d ≤ 8192 columns (error ≲ log2(d)·u ≈ 1e-6) and μ a Welford/Chan merge that never
  subtracts two large sums.
- ``s4d`` float32: 1e-4 on every device. The C++/CUDA extension has no tensor-core math; K is a sum of
  N ≤ 64 float32 terms whose phase is kept in float64 (its own check, :data:`S4D_PHASE_BOUND`).

``tests/test_tolerances.py`` shows, for every bound, a named plausible bug that exceeds it.
"""
from __future__ import annotations

import collections
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
"""Where kernel tests run: CUDA tensors on a CUDA machine, else CPU tensors (Triton under the interpreter)."""

TOLERANCES = {
    ("cpu", torch.float64): 1e-9,
    ("cpu", torch.float32): 1e-4,
    ("cpu", torch.float16): 5e-3,
    ("cpu", torch.bfloat16): 3e-2,
    ("cuda", torch.float64): 1e-9,
    ("cuda", torch.float32): 5e-3,
    ("cuda", torch.float16): 5e-3,
    ("cuda", torch.bfloat16): 3e-2,
}

OP_TOLERANCES = {
    ("lambda_norm", "cpu", torch.float32): 1e-5,
    ("lambda_norm", "cuda", torch.float32): 1e-5,
    ("s4d", "cpu", torch.float32): 1e-4,
    ("s4d", "cuda", torch.float32): 1e-4,
}
S4D_PHASE_BOUND = 5e-7
"""S4D-Inv kernel at phases ~1e5 rad in float32: the extension keeps l·Im(dtA) in float64 (error 1.4e-7 on
the test's inputs, CPU); a phase rounded to float32 gives 5.2e-6 there (tests/test_tolerances.py)."""


def relative_error(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> float:
    """Normwise relative error ``max|actual − expected| / max|expected|`` computed in float64.

    ``scale`` replaces ``max|expected|`` for a sum of cancelling terms (pass ``Σ|term|``): its rounding error
    is relative to the terms, not to the sum, which may be ~0 (e.g. dλ = Σ dh·residual)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shape mismatch: actual {tuple(actual.shape)} vs expected {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    if scale is None:
        scale = e.abs().max().item() if e.numel() else 0.0
    diff = (a - e).abs().max().item() if e.numel() else 0.0
    return diff / max(scale, 1e-30)


def tolerance(dtype: torch.dtype, device: torch.device | str = "cpu", op: str | None = None) -> float:
    """The tolerance for ``dtype`` on ``device``'s type: ``op``'s entry in :data:`OP_TOLERANCES` if it has one,
    else :data:`TOLERANCES`."""
    device_type = torch.device(device).type
    return OP_TOLERANCES.get((op, device_type, dtype), TOLERANCES[(device_type, dtype)])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 what: str = "value", op: str | None = None, scale: float | None = None) -> None:
    """Assert ``relative_error(actual, expected, scale) <= tolerance(dtype, actual.device, op)``.

    ``dtype`` is the precision the computation ran in (defaults to ``actual.dtype``).
    """
    dtype = dtype or actual.dtype
    err = relative_error(actual, expected, scale)
    tol = tolerance(dtype, actual.device, op)
    assert err <= tol, (f"{what}: relative error {err:.3e} > tolerance {tol:.1e} for {dtype} on {actual.device.type}"
                        + (f" ({op})" if op else ""))


class _OpCounter(TorchDispatchMode):
    def __init__(self, namespace: str):
        super().__init__()
        self.namespace = namespace
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == self.namespace:
            self.counts[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_custom_ops(namespace: str = "lambdaskip"):
    """Count the calls of ``namespace::*`` custom ops inside the block (forward and backward).

    Yields a :class:`collections.Counter` keyed by op name (``"lambda_norm_fwd"``, ``"ssd_scan_core"``, …),
    filled as the ops run, so a test can assert that the fast path it expects really ran."""
    counter = _OpCounter(namespace)
    with counter:
        yield counter.counts


def skip_gpu_tests_without_cuda(items) -> None:
    """Mark every collected item carrying the ``gpu`` mark as skipped when CUDA is unavailable
    (shared by the test and benchmark suites' ``pytest_collection_modifyitems``)."""
    if torch.cuda.is_available():
        return
    import pytest

    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
