"""Numerical comparison used by the test and benchmark suites: the one table of tolerances.

Errors are measured normwise, ``max|actual − expected| / max|expected|``, against a float64
reference computed from the same inputs. The bound per dtype is a small multiple of that dtype's unit
roundoff u times the length of the longest reduction a kernel does in that precision:

- float64: 1e-9 — two float64 algorithms differ only by reassociation (u = 1.1e-16).
- float32: 1e-4 on CPU (u = 6e-8; reductions of up to ~1e3 terms accumulate ~1e-5 relative error,
  and the Triton interpreter computes ``tl.dot`` in exact fp32). On CUDA ``tl.dot`` on fp32 uses TF32
  (u = 4.9e-4 per product), so 5e-3 there.
- float16: 5e-3 — inputs and outputs are rounded to fp16 (u = 4.9e-4), math is in fp32; a few
  roundings of inputs and output plus one of a normalised intermediate.
- bfloat16: 3e-2 — the same argument with u = 3.9e-3 (bf16 has 8 significant bits).
"""
from __future__ import annotations

import torch

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


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Normwise relative error ``max|actual − expected| / max|expected|`` computed in float64."""
    if actual.shape != expected.shape:
        raise ValueError(f"shape mismatch: actual {tuple(actual.shape)} vs expected {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    scale = e.abs().max().item() if e.numel() else 0.0
    diff = (a - e).abs().max().item() if e.numel() else 0.0
    return diff / max(scale, 1e-30)


def tolerance(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """The tolerance of :data:`TOLERANCES` for ``dtype`` on ``device``'s type."""
    device_type = torch.device(device).type
    return TOLERANCES[(device_type, dtype)]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 what: str = "value") -> None:
    """Assert ``relative_error(actual, expected) <= tolerance(dtype, actual.device)``.

    ``dtype`` is the precision the computation ran in (defaults to ``actual.dtype``).
    """
    dtype = dtype or actual.dtype
    err = relative_error(actual, expected)
    tol = tolerance(dtype, actual.device)
    assert err <= tol, f"{what}: relative error {err:.3e} > tolerance {tol:.1e} for {dtype} on {actual.device.type}"


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
