"""lambda_norm: the reference against PyTorch's own norms, the op's validation, and the Triton kernels
against the float64 reference (outputs, pre-norm sum, μ and every gradient).

Kernel tests run on DEVICE (CUDA tensors on a CUDA machine, the interpreter on CPU) and count the custom-op
calls, so a comparison can never silently become reference against reference."""
import pytest
import torch
import torch.nn.functional as F

from lambdaskip.ops.lambda_norm import lambda_norm
from lambdaskip.reference.lambda_norm import lambda_norm as reference_lambda_norm
from lambdaskip.testing import DEVICE, assert_close, count_custom_ops


def make_inputs(shape, dtype=torch.float32, seed=0, affine=True, bias=True, residual_dtype=None, device=DEVICE):
    """Random (x, residual, λ = 0.7, weight, bias) drawn in float64 on the CPU, then cast and moved."""
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)
    residual = torch.randn(shape, generator=g, dtype=torch.float64).to(device, residual_dtype or dtype)
    weight = (1 + 0.5 * torch.randn(d, generator=g, dtype=torch.float64)).to(device, dtype) if affine else None
    b = (0.5 * torch.randn(d, generator=g, dtype=torch.float64)).to(device, dtype) if affine and bias else None
    return x, residual, 0.7, weight, b


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
    x, res, _, w, b = make_inputs((2, 3, 8), torch.float64, seed=4)
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
        (dict(lam=torch.ones(3)), ValueError, "lam"),
        (dict(lam=torch.ones(2, 1)), ValueError, "lam"),
        (dict(x=x[0, 0], residual=res[0, 0], lam=torch.ones(12)), ValueError, "lam"),
        (dict(lam=torch.tensor(float("nan"))), ValueError, "lam must be finite"),
        (dict(lam=torch.tensor([0.5, float("-inf")])), ValueError, "lam must be finite"),
        (dict(lam=float("nan")), ValueError, "lam must be finite"),
        (dict(lam=None), TypeError, "lam"),
        (dict(lam=[0.5, 1.0]), TypeError, "lam"),
        (dict(lam=torch.tensor(1, device=DEVICE)), TypeError, "lam"),
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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_op_reference_backend_matches_hand_formulas(seed):
    """The op's reference path with λ as a (1,) tensor against F.layer_norm and μ from its definition
    (‖Y − 1ȳᵀ‖_F per batch element), all in float64: argument handling and output order."""
    x, res, lam, w, b = make_inputs((3, 5, 61), seed=seed)
    out, h, mu = lambda_norm(x, res, torch.tensor([lam], device=DEVICE), w, b, prenorm=True, return_mu=True, backend="reference")
    h64 = x.double() + lam * res.double()
    out64 = F.layer_norm(h64, (61,), w.double(), b.double(), 1e-5)
    mu64 = torch.stack([torch.linalg.matrix_norm(y - y.mean(0)) for y in out64])
    assert out.shape == h.shape == (3, 5, 61) and mu.shape == (3,)
    assert_close(out, out64, torch.float32, what="out", op="lambda_norm")
    assert_close(h, h64, torch.float32, what="h", op="lambda_norm")
    assert_close(mu, mu64, torch.float32, what="mu", op="lambda_norm")


# ---------------------------------------------------------------- triton kernels vs the float64 reference

def run_with_grads(fn, inputs, out_grad, h_grad):
    """Run ``fn(*inputs) -> (out, [h,] mu)``; return (out, h or None, mu, grads of the inputs requiring grad)."""
    out, *h, mu = fn(*inputs)
    h = h[0] if h else None
    loss = (out.double() * out_grad).sum() + (0 if h is None else (h.double() * h_grad).sum())
    grads = torch.autograd.grad(loss, [t for t in inputs if t is not None and t.requires_grad])
    return out, h, mu, grads


def check_triton_against_reference(shape, dtype, norm, lam_value, prenorm, residual_in_fp32, affine, seed,
                                   residual_dtype=None, device=DEVICE):
    x, res, _, w, b = make_inputs(shape, dtype, seed=seed, affine=affine, bias=norm == "layernorm",
                                  residual_dtype=residual_dtype, device=device)
    lam = torch.tensor(lam_value, device=device)
    inputs = [t.requires_grad_(True) if t is not None else None for t in (x, res, lam, w, b)]
    doubles = [t.detach().double().requires_grad_(True) if t is not None else None for t in inputs]
    g = torch.Generator().manual_seed(seed + 100)
    out_grad = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
    h_grad = torch.randn(shape, generator=g, dtype=torch.float64).to(device)

    def op(backend):
        return lambda *t: lambda_norm(*t, 1e-5, norm=norm, prenorm=prenorm, residual_in_fp32=residual_in_fp32,
                                      return_mu=True, backend=backend)

    with count_custom_ops() as calls:
        out, h, mu, grads = run_with_grads(op("triton"), inputs, out_grad, h_grad)
    assert calls["lambda_norm_fwd"] == 1 and calls["lambda_norm_bwd"] == 1, calls
    ref_out, ref_h, ref_mu, ref_grads = run_with_grads(op("reference"), doubles, out_grad, h_grad)
    assert out.dtype == dtype and out.shape == shape
    assert mu.shape == shape[:-2] and mu.dtype == torch.promote_types(dtype, torch.float32)
    assert_close(out, ref_out, dtype, what="out", op="lambda_norm")
    if prenorm:
        assert h.dtype == (torch.promote_types(dtype, torch.float32) if residual_in_fp32 else dtype)
        assert_close(h, ref_h, h.dtype, what="h", op="lambda_norm")
    assert_close(mu, ref_mu, dtype, what="mu", op="lambda_norm")
    names = [n for n, t in zip(("dx", "dresidual", "dlam", "dweight", "dbias"), inputs) if t is not None]
    dlam_terms = (ref_grads[0] * doubles[1]).abs().sum().item()  # dλ = Σ dx·residual, a cancelling sum
    for name, got, want, t in zip(names, grads, ref_grads, [t for t in inputs if t is not None]):
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert_close(got, want, dtype, what=name, op="lambda_norm", scale=dlam_terms if name == "dlam" else None)


TRITON_CASES = [  # (shape, dtype, norm, λ, prenorm, residual_in_fp32, affine): odd d (never a multiple of the
    # block, so every row has a masked tail), rows not multiples of 4
    ((2, 7, 61), torch.float32, "layernorm", -2.0, True, False, True),
    ((3, 5, 101), torch.float32, "layernorm", 0.5, False, False, False),
    ((14, 299), torch.float16, "layernorm", 1.0, True, True, True),
    ((3, 5, 61), torch.float16, "layernorm", 3.0, False, False, True),
    ((2, 7, 101), torch.float32, "layernorm", -1.0, True, True, True),
    ((2, 7, 61), torch.float32, "rmsnorm", -1.0, True, True, True),
    ((3, 5, 101), torch.float16, "rmsnorm", 3.0, False, False, False),
    ((2, 3, 5, 17), torch.float32, "rmsnorm", 0.0, True, False, True),
    ((3, 5, 299), torch.float32, "rmsnorm", 0.5, False, True, False),
    ((2, 7, 61), torch.float32, "l2", 0.5, False, False, False),
    ((3, 5, 101), torch.float16, "l2", -2.0, True, True, True),
    ((2, 7, 299), torch.float32, "l2", 1.0, True, False, True),
]


@pytest.mark.parametrize("seed", [0, 1, 2])   # each case on three seeds: 10·case + 0, 1, 2
@pytest.mark.parametrize("case", range(len(TRITON_CASES)))
def test_triton_matches_reference(case, seed):
    check_triton_against_reference(*TRITON_CASES[case], seed=10 * case + seed)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_triton_matches_reference_across_seeds_and_mixed_dtypes(seed):
    check_triton_against_reference((2, 5, 61), torch.float16, "layernorm", 0.5, True, True, True, seed,
                                   residual_dtype=torch.float32)


def test_triton_lam_as_number_or_shape_1_and_outputs_without_mu():
    x, res, _, w, b = make_inputs((2, 5, 61), seed=6)
    with count_custom_ops() as calls:
        got = lambda_norm(x, res, -2.0, w, b, backend="triton")
    assert_close(got, reference_lambda_norm(x, res, -2.0, w, b), op="lambda_norm")
    lam = torch.tensor([0.5], requires_grad=True, device=DEVICE)
    with count_custom_ops() as more:
        out = lambda_norm(x, res, lam, w, None, norm="rmsnorm", backend="triton")
    (dlam,) = torch.autograd.grad(out.square().sum(), lam)
    lam64 = lam.detach().double().requires_grad_(True)
    ref = reference_lambda_norm(x.double(), res.double(), lam64, w.double(), norm="rmsnorm")
    (ref_dlam,) = torch.autograd.grad(ref.square().sum(), lam64)
    assert dlam.shape == (1,) and calls["lambda_norm_fwd"] == more["lambda_norm_fwd"] == 1
    assert_close(dlam, ref_dlam, torch.float32, what="dlam", op="lambda_norm")


def test_triton_non_contiguous_and_empty_inputs():
    x, res, _, w, b = make_inputs((2, 5, 50), seed=16)
    x_strided, res_t = x[..., ::2], res.transpose(0, 1).contiguous().transpose(0, 1)[..., :25]
    with count_custom_ops() as calls:
        got = lambda_norm(x_strided, res_t, 0.5, w[:25], b[:25], backend="triton")
    assert calls["lambda_norm_fwd"] == 1
    assert_close(got, reference_lambda_norm(x_strided, res_t, 0.5, w[:25], b[:25]), what="strided", op="lambda_norm")
    empty = torch.empty(0, 5, 50, device=DEVICE)
    out, mu = lambda_norm(empty, empty, 0.5, w, b, return_mu=True, backend="triton")
    assert out.shape == (0, 5, 50) and mu.shape == (0,)


def test_triton_gradient_of_h_alone_and_of_out_alone():
    x, res, _, w, b = make_inputs((2, 5, 24), seed=7)
    x.requires_grad_(True)
    out, h = lambda_norm(x, res, 0.5, w, b, prenorm=True, backend="triton")
    (dx_h,) = torch.autograd.grad(h.sum(), x)
    assert torch.equal(dx_h, torch.ones_like(x))
    out, h = lambda_norm(x, res, 0.5, w, b, prenorm=True, backend="triton")
    (dx_out,) = torch.autograd.grad(out.square().sum(), x)
    x64 = x.detach().double().requires_grad_(True)
    (ref,) = torch.autograd.grad(reference_lambda_norm(x64, res.double(), 0.5, w.double(), b.double()).square().sum(),
                                 x64)
    assert_close(dx_out, ref, torch.float32, what="dx", op="lambda_norm")


def test_mu_is_not_differentiable():
    x, res, _, w, b = make_inputs((2, 5, 24), seed=8)
    x.requires_grad_(True)
    out, mu = lambda_norm(x, res, 0.5, w, b, return_mu=True, backend="triton")
    assert out.requires_grad and not mu.requires_grad


def test_triton_mu_keeps_accuracy_when_tokens_nearly_collapse():
    """Tokens equal up to 1e-3: μ/‖out‖_F ~ 1e-3, where Σ‖y_i‖² − N‖ȳ‖² in fp32 loses most digits."""
    g = torch.Generator().manual_seed(9)
    base = torch.randn(1, 1, 60, generator=g)
    x = (base + 1e-3 * torch.randn(3, 13, 60, generator=g)).to(DEVICE)
    res = (base + 1e-3 * torch.randn(3, 13, 60, generator=g)).to(DEVICE)
    with count_custom_ops() as calls:
        out, mu = lambda_norm(x, res, 1.0, return_mu=True, backend="triton")
    assert calls["lambda_norm_fwd"] == 1
    exact = torch.stack([torch.linalg.matrix_norm(y - y.mean(0)) for y in out.double()])
    assert_close(mu, exact, torch.float32, what="mu near collapse", op="lambda_norm")
    naive = (out.square().sum((1, 2)) - 13 * out.mean(1).square().sum(1)).clamp_min(0).sqrt()
    assert (naive.double() - exact).abs().max() / exact.abs().max() > 10 * 1e-4  # the test can tell


@pytest.mark.parametrize("per_element", [False, True])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "l2"])
def test_looped_kernels_match_reference(norm, per_element):
    """Rows longer than the block limit: force a 16-column block so d = 61 takes four chunks, the last
    partial. Programs of 2 (forward) and 4 (backward) rows straddle the 5-row batch elements of a
    per-element λ."""
    from lambdaskip.kernels.lambda_norm import lambda_norm_backward, lambda_norm_forward
    x, res, _, w, b = make_inputs((3, 5, 61), seed=10, bias=norm == "layernorm")
    lam = torch.tensor([-1.5, 0.5, 2.0], device=DEVICE) if per_element else torch.tensor(-1.5, device=DEVICE)
    x2, res2 = x.reshape(15, 61), res.reshape(15, 61)
    out, h, mean, rstd, mu = lambda_norm_forward(x2, res2, lam, w, b, 1e-5, norm, True, torch.float32, 5,
                                                 max_block_d=16, rows_per_program=2)
    doubles = [t.double().requires_grad_(True) if t is not None else None for t in (x, res, lam, w, b)]
    ref_out, ref_h, ref_mu = reference_lambda_norm(*doubles, 1e-5, norm=norm, prenorm=True, return_mu=True)
    assert_close(out, ref_out.reshape(15, 61), what="out", op="lambda_norm")
    assert_close(h, ref_h.reshape(15, 61), what="h", op="lambda_norm")
    assert_close(mu, ref_mu, what="mu", op="lambda_norm")
    g = torch.Generator().manual_seed(1)
    dout, dh = (torch.randn(15, 61, generator=g).to(DEVICE) for _ in range(2))
    grads = lambda_norm_backward(dout, dh, x2, res2, lam, w, b, mean, rstd, norm, max_block_d=16,
                                 rows_per_program=4)
    wanted = [t for t in doubles if t is not None]
    ref_grads = torch.autograd.grad((ref_out.reshape(15, 61) * dout).sum() + (ref_h.reshape(15, 61) * dh).sum(),
                                    wanted)
    for name, got, want in zip(("dx", "dresidual", "dlam", "dweight", "dbias"), grads, ref_grads):
        assert_close(got, want.reshape(got.shape), torch.float32, what=name, op="lambda_norm")


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "l2"])
def test_triton_gradcheck_float64(norm):
    x, res, _, w, b = make_inputs((2, 3, 12), torch.float64, seed=11, bias=norm == "layernorm")
    lam = torch.tensor(-0.8, dtype=torch.float64, device=DEVICE)
    inputs = [t.requires_grad_(True) for t in (x, res, lam, w, b) if t is not None]

    def f(*t):
        bias = t[4] if len(t) == 5 else None
        return lambda_norm(t[0], t[1], t[2], t[3], bias, norm=norm, prenorm=True, backend="triton")

    torch.autograd.gradcheck(f, inputs, fast_mode=True)


@pytest.mark.gpu
def test_triton_backward_is_deterministic():
    """Many programs writing partial sums: only a GPU runs them concurrently (the interpreter runs them in order)."""
    x, res, _, w, b = make_inputs((8, 1000, 600), seed=12)
    lam = torch.tensor(0.7, requires_grad=True, device=DEVICE)
    inputs = [x.requires_grad_(True), res.requires_grad_(True), lam, w.requires_grad_(True), b.requires_grad_(True)]
    runs = [torch.autograd.grad(lambda_norm(*inputs, backend="triton").square().sum(), inputs) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_opcheck_custom_ops():
    from lambdaskip.ops.lambda_norm import lambda_norm_bwd, lambda_norm_fwd
    x, res, _, w, b = make_inputs((4, 12), seed=13)
    lam = torch.tensor(0.5, device=DEVICE)
    for t in (x, res, lam, w, b):
        t.requires_grad_(True)
    torch.library.opcheck(lambda_norm_fwd, (x, res, lam, w, b, 1e-5, "layernorm", True, False, 2))
    quick = ("test_schema", "test_autograd_registration", "test_faketensor")  # compile is covered above
    torch.library.opcheck(lambda_norm_fwd, (x, res, lam, None, None, 1e-5, "l2", False, True, 0), test_utils=quick)
    out, h, mean, rstd, mu = lambda_norm_fwd(x, res, lam, w, b, 1e-5, "layernorm", True, False, 2)
    args = (torch.randn(4, 12, device=DEVICE), torch.randn(4, 12, device=DEVICE), x.detach(), res.detach(), lam.detach(), w.detach(),
            b.detach(), mean, rstd, "layernorm")
    torch.library.opcheck(lambda_norm_bwd, args, test_utils=quick)


def small_block(x, res, lam, w, backend):
    out, h, mu = lambda_norm(torch.tanh(x), res, lam, w, None, norm="rmsnorm", prenorm=True, return_mu=True,
                             backend=backend)
    return (2 * out).square().sum() + h.square().sum(), mu


@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(compiler):
    x, res, _, w, _ = make_inputs((2, 5, 24), seed=14)
    inputs = [x.requires_grad_(True), res.requires_grad_(True), torch.tensor(0.6, requires_grad=True, device=DEVICE),
              w.requires_grad_(True)]
    compiled = torch.compile(small_block, fullgraph=True, backend=compiler)
    loss, mu = compiled(*inputs, "triton")
    grads = torch.autograd.grad(loss, inputs)
    ref_loss, ref_mu = small_block(*inputs, "reference")
    ref_grads = torch.autograd.grad(ref_loss, inputs)
    assert_close(loss, ref_loss, what="loss", op="lambda_norm")
    assert_close(mu, ref_mu, what="mu", op="lambda_norm")
    for got, want in zip(grads, ref_grads):
        assert_close(got, want, what="grad", op="lambda_norm")


def test_auto_backend_on_cpu_is_the_reference():
    x, res, lam, w, b = make_inputs((2, 5, 24), seed=15, device="cpu")
    assert torch.equal(lambda_norm(x, res, lam, w, b), reference_lambda_norm(x, res, lam, w, b))


# ---------------------------------------------------------------- one λ per batch element

PER_ELEMENT_CASES = [  # (shape, dtype, norm, prenorm, seed): odd d, elements of 5 / 3 / 21 rows
    ((3, 5, 60), torch.float32, "layernorm", True, 20),
    ((4, 3, 100), torch.float16, "rmsnorm", False, 21),
    ((2, 3, 7, 24), torch.float32, "l2", True, 22),
    ((3, 5, 60), torch.float64, "layernorm", True, 23),
]


def per_element_and_separate(shape, dtype, norm, prenorm, seed, backend):
    """(per-element results, separate float64 reference results): each a list [out, (h,) mu, dx, dres, dλ, dw(, db)].

    The separate calls run one λ each on one batch element; their dweight / dbias are summed over elements
    and their μ / dλ stacked."""
    x, res, _, w, b = make_inputs(shape, dtype, seed=seed, bias=norm == "layernorm")
    batch = shape[0]
    lam = torch.linspace(-2.0, 1.5, batch, dtype=dtype if dtype != torch.float16 else torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    out_grad = torch.randn(shape, generator=g, dtype=torch.float64)
    h_grad = torch.randn(shape, generator=g, dtype=torch.float64)
    inputs = [t.requires_grad_(True) if t is not None else None for t in (x, res, lam, w, b)]

    def call(t, backend, og, hg):
        results = lambda_norm(*t, 1e-5, norm=norm, prenorm=prenorm, return_mu=True, backend=backend)
        out, h, mu = (results[0], results[1], results[2]) if prenorm else (results[0], None, results[1])
        loss = (out.double() * og).sum() + (0 if h is None else (h.double() * hg).sum())
        grads = torch.autograd.grad(loss, [v for v in t if v is not None])
        return [out] + ([h] if prenorm else []) + [mu] + list(grads)

    got = call(inputs, backend, out_grad, h_grad)
    parts = []
    for i in range(batch):
        t = [x[i], res[i], lam[i], w, b]
        t = [v.detach().double().requires_grad_(True) if v is not None else None for v in t]
        parts.append(call(t, "reference", out_grad[i], h_grad[i]))
    n_per_element = 5 + prenorm  # out, (h,) mu, dx, dres, dλ are per element; dweight, dbias are sums
    want = [torch.stack([p[k] for p in parts]) for k in range(n_per_element)]
    want += [sum(p[k] for p in parts) for k in range(n_per_element, len(parts[0]))]
    return got, want


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("case", range(len(PER_ELEMENT_CASES)))
def test_per_element_lam_matches_separate_calls(case, backend):
    shape, dtype, norm, prenorm, seed = PER_ELEMENT_CASES[case]
    got, want = per_element_and_separate(shape, dtype, norm, prenorm, seed, backend)
    names = ["out"] + (["h"] if prenorm else []) + ["mu", "dx", "dresidual", "dlam", "dweight", "dbias"]
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, name
        assert_close(g, w, dtype, what=name)
    assert got[names.index("dlam")].shape == (shape[0],)


def test_per_element_lam_backward_is_deterministic_and_equal_lams_match_one_lam():
    x, res, _, w, b = make_inputs((3, 7, 60), seed=24)
    lam = torch.full((3,), 0.7, requires_grad=True)
    inputs = [x.requires_grad_(True), res.requires_grad_(True), lam, w.requires_grad_(True), b.requires_grad_(True)]
    runs = [torch.autograd.grad(lambda_norm(*inputs, backend="triton").square().sum(), inputs) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    one = torch.tensor(0.7, requires_grad=True)
    scalar = torch.autograd.grad(lambda_norm(x, res, one, w, b, backend="triton").square().sum(), [x, res, one])
    assert torch.equal(runs[0][0], scalar[0]) and torch.equal(runs[0][1], scalar[1])
    assert_close(runs[0][2].sum(), scalar[2], what="dlam summed over elements")


def test_per_element_lam_opcheck_and_compile():
    from lambdaskip.ops.lambda_norm import lambda_norm_bwd, lambda_norm_fwd
    x, res, _, w, b = make_inputs((6, 12), seed=25)
    lam = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    quick = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(lambda_norm_fwd, (x, res, lam, w, b, 1e-5, "layernorm", True, False, 2), test_utils=quick)
    out, h, mean, rstd, mu = lambda_norm_fwd(x, res, lam, w, b, 1e-5, "layernorm", True, False, 2)
    args = (torch.randn(6, 12), torch.randn(6, 12), x, res, lam.detach(), w, b, mean, rstd, "layernorm")
    torch.library.opcheck(lambda_norm_bwd, args, test_utils=quick)
    x3, res3 = x.reshape(3, 2, 12).requires_grad_(True), res.reshape(3, 2, 12)
    compiled = torch.compile(small_block, fullgraph=True, backend="aot_eager")
    loss, mu = compiled(x3, res3, lam, w, "triton")
    grads = torch.autograd.grad(loss, [x3, lam])
    ref_loss, ref_mu = small_block(x3, res3, lam, w, "reference")
    ref_grads = torch.autograd.grad(ref_loss, [x3, lam])
    assert_close(loss, ref_loss, what="loss")
    assert_close(mu, ref_mu, what="mu")
    for got, want in zip(grads, ref_grads):
        assert_close(got, want, what="grad")


# ---------------------------------------------------------------- GPU, realistic sizes

@pytest.mark.gpu
@pytest.mark.parametrize("d", [1024, 4096, 12288])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_gpu_bf16_realistic_sizes(d, norm):
    torch.manual_seed(d)
    shape = (4, 1024, d)
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    res = torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (1 + 0.1 * torch.randn(d, device="cuda")).to(torch.bfloat16).requires_grad_(True)
    b = (0.1 * torch.randn(d, device="cuda")).to(torch.bfloat16).requires_grad_(True) if norm == "layernorm" else None
    lam = torch.tensor(-1.5, device="cuda", requires_grad=True)
    inputs = [t for t in (x, res, lam, w, b) if t is not None]
    with count_custom_ops() as calls:
        out, h, mu = lambda_norm(x, res, lam, w, b, norm=norm, prenorm=True, residual_in_fp32=True, return_mu=True)
        dout = torch.randn_like(out)
        grads = torch.autograd.grad((out * dout).sum(), inputs)
    assert calls["lambda_norm_fwd"] == calls["lambda_norm_bwd"] == 1, calls
    doubles = [t.detach().double().requires_grad_(True) for t in inputs]
    ref_out, ref_h, ref_mu = reference_lambda_norm(doubles[0], doubles[1], doubles[2], doubles[3],
                                                   doubles[4] if b is not None else None, norm=norm,
                                                   prenorm=True, return_mu=True)
    ref_grads = torch.autograd.grad((ref_out * dout.double()).sum(), doubles)
    assert h.dtype == torch.float32
    assert_close(out, ref_out, what="out", op="lambda_norm")
    assert_close(h, ref_h, torch.float32, what="h", op="lambda_norm")
    assert_close(mu, ref_mu, torch.float32, what="mu", op="lambda_norm")
    for name, got, want in zip(("dx", "dresidual", "dlam", "dweight", "dbias"), grads, ref_grads):
        assert_close(got, want, torch.bfloat16, what=name, op="lambda_norm")
    again = torch.autograd.grad((lambda_norm(x, res, lam, w, b, norm=norm) * dout).sum(), inputs)
    assert all(torch.equal(a, b) for a, b in zip(grads, again)), "backward must be bitwise deterministic"

