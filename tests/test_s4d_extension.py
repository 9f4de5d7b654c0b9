"""The S4D C++/CUDA extension (csrc/): build, kernels against the references, gradients, custom-op checks.

The first test builds the extension just in time when no prebuilt copy exists (about a minute on two
cores). Set LAMBDASKIP_DISABLE_EXTENSION=1 to skip this file on a machine without a compiler.
"""
import math
import os
import time
import warnings

import pytest
import torch

from lambdaskip import _extension
from lambdaskip.ops import s4d as s4d_ops
from lambdaskip.ops.s4d import s4d_conv, s4d_kernel
from lambdaskip.reference.s4d import s4d_conv_direct, s4d_discretize, s4d_kernel_naive, s4d_recurrence
from lambdaskip.testing import S4D_PHASE_BOUND, assert_close, count_custom_ops, relative_error

from s4d_helpers import conv_loop, make_params

pytestmark = pytest.mark.skipif(os.environ.get("LAMBDASKIP_DISABLE_EXTENSION") == "1",
                                reason="LAMBDASKIP_DISABLE_EXTENSION=1")

BUILD_SECONDS_MAX = 300  # generous: the build takes ~1 min on 2 shared cores; a cached load is instant


def as64(tensors):
    return [t.detach().to(torch.complex128 if t.is_complex() else torch.float64) for t in tensors]


def test_extension_builds_in_reasonable_time():
    start = time.perf_counter()
    assert _extension.load(), _extension.extension_status()
    elapsed = time.perf_counter() - start
    assert elapsed < BUILD_SECONDS_MAX, f"building/loading the extension took {elapsed:.0f} s"
    assert "loaded" in _extension.extension_status()
    assert _extension.can_run(torch.device("cpu"))


@pytest.mark.parametrize("seed", (0, 1, 2))
@pytest.mark.parametrize("H,N,L", [(3, 10, 77), (2, 64, 300), (1, 2, 1), (5, 6, 129)])
def test_kernel_matches_naive_float64(seed, H, N, L):
    params = make_params(H, N, "inv" if seed % 2 else "lin", seed)
    assert_close(s4d_kernel(*params, L, backend="extension"), s4d_kernel_naive(*params, L), what="K")


@pytest.mark.parametrize("seed", (0, 1))
def test_kernel_float32_matches_float64_reference(seed):
    params = make_params(4, 20, "lin", seed, dtype=torch.float32)
    K = s4d_kernel(*params, 200, backend="extension")
    assert K.dtype == torch.float32
    assert_close(K, s4d_kernel_naive(*as64(params), 200), torch.float32, what="K float32")


def large_phase_params(device="cpu"):
    """S4D-Inv, N = 64, L = 1024, dt = 0.1: the phase l·Im(dtA) reaches ~1.3e5 rad. Re A is scaled to
    −0.05…−0.08 (slowly decaying modes, as training tends to make them), so the phase over a mode's decay
    length, |Im A / Re A|, is large and a float32 phase shows in K."""
    params = make_params(2, 64, "inv", seed=3, dtype=torch.float32, log_dt=math.log(0.1), device=device)
    params[1] = params[1] * 0.1
    return params, 1024


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_kernel_inv_large_phase_float32(device):
    params, L = large_phase_params(device)
    max_phase = (params[0].double().exp()[:, None] * params[2].double()).abs().max().item() * (L - 1)
    assert max_phase > 1e5
    expected = s4d_kernel_naive(*as64(params), L)
    with count_custom_ops() as calls:
        K = s4d_kernel(*params, L, backend="extension")
    assert calls["s4d_vandermonde"] == 1
    assert_close(K, expected, torch.float32, what="K (S4D-Inv phase)", op="s4d")
    # The extension keeps the phase in float64: its error (1.4e-7 on CPU) is float32 rounding of C' and K; a
    # phase rounded to float32 gives 5.2e-6 here (tests/test_tolerances.py).
    assert relative_error(K, expected) < S4D_PHASE_BOUND


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_gradients_match_reference(dtype):
    params = [p.requires_grad_() for p in make_params(3, 12, "inv", seed=5, dtype=dtype)]
    L = 150
    grad_K = torch.randn(3, L, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = torch.autograd.grad(s4d_kernel(*params, L, backend="extension"), params, grad_K.to(dtype))
    params64 = [p.requires_grad_() for p in as64(params)]
    expected = torch.autograd.grad(s4d_kernel_naive(*params64, L), params64, grad_K)
    for name, g, e in zip(("log_dt", "A_re", "A_im", "C"), grads, expected):
        assert_close(torch.view_as_real(g) if g.is_complex() else g,
                     torch.view_as_real(e) if e.is_complex() else e, dtype, what=f"grad {name}")


def test_kernel_gradcheck():
    params = [p.requires_grad_() for p in make_params(2, 6, "inv", seed=6)]
    torch.autograd.gradcheck(lambda *a: s4d_kernel(*a, 70, backend="extension"), params)


@pytest.mark.parametrize("seed", (0, 1))
@pytest.mark.parametrize("B,H,L", [(2, 3, 37), (1, 2, 130), (3, 1, 1)])
def test_conv_direct_matches_fft_and_loop(seed, B, H, L):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, L, generator=g, dtype=torch.float64)
    K = torch.randn(H, L, generator=g, dtype=torch.float64) * torch.exp(-torch.arange(L) / 20.0)
    D = torch.randn(H, generator=g, dtype=torch.float64)
    expected = conv_loop(u, K) + D[:, None] * u
    assert_close(s4d_conv(u, K, D, method="direct", backend="extension"), expected, what="direct ext")
    assert_close(s4d_conv(u, K, D, method="fft", backend="extension"), expected, what="fft")
    for dtype in (torch.float32, torch.float16):
        y = s4d_conv(u.to(dtype), K.float(), D.float(), method="direct", backend="extension")
        assert y.dtype == dtype
        assert_close(y, conv_loop(u.to(dtype), K.float()) + D.float()[:, None] * u.to(dtype), dtype,
                     what=f"direct ext {dtype}")


def test_conv_gradients_match_reference():
    g = torch.Generator().manual_seed(7)
    inputs = [torch.randn(*s, generator=g, dtype=torch.float32, requires_grad=True) for s in ((2, 3, 45), (3, 45), (3,))]
    grad_y = torch.randn(2, 3, 45, generator=g)
    grads = torch.autograd.grad(s4d_conv(*inputs, method="direct", backend="extension"), inputs, grad_y)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    expected = torch.autograd.grad(s4d_conv_direct(*inputs64), inputs64, grad_y.double())
    for name, a, e in zip(("u", "K", "D"), grads, expected):
        assert_close(a, e, torch.float32, what=f"grad {name}")


def test_conv_gradcheck():
    g = torch.Generator().manual_seed(8)
    inputs = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((2, 3, 9), (3, 9), (3,))]
    torch.autograd.gradcheck(lambda *a: s4d_conv(*a, method="direct", backend="extension"), inputs)


def test_impulse_response_of_recurrence():
    params = make_params(3, 16, "inv", seed=9)
    L = 60
    impulse = torch.zeros(1, 3, L, dtype=torch.float64)
    impulse[..., 0] = 1.0
    K = s4d_kernel(*params, L, backend="extension")
    assert_close(s4d_conv(impulse, K, method="direct", backend="extension"), s4d_recurrence(impulse, *params),
                 what="impulse response")


def test_auto_picks_extension_on_cpu(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("backend='auto' used the reference")

    monkeypatch.setattr(s4d_ops.reference, "s4d_kernel", refuse)
    monkeypatch.setattr(s4d_ops.reference, "s4d_conv_direct", refuse)
    params = make_params(2, 4, seed=0)
    K = s4d_kernel(*params, 20)
    s4d_conv(torch.randn(1, 2, 20, dtype=torch.float64), K, method="auto")


def _opcheck_inputs(seed=10):
    log_dt, A_re, A_im, C = make_params(2, 8, "inv", seed)
    _, C_prime = s4d_discretize(log_dt, A_re, A_im, C)
    C_prime = torch.view_as_real(C_prime).contiguous()
    g = torch.Generator().manual_seed(seed)
    u, K = torch.randn(2, 2, 33, generator=g, dtype=torch.float64), torch.randn(2, 33, generator=g, dtype=torch.float64)
    return (log_dt, A_re, A_im, C_prime), u, K


def test_opcheck():
    (log_dt, A_re, A_im, C_prime), u, K = _opcheck_inputs()
    grad = lambda t: t.clone().requires_grad_()  # noqa: E731
    torch.library.opcheck(s4d_ops._vandermonde, (grad(log_dt), grad(A_re), grad(A_im), grad(C_prime), 40))
    torch.library.opcheck(s4d_ops._vandermonde_backward, (torch.randn(2, 40, dtype=torch.float64), log_dt, A_re,
                                                          A_im, C_prime))
    torch.library.opcheck(s4d_ops._causal_conv, (grad(u), grad(K)))
    torch.library.opcheck(s4d_ops._causal_conv_backward, (torch.randn_like(u), u, K))


def test_torch_compile_fullgraph():
    params = [p.requires_grad_() for p in make_params(2, 8, "inv", seed=11, dtype=torch.float32)]
    u = torch.randn(2, 2, 50, generator=torch.Generator().manual_seed(11))

    def layer(u, log_dt, A_re, A_im, C):
        K = s4d_kernel(log_dt, A_re, A_im, C, u.shape[-1], backend="extension")
        return s4d_conv(u, K, method="direct", backend="extension")

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(u, *params)
    assert_close(y, layer(u, *params), torch.float32, what="compiled y")
    grads = torch.autograd.grad(y.square().sum(), params)
    expected = torch.autograd.grad(layer(u, *params).square().sum(), params)
    for g, e in zip(grads, expected):
        assert_close(torch.view_as_real(g) if g.is_complex() else g,
                     torch.view_as_real(e) if e.is_complex() else e, torch.float32, what="compiled grad")


def test_cpp_checks_raise():
    with pytest.raises(RuntimeError, match="K must be"):
        torch.ops.lambdaskip_ext.causal_conv(torch.randn(1, 2, 5), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="C_prime"):
        torch.ops.lambdaskip_ext.vandermonde(torch.randn(2), torch.randn(2, 3), torch.randn(2, 3),
                                             torch.randn(2, 3), 5)


def test_fallback_warns_once_and_forced_backend_raises(monkeypatch):
    monkeypatch.setattr(_extension, "_state", {"loaded": False, "tried": False, "how": "not loaded yet"})
    monkeypatch.setenv("LAMBDASKIP_DISABLE_EXTENSION", "1")
    params = make_params(2, 4, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        K = s4d_kernel(*params, 10)
        s4d_conv(torch.randn(1, 2, 10, dtype=torch.float64), K, method="direct")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "LAMBDASKIP_DISABLE_EXTENSION" in messages[0]
    assert_close(K, s4d_kernel_naive(*params, 10), what="K (fallback)")
    with pytest.raises(RuntimeError, match="extension"):
        s4d_kernel(*params, 10, backend="extension")
    assert "disabled" in _extension.extension_status()


def test_missing_compiler_is_named(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-lambdaskip")
    assert "no C++ compiler" in _extension._missing_for_jit()


def real(t):
    return torch.view_as_real(t) if t.is_complex() else t


@pytest.mark.gpu
def test_cuda_matches_float64_reference_at_realistic_sizes():
    """The CUDA kernels against the float64 reference (computed on the GPU), not against the CPU extension."""
    assert _extension.can_run(torch.device("cuda")), _extension.extension_status()
    H, N, L = 256, 64, 4096
    params = [p.requires_grad_() for p in make_params(H, N, "inv", seed=12, dtype=torch.float32, device="cuda")]
    params64 = [p.requires_grad_() for p in as64(params)]
    grad_K = torch.randn(H, L, generator=torch.Generator().manual_seed(12), dtype=torch.float64).cuda()
    with count_custom_ops() as calls:
        K = s4d_kernel(*params, L, backend="extension")
        grads = torch.autograd.grad(K, params, grad_K.float())
    K64 = s4d_kernel_naive(*params64, L)
    assert_close(K, K64, torch.float32, what="K", op="s4d")
    for name, got, want in zip(("log_dt", "A_re", "A_im", "C"), grads, torch.autograd.grad(K64, params64, grad_K)):
        assert_close(real(got), real(want), torch.float32, what=f"K grad {name}", op="s4d")
    g = torch.Generator().manual_seed(12)
    u = torch.randn(4, 64, 1024, generator=g).cuda().requires_grad_()
    K_conv = (torch.randn(64, 1024, generator=g) * torch.exp(-torch.arange(1024) / 200.0)).cuda().requires_grad_()
    grad_y = torch.randn(u.shape, generator=g, dtype=torch.float64).cuda()
    with count_custom_ops() as more:
        y = s4d_conv(u, K_conv, method="direct", backend="extension")
        conv_grads = torch.autograd.grad(y, (u, K_conv), grad_y.float())
    assert calls["s4d_vandermonde"] == calls["s4d_vandermonde_backward"] == more["s4d_causal_conv"] == 1
    u64, K_conv64 = (t.detach().double().requires_grad_() for t in (u, K_conv))
    y64 = s4d_conv_direct(u64, K_conv64)
    assert_close(y, y64, torch.float32, what="y", op="s4d")
    for name, got, exp in zip(("u", "K"), conv_grads, torch.autograd.grad(y64, (u64, K_conv64), grad_y)):
        assert_close(got, exp, torch.float32, what=f"conv grad {name}", op="s4d")
