"""lambda_norm: the reference against PyTorch's own norms, the op's validation, and the Triton kernels
against the float64 reference (outputs, pre-norm sum, μ and every gradient)."""
import pytest
import torch
import torch.nn.functional as F

from lambdaskip.ops.lambda_norm import lambda_norm
from lambdaskip.reference.lambda_norm import lambda_norm as reference_lambda_norm
from lambdaskip.testing import assert_close


def make_inputs(shape, dtype=torch.float32, seed=0, affine=True, bias=True, lam_tensor=False,
                residual_dtype=None):
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    residual = torch.randn(shape, generator=g, dtype=torch.float64).to(residual_dtype or dtype)
    weight = (1 + 0.5 * torch.randn(d, generator=g, dtype=torch.float64)).to(dtype) if affine else None
    b = (0.5 * torch.randn(d, generator=g, dtype=torch.float64)).to(dtype) if affine and bias else None
    lam = torch.tensor(0.7, dtype=dtype) if lam_tensor else 0.7
    return x, residual, lam, weight, b


# ---------------------------------------------------------------- reference

@pytest.mark.parametrize("lam", [-2.0, 0.0, 0.5, 3.0])
@pytest.mark.parametrize("affine", [False, True])
def test_reference_layernorm_matches_torch(lam, affine):
    x, res, _, w, b = make_inputs((2, 7, 60), torch.float64, seed=1, affine=affine)
    out = reference_lambda_norm(x, res, lam, w, b, 1e-5)
    expected = F.layer_norm(x + lam * res, (60,), w, b, 1e-5)
    assert_close(out, expected, what="layernorm")


@pytest.mark.parametrize("lam", [-1.0, 1.0])
def test_reference_rmsnorm_and_l2_match_hand_formulas(lam):
    x, res, _, w, _ = make_inputs((3, 5, 100), torch.float64, seed=2)
    h = x + lam * res
    rms = reference_lambda_norm(x, res, lam, w, None, 1e-6, norm="rmsnorm")
    assert_close(rms, h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w, what="rmsnorm")
    l2 = reference_lambda_norm(x, res, lam, None, None, 1e-12, norm="l2")
    assert_close(l2, h / torch.linalg.vector_norm(h, dim=-1, keepdim=True), what="l2")


def test_reference_prenorm_mu_and_dtypes():
    x, res, _, w, b = make_inputs((2, 3, 7, 60), torch.float16, seed=3)
    out, h, mu = reference_lambda_norm(x, res, -1.5, w, b, prenorm=True, residual_in_fp32=True, return_mu=True)
    assert out.dtype == torch.float16 and h.dtype == torch.float32 and mu.dtype == torch.float32
    assert mu.shape == (2, 3)
    assert_close(h, x.float() - 1.5 * res.float(), what="h")
    y = F.layer_norm(x.double() - 1.5 * res.double(), (60,), w.double(), b.double())
    direct = torch.stack([torch.linalg.matrix_norm(yb - yb.mean(0)) for yb in y.reshape(6, 7, 60)]).reshape(2, 3)
    assert_close(mu, direct, torch.float16, what="mu")
    _, h16 = reference_lambda_norm(x, res, -1.5, prenorm=True)
    assert h16.dtype == torch.float16
    mu2d = reference_lambda_norm(x[0, 0], res[0, 0], 1.0, return_mu=True)[1]
    assert mu2d.shape == ()


def test_reference_gradcheck_float64():
    x, res, _, w, b = make_inputs((2, 3, 10), torch.float64, seed=4)
    lam = torch.tensor(-0.8, dtype=torch.float64)
    for t in (x, res, lam, w, b):
        t.requires_grad_(True)
    for norm, bias in (("layernorm", b), ("rmsnorm", None), ("l2", None)):
        def f(x, res, lam, w, b=bias, norm=norm):
            out, h = reference_lambda_norm(x, res, lam, w, b, norm=norm, prenorm=True)
            return out, h
        torch.autograd.gradcheck(f, (x, res, lam, w))


# ---------------------------------------------------------------- validation

def test_validation_names_the_argument():
    x, res, lam, w, b = make_inputs((2, 5, 12))
    cases = [
        (dict(residual=res[:, :4]), ValueError, "residual"),
        (dict(weight=w[:5]), ValueError, "weight"),
        (dict(bias=b[:5]), ValueError, "bias"),
        (dict(x=x.to(torch.int32)), TypeError, "x"),
        (dict(residual=res.to(torch.int64)), TypeError, "residual"),
        (dict(x=x.to("meta")), ValueError, "device"),
        (dict(eps=float("nan")), ValueError, "eps"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=-1e-5), ValueError, "eps"),
        (dict(norm="batchnorm"), ValueError, "norm"),
        (dict(lam=torch.ones(2)), ValueError, "lam"),
        (dict(lam=torch.tensor(1)), TypeError, "lam"),
        (dict(lam=float("inf")), ValueError, "lam"),
        (dict(lam="1"), TypeError, "lam"),
        (dict(norm="rmsnorm"), ValueError, "bias"),
        (dict(x=x[0, 0], residual=res[0, 0], return_mu=True), ValueError, "return_mu"),
        (dict(prenorm=1), TypeError, "prenorm"),
        (dict(backend="cuda"), ValueError, "backend"),
    ]
    for change, error, name in cases:
        kwargs = dict(x=x, residual=res, lam=lam, weight=w, bias=b)
        kwargs.update(change)
        with pytest.raises(error, match=name):
            lambda_norm(**kwargs)


def test_op_reference_backend_matches_reference():
    x, res, lam, w, b = make_inputs((3, 5, 60), seed=5)
    got = lambda_norm(x, res, torch.tensor([lam]), w, b, prenorm=True, return_mu=True, backend="reference")
    want = reference_lambda_norm(x, res, lam, w, b, prenorm=True, return_mu=True)
    for g, e in zip(got, want):
        assert_close(g, e)
