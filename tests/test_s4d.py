"""S4D reference and public ops (reference backend): kernel, convolution, recurrence, validation."""
import pytest
import torch

from lambdaskip.ops.s4d import s4d_conv, s4d_kernel
from lambdaskip.reference.s4d import (s4d_conv_direct, s4d_conv_fft, s4d_init, s4d_kernel_naive,
                                      s4d_recurrence)
from lambdaskip.reference.s4d import s4d_kernel as s4d_kernel_chunked
from lambdaskip.testing import assert_close

from s4d_helpers import conv_loop, make_params

SEEDS = (0, 1, 2)


def test_init_shapes_and_values():
    log_dt, A_re, A_im, C = s4d_init(5, 8, "lin", dt_min=1e-2, dt_max=2e-2, generator=torch.Generator().manual_seed(0))
    assert log_dt.shape == (5,) and A_re.shape == A_im.shape == C.shape == (5, 4)
    assert C.dtype == torch.complex64 and log_dt.dtype == torch.float32
    assert (A_re == -0.5).all()
    assert torch.allclose(A_im[0], torch.pi * torch.arange(4.0))
    assert ((log_dt.exp() >= 1e-2 - 1e-7) & (log_dt.exp() <= 2e-2 + 1e-7)).all()
    _, _, A_im_inv, _ = s4d_init(2, 8, "inv", dtype=torch.float64)
    n = torch.arange(4, dtype=torch.float64)
    assert torch.allclose(A_im_inv[1], 8 / torch.pi * (8 / (2 * n + 1) - 1))


def test_init_is_seeded():
    a = s4d_init(4, 8, generator=torch.Generator().manual_seed(3))
    b = s4d_init(4, 8, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("init,H,N,L", [("inv", 3, 64, 77), ("lin", 5, 22, 130), ("inv", 1, 2, 9)])
def test_chunked_kernel_matches_naive(seed, init, H, N, L):
    params = make_params(H, N, init, seed)
    assert_close(s4d_kernel_chunked(*params, L), s4d_kernel_naive(*params, L), what="K")


def test_kernel_is_impulse_response_of_recurrence():
    params = make_params(3, 16, "lin", seed=4)
    L = 40
    impulse = torch.zeros(1, 3, L, dtype=torch.float64)
    impulse[..., 0] = 1.0
    assert_close(s4d_recurrence(impulse, *params)[0], s4d_kernel_naive(*params, L), what="impulse response")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("B,H,L", [(2, 3, 37), (1, 4, 64), (3, 2, 1)])
def test_conv_fft_direct_loop_recurrence_agree(seed, B, H, L):
    g = torch.Generator().manual_seed(seed)
    params = make_params(H, 10, "inv", seed, dt_max=1e-1)
    u = torch.randn(B, H, L, generator=g, dtype=torch.float64)
    D = torch.randn(H, generator=g, dtype=torch.float64)
    K = s4d_kernel_naive(*params, L)
    expected = conv_loop(u, K, D)
    assert_close(s4d_conv_fft(u, K, D), expected, what="fft")
    assert_close(s4d_conv_direct(u, K, D), expected, what="direct")
    assert_close(s4d_recurrence(u, *params, D), expected, what="recurrence")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("conv", [s4d_conv_fft, s4d_conv_direct])
def test_conv_low_precision(dtype, conv):
    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, 3, 50, generator=g).to(dtype)
    K = (torch.randn(3, 50, generator=g) * torch.exp(-torch.arange(50.0) / 10)).to(dtype)
    D = torch.randn(3, generator=g).to(dtype)
    y = conv(u, K, D)
    assert y.dtype == dtype
    assert_close(y, conv_loop(u, K, D), dtype, what=conv.__name__)


@pytest.mark.parametrize("method", ["direct", "fft", "auto"])
def test_conv_op_matches_loop_and_gradcheck(method):
    g = torch.Generator().manual_seed(6)
    u = torch.randn(2, 3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    K = torch.randn(3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    D = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert_close(s4d_conv(u, K, D, method=method, backend="reference"), conv_loop(u, K, D), what="y")
    torch.autograd.gradcheck(lambda *a: s4d_conv(*a, method=method, backend="reference"), (u, K, D))


def test_kernel_op_gradcheck():
    log_dt, A_re, A_im, C = (t.requires_grad_() for t in make_params(2, 6, "inv", seed=7))
    torch.autograd.gradcheck(lambda *a: s4d_kernel(*a, 13, backend="reference"), (log_dt, A_re, A_im, C))


def test_kernel_op_float32_close_to_float64():
    params64 = make_params(4, 16, "lin", seed=8)
    params32 = [p.to(torch.complex64 if p.is_complex() else torch.float32) for p in params64]
    K32 = s4d_kernel(*params32, 100, backend="reference")
    assert K32.dtype == torch.float32
    assert_close(K32, s4d_kernel_naive(*[p.to(torch.complex128 if p.is_complex() else torch.float64)
                                         for p in params32], 100), torch.float32, what="K float32")


# ----------------------------------------------------------------------------------------- validation
def _params():
    return make_params(2, 4, "lin", seed=0, dtype=torch.float32)


@pytest.mark.parametrize("change,exc,name", [
    (lambda p: (p[0].double(), *p[1:]), TypeError, "^log_dt must match"),
    (lambda p: (p[0], p[1].double(), p[2], p[3]), TypeError, "^A_re must match"),
    (lambda p: (p[0].long(), *p[1:]), TypeError, "log_dt"),
    (lambda p: (p[0], torch.complex(p[1], p[2]), p[2], p[3]), TypeError, "A_re"),
    (lambda p: (p[0], p[1], p[2], p[3].real), TypeError, "C"),
    (lambda p: (p[0], p[1], p[2], p[3].to(torch.complex128)), TypeError, "C"),
    (lambda p: (p[0], p[1], p[2].half(), p[3]), TypeError, "A_im"),
    (lambda p: (p[0][:1], *p[1:]), ValueError, "^log_dt must have shape"),
    (lambda p: (p[0], p[1][:, :1], p[2], p[3]), ValueError, "^A_re must have the shape"),
    (lambda p: (p[0], p[1][:1], p[2], p[3]), ValueError, "^A_re must have the shape"),
    (lambda p: (p[0], p[1].abs(), p[2], p[3]), ValueError, r"^A_re must be <= 0"),
    (lambda p: (p[0][:0], p[1][:0], p[2][:0], p[3][:0]), ValueError, "H > 0"),
    (lambda p: (p[0], p[1], p[2][:, :1], p[3]), ValueError, "^A_im must have the shape"),
    (lambda p: (p[0], p[1], p[2], p[3][:, :1]), ValueError, "^C must have the shape"),
    (lambda p: (p[0][None], *p[1:]), ValueError, "log_dt"),
    (lambda p: (p[0], p[1], p[2], p[3].to("meta")), ValueError, "device"),
    (lambda p: (p[0], p[1], p[2], [1, 2]), TypeError, "C"),
])
def test_kernel_validation(change, exc, name):
    with pytest.raises(exc, match=name):
        s4d_kernel(*change(_params()), 8)


@pytest.mark.parametrize("L,exc", [(-3, ValueError), (2.0, TypeError), (True, TypeError)])
def test_kernel_validation_length(L, exc):
    with pytest.raises(exc, match="L"):
        s4d_kernel(*_params(), L)


def test_kernel_validation_backend():
    with pytest.raises(ValueError, match="backend"):
        s4d_kernel(*_params(), 8, backend="cuda")


@pytest.mark.parametrize("args,kwargs,exc,name", [
    ((torch.randn(2, 3, 5), torch.randn(3, 4)), {}, ValueError, "K"),
    ((torch.randn(2, 3, 5), torch.randn(2, 5)), {}, ValueError, "K"),
    ((torch.randn(3, 5), torch.randn(3, 5)), {}, ValueError, "u"),
    ((torch.randn(2, 0, 5), torch.randn(0, 5)), {}, ValueError, "u must have H > 0"),
    ((torch.randn(2, 3, 5).long(), torch.randn(3, 5)), {}, TypeError, "u"),
    ((torch.randn(2, 3, 5), torch.randn(3, 5, dtype=torch.complex64)), {}, TypeError, "K"),
    ((torch.randn(2, 3, 5), torch.randn(3, 5), torch.randn(4)), {}, ValueError, "D"),
    ((torch.randn(2, 3, 5), torch.randn(3, 5), torch.randn(3).int()), {}, TypeError, "D"),
    ((torch.randn(2, 3, 5), torch.randn(3, 5, device="meta")), {}, ValueError, "device"),
    ((torch.randn(2, 3, 5), torch.randn(3, 5)), {"method": "fast"}, ValueError, "method"),
    ((torch.randn(2, 3, 5), torch.randn(3, 5)), {"backend": "triton"}, ValueError, "backend"),
])
def test_conv_validation(args, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        s4d_conv(*args, **kwargs)
