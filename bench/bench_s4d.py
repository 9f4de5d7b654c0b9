"""S4D benchmarks: kernel generation (extension vs naive Vandermonde vs chunked reference) and the
causal convolution (direct extension vs direct conv1d vs FFT) across sequence lengths; ``auto`` is each
op as users call it (no ``backend``/``method`` argument).

Small sizes by default (``pytest bench/bench_s4d.py --benchmark-disable`` runs in seconds once the
extension is built); ``LAMBDASKIP_BENCH_FULL=1`` selects H=256, N=64, L in {1024, 16384} for the
kernel and B=8, H=64, L up to 4096 for the convolution. Every output is checked against the float64
reference before it is timed; the group names the exact size.

Minimal work stated in ``extra_info`` (M = N/2 complex modes, 4-byte floats):

- kernel generation: ``flops = 8·H·M·L`` (one complex multiply-add per channel, mode and position; the
  powers of exp(dt·A) are not counted), ``bytes = 4·H·L + 4·H·(1 + 4·M)`` (write K; read dt, A, C);
- convolution: ``flops = B·H·L·(L + 1)`` forward (the direct causal form, a multiply-add per pair
  j ≤ l; the FFT does fewer), 3 × that with the backward (∂u and ∂K are each one more such sum);
  ``bytes = 4·(2·B·H·L + H·L)`` forward (read u, K; write y), plus ``4·(3·B·H·L + 2·H·L)`` for the
  backward (read ∂y, u, K; write ∂u, ∂K).

Peak memory: on CUDA, torch.cuda.max_memory_allocated around the call (``peak_memory_method`` says
measured); on CPU torch keeps no allocator statistics, so ``computed_peak_temporary_bytes`` holds the
size of the largest temporary each implementation allocates: a formula, not a measurement.
"""
import os

import pytest
import torch

from lambdaskip import _extension
from lambdaskip.ops.s4d import s4d_conv, s4d_kernel
from lambdaskip.reference import s4d as reference
from lambdaskip.testing import assert_close

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


def _peak_memory(fn, computed_bytes) -> dict:
    """extra_info entries: the measured peak on CUDA, else the computed size of the largest temporary."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return dict(peak_memory_bytes=torch.cuda.max_memory_allocated() - before,
                    peak_memory_method="torch.cuda.max_memory_allocated (measured)")
    return dict(computed_peak_temporary_bytes=computed_bytes,
                peak_memory_method="computed: largest temporary (the CPU allocator keeps no statistics)")


KERNEL_IMPLS = {
    "auto": lambda p, L: s4d_kernel(*p, L),
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


def kernel_work(H, N, L) -> dict:
    """Minimal FLOPs and bytes of kernel generation (formulas in the module docstring)."""
    M = N // 2
    return dict(flops=8 * H * M * L, bytes=4 * H * L + 4 * H * (1 + 4 * M))


def conv_work(B, H, L, backward: bool) -> dict:
    """Minimal FLOPs (direct causal form) and bytes of the convolution (module docstring)."""
    flops, bytes_ = B * H * L * (L + 1), 4 * (2 * B * H * L + H * L)
    if backward:
        flops, bytes_ = 3 * flops, bytes_ + 4 * (3 * B * H * L + 2 * H * L)
    return dict(flops=flops, bytes=bytes_)


@pytest.mark.parametrize("L", KERNEL_LENGTHS)
@pytest.mark.parametrize("impl", list(KERNEL_IMPLS))
def test_kernel_generation(run_timed, benchmark, impl, L):
    _needs_extension("extension" if impl == "extension" else "reference")
    benchmark.group = f"s4d_kernel H={KERNEL_H} N={KERNEL_N} L={L}"
    g = torch.Generator().manual_seed(0)
    params = reference.s4d_init(KERNEL_H, KERNEL_N, "inv", generator=g)
    expected = reference.s4d_kernel(*(p.to(torch.complex128 if p.is_complex() else torch.float64)
                                      for p in params), L)
    params = [p.to(DEVICE) for p in params]
    fn = lambda: KERNEL_IMPLS[impl](params, L)  # noqa: E731
    assert_close(fn(), expected, torch.float32, what=impl)
    memory = _peak_memory(_synchronized(fn), _kernel_temporary_bytes(impl, KERNEL_H, KERNEL_N // 2, L))
    run_timed(fn, **kernel_work(KERNEL_H, KERNEL_N, L), impl=impl, H=KERNEL_H, N=KERNEL_N, L=L, **memory)


CONV_IMPLS = {
    "auto": dict(),
    "direct-extension": dict(method="direct", backend="extension"),
    "direct-reference": dict(method="direct", backend="reference"),
    "fft": dict(method="fft", backend="reference"),
}


@pytest.mark.parametrize("L", CONV_LENGTHS)
@pytest.mark.parametrize("impl", list(CONV_IMPLS))
@pytest.mark.parametrize("pass_", ["forward", "forward+backward"])
def test_conv(run_timed, benchmark, pass_, impl, L):
    _needs_extension(CONV_IMPLS[impl].get("backend"))
    backward = pass_ != "forward"
    benchmark.group = f"s4d_conv B={CONV_B} H={CONV_H} L={L} {pass_}"
    g = torch.Generator().manual_seed(0)
    u = torch.randn(CONV_B, CONV_H, L, generator=g)
    K = torch.randn(CONV_H, L, generator=g) / L ** 0.5
    grad_y = torch.randn(CONV_B, CONV_H, L, generator=g).to(DEVICE)
    expected = reference.s4d_conv_direct(u.double(), K.double())
    u, K = (t.to(DEVICE).requires_grad_(backward) for t in (u, K))
    assert_close(s4d_conv(u, K, **CONV_IMPLS[impl]), expected, torch.float32, what=impl)

    def step():
        y = s4d_conv(u, K, **CONV_IMPLS[impl])
        if backward:
            y.backward(grad_y)
        return y

    run_timed(step, **conv_work(CONV_B, CONV_H, L, backward), impl=impl, B=CONV_B, H=CONV_H, L=L)
