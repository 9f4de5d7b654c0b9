"""The tolerances can tell: for every bound in lambdaskip.testing, a named plausible bug exceeds it.

Each bug is emulated by perturbing a float64 reference formula (never by editing a kernel), on inputs
drawn like those of the tests that use the bound, and its error must exceed the bound by a margin
(at least 3×), so a kernel with that bug fails those tests. Pure PyTorch: fast on any machine.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from lambdaskip.reference.s4d import s4d_discretize, s4d_init, s4d_kernel_naive
from lambdaskip.testing import OP_TOLERANCES, S4D_PHASE_BOUND, TOLERANCES, relative_error, tolerance

MARGIN = 3.0
F64 = torch.float64


def test_every_bound_has_a_bug_below():
    """The bounds this file checks are all the bounds there are (a new entry needs its own check here)."""
    bounds = set(TOLERANCES.values()) | set(OP_TOLERANCES.values()) | {S4D_PHASE_BOUND}
    assert bounds == {1e-9, 1e-5, 1e-4, 5e-3, 3e-2, S4D_PHASE_BOUND}


def layer_norm_rows(h, unbiased=False):
    var = h.var(-1, unbiased=unbiased, keepdim=True)
    return (h - h.mean(-1, keepdim=True)) / torch.sqrt(var + 1e-5)


@pytest.mark.parametrize("d", [60, 100, 300, 12288])  # the CPU tests' widths and the GPU test's widest
def test_unbiased_variance_in_layernorm_exceeds_lambda_norm_float32(d):
    """Bug: LayerNorm's variance divided by D − 1 (torch.var's default) instead of D: relative error ≈ 1/(2D)."""
    g = torch.Generator().manual_seed(d)
    h = torch.randn(4, d, generator=g, dtype=F64)
    w, b = 1 + 0.5 * torch.randn(d, generator=g, dtype=F64), 0.5 * torch.randn(d, generator=g, dtype=F64)
    err = relative_error(layer_norm_rows(h, unbiased=True) * w + b, F.layer_norm(h, (d,), w, b, 1e-5))
    for device in ("cpu", "cuda"):
        assert err > MARGIN * tolerance(torch.float32, device, op="lambda_norm"), err


def welford_mu(y, rows_per_program, buggy):
    """μ = ‖Y − mean‖_F by per-program Welford partials merged with Chan's formula (as the λ-norm kernel)."""
    means, m2s, counts = [], [], []
    for start in range(0, y.shape[0], rows_per_program):
        mean, m2 = torch.zeros_like(y[0]), torch.zeros((), dtype=y.dtype)
        for n, row in enumerate(y[start:start + rows_per_program], 1):
            delta = row - mean
            mean = mean + delta / n
            m2 = m2 + (delta * delta if buggy else delta * (row - mean)).sum()  # bug: the old mean twice
        means.append(mean), m2s.append(m2), counts.append(n)
    counts = torch.tensor(counts, dtype=y.dtype)
    total = (torch.stack(means) * counts[:, None]).sum(0) / counts.sum()
    spread = (counts[:, None] * (torch.stack(means) - total).square()).sum()
    return (torch.stack(m2s).sum() + spread).sqrt()


@pytest.mark.parametrize("rows_per_program", [4, 8])  # CPU and CUDA forward launches
def test_welford_step_error_exceeds_every_mu_bound(rows_per_program):
    """Bug: the Welford update M2 += δ² with δ = x − old mean (instead of δ·(x − new mean))."""
    y = torch.randn(13, 60, generator=torch.Generator().manual_seed(rows_per_program), dtype=F64)
    exact = torch.linalg.matrix_norm(y - y.mean(0))
    assert relative_error(welford_mu(y, rows_per_program, buggy=False), exact) < 1e-12
    err = relative_error(welford_mu(y, rows_per_program, buggy=True), exact)
    assert err > MARGIN * max(tolerance(torch.float32, "cuda", op="lambda_norm"), tolerance(torch.bfloat16)), err


def ssd_sequential(x, dt, A, B, C, chunk, carry_offset=1):
    """y_t = C_t·h_t with h_t = exp(dt_t A) h_{t−1} + dt_t x_t ⊗ B_t, in float64; a new chunk starts from the
    state after token ``start − carry_offset`` (1: the last token of the previous chunk, correct)."""
    b, l, h, p = x.shape
    state, states, ys = torch.zeros(b, h, p, B.shape[-1], dtype=F64), [], []
    for t in range(l):
        if t and t % chunk == 0:
            state = states[t - carry_offset]
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None, None] * x[:, t, :, :, None] * B[:, t, 0, None, None, :])
        states.append(state)
        ys.append(torch.einsum("bhpn,bn->bhp", state, C[:, t, 0]))
    return torch.stack(ys, 1)


def test_off_by_one_chunk_boundary_exceeds_every_ssd_bound():
    """Bug: a chunk's carried state (and total decay) taken at index CHUNK − 2 instead of CHUNK − 1, so each
    chunk's last token never reaches the next chunk. Inputs drawn as in the SSD kernel tests."""
    g = torch.Generator().manual_seed(0)
    b, l, h, p, n, chunk = 1, 40, 2, 32, 16, 16
    x, B, C = (torch.randn(*s, generator=g, dtype=F64) for s in ((b, l, h, p), (b, l, 1, n), (b, l, 1, n)))
    dt = (0.3 * torch.randn(b, l, h, generator=g, dtype=F64)).abs() + 0.05
    A = -torch.rand(h, generator=g, dtype=F64) * 1.5 - 0.1
    exact = ssd_sequential(x, dt, A, B, C, chunk)
    err = relative_error(ssd_sequential(x, dt, A, B, C, chunk, carry_offset=2), exact)
    worst_bound = max(tolerance(dtype, device) for dtype in (torch.float32, torch.float16, torch.bfloat16)
                      for device in ("cpu", "cuda"))
    assert err > MARGIN * worst_bound, err


def test_float32_phase_exceeds_the_s4d_phase_bound():
    """Bug: the CUDA kernel computes the phase l·Im(dtA) in float32 (e.g. ``sincosf(l * im)``) instead of
    float64. Same inputs as test_kernel_inv_large_phase_float32 (S4D-Inv, N = 64, L = 1024, dt = 0.1,
    slowly decaying modes)."""
    g = torch.Generator().manual_seed(3)
    log_dt, A_re, A_im, C = s4d_init(2, 64, "inv", generator=g, dtype=F64)
    A_re = A_re - 0.3 * torch.rand(A_re.shape, generator=g, dtype=F64)
    params = [t.to(torch.complex64 if t.is_complex() else torch.float32)
              for t in (torch.full((2,), math.log(0.1), dtype=F64), A_re, A_im, C)]
    params[1] = params[1] * 0.1
    params = [t.to(torch.complex128 if t.is_complex() else F64) for t in params]
    L = 1024
    exact = s4d_kernel_naive(*params, L)
    dtA, C_prime = s4d_discretize(*params)
    l = torch.arange(L, dtype=F64)
    phase32 = (dtA.imag[..., None] * l).float().double()
    buggy = 2 * torch.einsum("hn,hnl->hl", C_prime, torch.exp(dtA.real[..., None] * l) * torch.exp(1j * phase32)).real
    err = relative_error(buggy, exact)
    assert err > MARGIN * S4D_PHASE_BOUND, err
    assert S4D_PHASE_BOUND < tolerance(torch.float32, "cuda", op="s4d")  # why the phase needs its own bound


def test_float32_accumulation_exceeds_the_float64_bound():
    """Bug: a float64 path that accumulates in float32 (a kernel's COMPUTE dtype left at fp32)."""
    h = torch.randn(7, 300, generator=torch.Generator().manual_seed(5), dtype=F64)
    err = relative_error(layer_norm_rows(h.float()).double(), layer_norm_rows(h))
    assert err > MARGIN * tolerance(F64, "cpu") and err > MARGIN * tolerance(F64, "cuda"), err
