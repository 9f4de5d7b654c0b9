"""S4D benchmarks: kernel generation (extension vs naive Vandermonde vs chunked reference) and the
causal convolution (direct extension vs direct conv1d vs FFT) across sequence lengths.

Small sizes by default (``pytest bench/bench_s4d.py --benchmark-disable`` runs in seconds once the
extension is built); ``LAMBDASKIP_BENCH_FULL=1`` selects H=256, N=64, L in {1024, 16384} for the
kernel and L up to 4096 for the convolution. Peak memory: on CUDA, torch.cuda.max_memory_allocated
around the call (measured); on CPU torch keeps no allocator statistics, so extra_info holds the
theoretical bytes of the largest temporary each implementation allocates (computed, not measured).
"""
import os

import pytest
import torch

from lambdaskip import _extension
from lambdaskip.ops.s4d import s4d_conv, s4d_kernel
from lambdaskip.reference import s4d as reference

FULL = os.environ.get("LAMBDASKIP_BENCH_FULL") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_H, KERNEL_N = (256, 64) if FULL else (16, 16)
KERNEL_LENGTHS = (1024, 16384) if FULL else (256,)
CONV_B, CONV_H = (8, 64) if FULL else (2, 8)
CONV_LENGTHS = (32, 64, 128, 256, 512, 1024, 4096) if FULL else (32, 128)


def _needs_extension(backend):
    if backend == "extension" and not _extension.can_run(torch.device(DEVICE)):
        pytest.skip(_extension.extension_status())


def _synchronized(fn):
    def run():
        out = fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out
    return run


def _peak_memory(fn, theoretical_bytes):
    """(bytes, how): measured on CUDA, else the theoretical size of the largest temporary."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated (measured)"
    return theoretical_bytes, "largest temporary, theoretical (CPU allocator keeps no statistics)"


KERNEL_IMPLS = {
    "extension": lambda p, L: s4d_kernel(*p, L, backend="extension"),
    "naive": lambda p, L: reference.s4d_kernel_naive(*p, L),
    "chunked": lambda p, L: reference.s4d_kernel(*p, L),
}


def _kernel_temporary_bytes(impl, H, M, L):
    complex_bytes, real_bytes = 8, 4  # complex64 / float32
    if impl == "naive":
        return H * M * L * complex_bytes                                   # the (H, N/2, L) Vandermonde
    if impl == "chunked":
        return H * min(M, reference.MODES_PER_STEP) * L * complex_bytes    # one block of modes
    return H * L * real_bytes                                              # only the output K


@pytest.mark.parametrize("L", KERNEL_LENGTHS)
@pytest.mark.parametrize("impl", list(KERNEL_IMPLS))
def test_kernel_generation(benchmark, impl, L):
    _needs_extension("extension" if impl == "extension" else "reference")
    g = torch.Generator().manual_seed(0)
    params = [p.to(DEVICE) for p in reference.s4d_init(KERNEL_H, KERNEL_N, "inv", generator=g)]
    fn = _synchronized(lambda: KERNEL_IMPLS[impl](params, L))
    peak, how = _peak_memory(fn, _kernel_temporary_bytes(impl, KERNEL_H, KERNEL_N // 2, L))
    benchmark.extra_info.update(H=KERNEL_H, N=KERNEL_N, L=L, device=DEVICE, peak_memory_bytes=peak,
                                peak_memory_method=how)
    K = benchmark(fn)
    assert K.shape == (KERNEL_H, L) and torch.isfinite(K).all()


CONV_IMPLS = {
    "direct-extension": dict(method="direct", backend="extension"),
    "direct-reference": dict(method="direct", backend="reference"),
    "fft": dict(method="fft", backend="reference"),
}


@pytest.mark.parametrize("L", CONV_LENGTHS)
@pytest.mark.parametrize("impl", list(CONV_IMPLS))
@pytest.mark.parametrize("pass_", ["forward", "forward+backward"])
def test_conv(benchmark, pass_, impl, L):
    _needs_extension(CONV_IMPLS[impl]["backend"])
    g = torch.Generator().manual_seed(0)
    u = torch.randn(CONV_B, CONV_H, L, generator=g).to(DEVICE).requires_grad_(pass_ != "forward")
    K = torch.randn(CONV_H, L, generator=g).to(DEVICE).requires_grad_(pass_ != "forward")
    grad_y = torch.randn(CONV_B, CONV_H, L, generator=g).to(DEVICE)

    def step():
        y = s4d_conv(u, K, **CONV_IMPLS[impl])
        if pass_ != "forward":
            y.backward(grad_y)
        return y

    benchmark.extra_info.update(B=CONV_B, H=CONV_H, L=L, device=DEVICE)
    y = benchmark(_synchronized(step))
    assert y.shape == u.shape
