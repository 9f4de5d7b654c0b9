"""The empty-tensor policy of :mod:`lambdaskip.ops`: a zero-size batch or sequence dim gives an empty
result of the right shape and dtype that backpropagates (zero gradients for the parameters); a
zero-size feature dim is refused with a ValueError naming the argument. On every backend that runs here
(Triton under the interpreter on CPU)."""
import os

import pytest
import torch

from lambdaskip.ops import attention, lambda_norm, s4d_conv, s4d_kernel, ssd_scan, ssd_step
from lambdaskip.reference.s4d import s4d_init

needs_extension = pytest.mark.skipif(os.environ.get("LAMBDASKIP_DISABLE_EXTENSION") == "1",
                                     reason="LAMBDASKIP_DISABLE_EXTENSION=1")
S4D_BACKENDS = ["reference", pytest.param("extension", marks=needs_extension)]


def leaves(*shapes, dtype=torch.float32):
    return [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]


def backprop(out, inputs):
    """Gradients of ``out.sum()``; each has its input's shape and is zero (nothing was summed)."""
    grads = torch.autograd.grad(out.sum(), inputs)
    for t, g in zip(inputs, grads):
        assert g.shape == t.shape and g.dtype == t.dtype and not g.any()


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(0, 2, 5, 4), (2, 0, 5, 4), (2, 3, 0, 4)])
def test_attention_empty_batch_heads_or_seqlen(shape, causal, backend):
    q, k, v = leaves(shape, shape, shape[:3] + (6,), dtype=torch.float16)
    out = attention(q, k, v, causal, backend=backend)
    assert out.shape == shape[:3] + (6,) and out.dtype == torch.float16
    backprop(out, (q, k, v))


@pytest.mark.parametrize("q_shape,k_shape,v_shape,name", [
    ((2, 3, 5, 0), (2, 3, 5, 0), (2, 3, 5, 4), "q must have headdim > 0"),
    ((2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 0), "v must have headdim > 0"),
    ((2, 3, 5, 4), (2, 3, 0, 4), (2, 3, 0, 4), "k must have seqlen > 0"),
])
def test_attention_refuses_empty_features_or_no_keys(q_shape, k_shape, v_shape, name):
    with pytest.raises(ValueError, match=name):
        attention(torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape))


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("shape", [(0, 5, 7), (3, 0, 7), (0, 7)])
def test_lambda_norm_empty_leading_dims(shape, backend):
    x, res = leaves(shape, shape)
    w, b, lam = leaves((7,), (7,), ())
    out, h, mu = lambda_norm(x, res, lam, w, b, prenorm=True, return_mu=True, backend=backend)
    assert out.shape == h.shape == shape and mu.shape == shape[:-2] and out.dtype == torch.float32
    assert not mu.any()   # μ of zero tokens is 0
    backprop(out + h, (x, res, lam, w, b))


def test_lambda_norm_refuses_d_0():
    with pytest.raises(ValueError, match="x must have d > 0"):
        lambda_norm(torch.randn(3, 0), torch.randn(3, 0), 1.0)


@pytest.mark.parametrize("backend", S4D_BACKENDS)
def test_s4d_kernel_length_0(backend):
    params = [p.requires_grad_(True) for p in s4d_init(3, 6, generator=torch.Generator().manual_seed(0))]
    K = s4d_kernel(*params, 0, backend=backend)
    assert K.shape == (3, 0) and K.dtype == torch.float32
    backprop(K, params)


@pytest.mark.parametrize("backend", S4D_BACKENDS)
@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("B,L", [(0, 5), (2, 0), (0, 0)])
def test_s4d_conv_empty_batch_or_length(B, L, method, backend):
    u, K, D = leaves((B, 3, L), (3, L), (3,), dtype=torch.float64)
    y = s4d_conv(u, K, D, method=method, backend=backend)
    assert y.shape == (B, 3, L) and y.dtype == torch.float64
    backprop(y, (u, K, D))


def test_s4d_refuses_zero_channels_or_modes():
    log_dt, A_re, A_im, C = s4d_init(2, 4)
    with pytest.raises(ValueError, match="N/2 > 0 modes"):
        s4d_kernel(log_dt, A_re[:, :0], A_im[:, :0], C[:, :0], 8)
    with pytest.raises(ValueError, match="H > 0 channels"):
        s4d_kernel(log_dt[:0], A_re[:0], A_im[:0], C[:0], 8)
    with pytest.raises(ValueError, match="u must have H > 0 channels"):
        s4d_conv(torch.randn(2, 0, 5), torch.randn(0, 5))


@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("b,l", [(0, 9), (2, 0), (0, 0)])
def test_ssd_scan_empty_batch_or_seqlen(b, l, dtype, backend):
    if dtype == torch.float64 and backend == "triton":
        pytest.skip("Triton takes 16/32-bit input")
    h, p, g, n = 4, 3, 2, 5
    x, dt, B, C, z, D, dt_bias, h0 = leaves((b, l, h, p), (b, l, h), (b, l, g, n), (b, l, g, n), (b, l, h, p),
                                            (h,), (h,), (b, h, p, n), dtype=dtype)
    A = (-torch.rand(h, dtype=dtype) - 0.1).requires_grad_(True)
    y, final = ssd_scan(x, dt, A, B, C, 16, D=D, z=z, dt_bias=dt_bias, initial_states=h0, dt_softplus=True,
                        return_final_states=True, backend=backend)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert y.shape == (b, l, h, p) and y.dtype == dtype
    assert final.shape == (b, h, p, n) and final.dtype == state_dtype
    assert torch.equal(final, h0.detach().to(state_dtype))  # no token: the state is still the initial one
    backprop(y, (x, dt, A, B, C, D, z, dt_bias, h0))
    seq_idx = torch.zeros(b, l, dtype=torch.int32)  # packed rows: nothing to check in an empty one
    y, final = ssd_scan(x, dt, A, B, C, 16, initial_states=h0, seq_idx=seq_idx, return_final_states=True,
                        backend=backend)
    assert y.shape == (b, l, h, p) and torch.equal(final, h0.detach().to(state_dtype))
    y, final = ssd_scan(x, dt, A, B, C, 16, return_final_states=True, backend=backend)
    assert y.shape == (b, l, h, p) and torch.equal(final, torch.zeros(b, h, p, n, dtype=state_dtype))
    assert ssd_scan(x, dt, A, B, C, 16, backend=backend).shape == (b, l, h, p)


@pytest.mark.parametrize("x_shape,B_shape,name", [
    ((2, 9, 0, 3), (2, 9, 1, 5), "x must have nheads > 0 and headdim > 0"),
    ((2, 9, 4, 0), (2, 9, 1, 5), "x must have nheads > 0 and headdim > 0"),
    ((2, 9, 4, 3), (2, 9, 1, 0), "B must have ngroups >= 1 and dstate >= 1"),
    ((0, 9, 4, 3), (0, 9, 0, 5), "B must have ngroups >= 1 and dstate >= 1"),
])
def test_ssd_scan_refuses_empty_features(x_shape, B_shape, name):
    b, l, h, _ = x_shape
    with pytest.raises(ValueError, match=name):
        ssd_scan(torch.randn(x_shape), torch.rand(b, l, h), -torch.rand(h) - 0.1, torch.randn(B_shape),
                 torch.randn(B_shape), 16)


@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
def test_ssd_step_empty_batch(backend):
    h, p, g, n = 4, 3, 2, 5
    state = torch.zeros(0, h, p, n)
    y = ssd_step(state, torch.randn(0, h, p), torch.rand(0, h), -torch.rand(h) - 0.1, torch.randn(0, g, n),
                 torch.randn(0, g, n), D=torch.randn(h), z=torch.randn(0, h, p), dt_bias=torch.randn(h),
                 dt_softplus=True, backend=backend)
    assert y.shape == (0, h, p) and y.dtype == torch.float32 and state.shape == (0, h, p, n)


@pytest.mark.parametrize("state_shape", [(2, 0, 3, 5), (2, 4, 0, 5), (2, 4, 3, 0)])
def test_ssd_step_refuses_empty_features(state_shape):
    b, h, p, n = state_shape
    with pytest.raises(ValueError, match="state must have nheads, headdim and dstate > 0"):
        ssd_step(torch.zeros(state_shape), torch.randn(b, h, p), torch.rand(b, h), -torch.rand(h) - 0.1,
                 torch.randn(b, 1, n), torch.randn(b, 1, n))
