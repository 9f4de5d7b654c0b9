"""Benchmarks of the SSD scan (Mamba-2): forward, and forward + backward.

Implementations: ``auto`` (``ssd_scan`` as users call it: Triton on CUDA, the reference on CPU),
``triton`` (our kernels; on CPU only under TRITON_INTERPRET=1 and at the tiny size), ``reference`` (the
chunked PyTorch form), ``sequential`` (the literal recurrence; CPU sizes only) and ``mamba_ssm``
(``mamba_chunk_scan_combined``; skipped with the reason when it cannot be imported). On CUDA the sizes
are realistic (``--bench-full`` / LAMBDASKIP_BENCH_FULL=1 adds b=4, l=8192, h=16); on CPU they are small
so that ``pytest bench/bench_ssd.py --benchmark-disable`` finishes in seconds, and Triton's interpreted
timings are labelled ``interpreted`` (they are not speeds). Every implementation runs at the size its
group names, and its output is checked against the float64 chunked reference before it is timed.

Each benchmark records in ``benchmark.extra_info`` (through bench/conftest.py's ``run_timed``, which
adds the achieved rates and, on CUDA, the fraction of the measured device limits):

- ``flops``: the forward count of the chunked algorithm, causal half of the in-chunk products::

      flops_fwd = b·h·( l·Q·(n + p)      # C_t·B_s and the score × x products within chunks (s ≤ t)
                      + 2·l·p·n          # chunk states  Σ_s w_s x_s ⊗ B_s
                      + 2·l·p·n )        # state → output  exp(Λ_t) S C_t

  and 3 × that for forward + backward (the backward does about twice the forward's products);
- ``bytes``: the inputs read and outputs written once, ``(2·b·l·h·p + 2·b·l·g·n) · itemsize + 4·b·l·h``
  (x, y, B, C in the input dtype; dt in float32), doubled for forward + backward (gradients).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest
import torch

from lambdaskip.ops.ssd import ssd_scan
from lambdaskip.reference.ssd import ssd_scan_sequential
from lambdaskip.testing import assert_close

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
TRITON_TINY = (1, 32, 2, 16, 16, 1, 16)  # the only size the interpreter runs on CPU
if CUDA:
    SIZES = [(2, 2048, 8, 64, 128, 1, 64), (1, 512, 8, 64, 64, 1, 64)]   # small: launch overhead dominates
    if os.environ.get("LAMBDASKIP_BENCH_FULL") == "1":
        SIZES.append((4, 8192, 16, 64, 128, 1, 256))
else:
    SIZES = [TRITON_TINY, (1, 64, 2, 16, 16, 1, 16)]
IMPLS = ("auto", "triton", "reference", "sequential", "mamba_ssm")


def size_name(size) -> str:
    """The exact problem size, as it appears in ids and groups."""
    return "b{}-l{}-h{}-p{}-n{}-g{}-chunk{}".format(*size)


def flops_forward(b, l, h, p, n, g, chunk_size) -> int:
    """Forward FLOPs of the chunked algorithm (formula in the module docstring)."""
    return b * h * (l * chunk_size * (n + p) + 4 * l * p * n)


def bytes_forward(b, l, h, p, n, g, dtype) -> int:
    """Bytes of inputs read and outputs written once (formula in the module docstring)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (2 * b * l * h * p + 2 * b * l * g * n) * itemsize + 4 * b * l * h


def _mamba_chunk_scan_combined():
    """mamba_ssm's SSD entry point. A build without its CUDA extension (MAMBA_SKIP_CUDA_BUILD) imports
    once an empty ``selective_scan_cuda`` module stands in for it; the SSD path does not use it."""
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm is not installed")
    if importlib.util.find_spec("selective_scan_cuda") is None:
        sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as error:  # ImportError, or another compiled piece failing to load
        pytest.skip(f"mamba_ssm not importable: {type(error).__name__}: {error}")
    return mamba_chunk_scan_combined


def _implementation(impl: str, size):
    """A callable with ssd_scan's arguments, or a pytest.skip with the reason."""
    if impl == "auto":
        return ssd_scan
    if impl == "triton":
        if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton needs CUDA here, or TRITON_INTERPRET=1 on CPU")
        if not CUDA and size != TRITON_TINY:
            pytest.skip(f"the Triton interpreter runs on CPU at {size_name(TRITON_TINY)} only")
        return lambda *a, **k: ssd_scan(*a, **k, backend="triton")
    if impl == "reference":
        return lambda *a, **k: ssd_scan(*a, **k, backend="reference")
    if impl == "sequential":
        if CUDA:
            pytest.skip("the token-by-token recurrence is only timed at CPU sizes")
        return ssd_scan_sequential
    if not CUDA:
        pytest.skip("mamba_ssm's kernels need CUDA")
    return _mamba_chunk_scan_combined()


def _inputs(size, requires_grad: bool):
    b, l, h, p, n, g, chunk_size = size
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=DEVICE, dtype=DTYPE).requires_grad_(
            requires_grad)

    x, z = rand(b, l, h, p), rand(b, l, h, p)
    dt = (torch.randn(b, l, h, generator=gen) * 0.5).to(DEVICE).requires_grad_(requires_grad)
    A = (-torch.rand(h, generator=gen) - 0.5).to(DEVICE).requires_grad_(requires_grad)
    B, C = rand(b, l, g, n), rand(b, l, g, n)
    D = torch.ones(h, device=DEVICE).requires_grad_(requires_grad)
    dt_bias = torch.zeros(h, device=DEVICE).requires_grad_(requires_grad)
    return (x, dt, A, B, C), dict(chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)


def _info(impl, size):
    return dict(impl=impl, size=size_name(size), dtype=str(DTYPE), interpreted=impl == "triton" and not CUDA)


def _check(fn, size):
    """Assert that ``fn``'s output matches the float64 chunked reference on the benchmark's inputs."""
    args, kwargs = _inputs(size, requires_grad=False)
    with torch.no_grad():
        actual = fn(*args, **kwargs)
        expected = ssd_scan(*(t.double() for t in args), backend="reference",
                            **{k: v.double() if torch.is_tensor(v) else v for k, v in kwargs.items()})
    assert_close(actual, expected, DTYPE, what=f"ssd_scan {size_name(size)}")


@pytest.mark.parametrize("size", SIZES, ids=size_name)
@pytest.mark.parametrize("impl", IMPLS)
def test_ssd_forward(run_timed, benchmark, impl, size):
    fn = _implementation(impl, size)
    benchmark.group = f"ssd_scan forward {size_name(size)} {DTYPE}"
    _check(fn, size)
    args, kwargs = _inputs(size, requires_grad=False)

    def forward():
        with torch.no_grad():
            return fn(*args, **kwargs)

    y = run_timed(forward, bytes=bytes_forward(*size[:6], DTYPE), flops=flops_forward(*size), **_info(impl, size))
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("size", SIZES, ids=size_name)
@pytest.mark.parametrize("impl", IMPLS)
def test_ssd_forward_backward(run_timed, benchmark, impl, size):
    fn = _implementation(impl, size)
    benchmark.group = f"ssd_scan forward+backward {size_name(size)} {DTYPE}"
    _check(fn, size)
    args, kwargs = _inputs(size, requires_grad=True)
    leaves = [*args, kwargs["D"], kwargs["z"], kwargs["dt_bias"]]

    def forward_backward():
        y = fn(*args, **kwargs)
        return torch.autograd.grad(y.float().square().sum(), leaves)

    grads = run_timed(forward_backward, bytes=2 * bytes_forward(*size[:6], DTYPE), flops=3 * flops_forward(*size),
                      **_info(impl, size))
    assert all(torch.isfinite(g.float()).all() for g in grads)
