"""The empty-tensor policy of :mod:`lambdaskip.ops`: a zero-size batch or sequence dim gives an empty
result of the right shape and dtype that backpropagates (zero gradients for the parameters); a
zero-size feature dim is refused with a ValueError naming the argument. On every backend that runs here."""
import os

import pytest
import torch

from lambdaskip.ops import attention, lambda_norm, s4d_conv, s4d_kernel
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
