"""NaN in → NaN out: a non-finite input value reaches the outputs it affects on every backend that runs
here, in the same places as the float64 reference (never zeros, never a finite guess).

Backends: attention "auto" (SDPA) and "reference"; lambda_norm, ssd_scan and ssd_step "reference" and
"triton" (under the interpreter); s4d_kernel / s4d_conv "reference" and "extension". Seeds 0, 1, 2 for each case
(the SSD cases, slow under the interpreter, take them in turn); the
sizes are odd and small. Finite outputs are compared too, with the float32 tolerance.
"""
import os

import pytest
import torch
from ssd_inputs import make_inputs as ssd_inputs
from ssd_inputs import split as ssd_split

from lambdaskip.ops import attention, lambda_norm, s4d_conv, s4d_kernel, ssd_scan, ssd_step
from lambdaskip.reference.s4d import s4d_init
from lambdaskip.testing import assert_close

NAN, INF = float("nan"), float("inf")
SEEDS = (0, 1, 2)
needs_extension = pytest.mark.skipif(os.environ.get("LAMBDASKIP_DISABLE_EXTENSION") == "1",
                                     reason="LAMBDASKIP_DISABLE_EXTENSION=1")


def assert_same_non_finite(got, want, what):
    """NaN where the reference is NaN, ±inf where it is ±inf, and close elsewhere."""
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN at {got.isnan().nonzero().tolist()}, " \
                                                   f"reference at {want.isnan().nonzero().tolist()}"
    assert torch.equal(got.isinf(), want.isinf()), f"{what}: ±inf in different places"
    finite = torch.isfinite(want)
    assert finite.any(), f"{what}: the case poisons everything; it could not tell a wrong place"
    assert_close(got[finite], want.to(got.dtype)[finite], torch.float32, what)


# ------------------------------------------------------------------------------------------ attention
def qkv(seed, shape=(2, 3, 7, 5)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(3)]


# (which tensor, index into it, value): a NaN/inf q row, a key row, a value; row 0 of k is the only key
# query 0 sees with causal=True: SDPA alone gives zeros there.
POISONS = [("q", (0, 1, 3, 2), NAN), ("q", (1, 2, 0, 0), INF), ("q", (0, 0, 6, 4), -INF),
           ("k", (1, 0, 0, 3), NAN), ("k", (0, 2, 4, 1), NAN), ("k", (1, 1, 2, 0), INF),
           ("v", (0, 1, 5, 2), NAN), ("v", (1, 0, 3, 1), INF)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("poison", POISONS, ids=lambda p: f"{p[0]}{list(p[1])}={p[2]}")
def test_attention_sdpa_agrees_with_the_reference(poison, causal, seed):
    q, k, v = qkv(seed)
    name, index, value = poison
    dict(q=q, k=k, v=v)[name][index] = value
    want = attention(q.double(), k.double(), v.double(), causal, backend="reference")
    assert want.isnan().any() or want.isinf().any()
    got = attention(q, k, v, causal, backend="auto")
    assert_same_non_finite(got, want, f"sdpa with {name}{list(index)} = {value}")


@pytest.mark.parametrize("causal", [False, True])
def test_attention_rows_that_see_only_nan_are_nan(causal):
    """Every key of (batch 0, head 1) NaN, or all of q NaN: the all-NaN logit rows SDPA's fused kernel
    takes for fully masked ones (zeros) without the op's guard."""
    q, k, v = qkv(3)
    k[0, 1] = NAN
    out = attention(q, k, v, causal, backend="auto")
    assert out[0, 1].isnan().all() and torch.isfinite(out[1]).all() and torch.isfinite(out[0, 0]).all()
    q[:] = NAN
    assert attention(q, k, v, causal, backend="auto").isnan().all()


def test_attention_guard_costs_finite_input_nothing():
    """Finite input: the guarded output equals SDPA's, and so do the gradients."""
    import torch.nn.functional as F
    q, k, v = (t.requires_grad_(True) for t in qkv(4))
    out = attention(q, k, v, True, backend="auto")
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    want = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True).square().sum(), (q, k, v))
    assert all(torch.equal(a, b) for a, b in zip(grads, want))


# ---------------------------------------------------------------------------------------- lambda_norm
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "l2"])
def test_lambda_norm_triton_agrees_with_the_reference(norm, seed):
    g = torch.Generator().manual_seed(seed)
    x, res = torch.randn(2, 5, 37, generator=g), torch.randn(2, 5, 37, generator=g)
    w, b = torch.randn(37, generator=g), torch.randn(37, generator=g) if norm == "layernorm" else None
    x[0, 1, 3], res[1, 2, 30], w[11] = NAN, INF, NAN
    results = {}
    for backend, dtype in (("reference", torch.float64), ("triton", torch.float32)):
        results[backend] = lambda_norm(x.to(dtype), res.to(dtype), 0.7, w.to(dtype), None if b is None else b.to(dtype),
                                       norm=norm, prenorm=True, return_mu=True, backend=backend)
    for what, got, want in zip(("out", "h", "mu"), results["triton"], results["reference"]):
        if what == "mu":   # both batch elements hold a NaN row
            assert got.isnan().all() and want.isnan().all()
        else:
            assert_same_non_finite(got, want, what)


# ---------------------------------------------------------------------------------------------- S4D
def s4d_params(seed, H=3, N=10, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return list(s4d_init(H, N, "inv", generator=g, dtype=dtype))


S4D_BACKENDS = ["reference", pytest.param("extension", marks=needs_extension)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("backend", S4D_BACKENDS)
@pytest.mark.parametrize("which", [0, 1, 2, 3], ids=["log_dt", "A_re", "A_im", "C"])
def test_s4d_kernel_nan_makes_its_channel_nan(which, backend, seed):
    params = s4d_params(seed)
    params[which][1 if which == 0 else (1, 2)] = NAN
    want = s4d_kernel(*[p.to(torch.complex128 if p.is_complex() else torch.float64) for p in params], 23,
                      backend="reference")
    got = s4d_kernel(*params, 23, backend=backend)
    assert want[1].isnan().all() and torch.isfinite(want[[0, 2]]).all()
    assert_same_non_finite(got, want, f"K on {backend}")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("backend", S4D_BACKENDS)
def test_s4d_conv_direct_nan_reaches_only_later_positions(backend, seed):
    """Direct method: NaN at u[b, h, s] or K[h, s] poisons y[..., h, t >= s] (causal), nothing else."""
    g = torch.Generator().manual_seed(seed)
    u, K, D = torch.randn(2, 3, 13, generator=g), torch.randn(3, 13, generator=g), torch.randn(3, generator=g)
    u[1, 0, 4], K[2, 6] = NAN, NAN
    want = s4d_conv(u.double(), K.double(), D.double(), method="direct", backend="reference")
    assert want[1, 0, 4:].isnan().all() and not want[1, 0, :4].isnan().any() and not want[:, 1].isnan().any()
    assert_same_non_finite(s4d_conv(u, K, D, method="direct", backend=backend), want, f"y on {backend}")


@pytest.mark.parametrize("seed", SEEDS)
def test_s4d_conv_fft_nan_poisons_its_channel(seed):
    g = torch.Generator().manual_seed(seed)
    u, K = torch.randn(2, 3, 41, generator=g), torch.randn(3, 41, generator=g)
    u[1, 0, 20] = NAN
    y = s4d_conv(u, K, method="fft")
    assert y[1, 0].isnan().all() and torch.isfinite(y[0]).all() and torch.isfinite(y[1, 1:]).all()


# ---------------------------------------------------------------------------------------------- SSD
# (tensor, index): a token of x, dt, B (group 1 feeds heads 2, 3), C and z, a head of D and dt_bias, an entry
# of the initial state; b=2, seqlen 23, nheads 4, headdim 3, ngroups 2, dstate 5, chunks of 8 tokens.
SSD_POISONS = [("x", (0, 5, 1, 2), NAN), ("x", (1, 16, 3, 0), INF), ("dt", (1, 3, 2), NAN), ("dt", (0, 20, 1), INF),
               ("B", (1, 9, 1, 2), NAN), ("B", (0, 0, 0, 4), -INF), ("C", (0, 7, 0, 1), NAN), ("z", (1, 12, 2, 1), NAN),
               ("D", (3,), NAN), ("dt_bias", (1,), NAN), ("initial_states", (0, 2, 1, 3), NAN),
               ("initial_states", (1, 0, 2, 0), INF)]


def ssd_case(seed, poison, value, dtype):
    inputs = ssd_inputs(b=2, l=23, h=4, p=3, n=5, g=2, seed=seed, dtype=torch.float32, D_shape="h", z=True,
                        dt_bias=True, initial_states=True, device="cpu")
    name, index = poison
    inputs[name][index] = value
    args, kwargs = ssd_split({k: v.to(dtype) for k, v in inputs.items()})
    return args, kwargs


@pytest.mark.parametrize("case", range(len(SSD_POISONS)), ids=[f"{n}{list(i)}={v}" for n, i, v in SSD_POISONS])
def test_ssd_scan_triton_agrees_with_the_reference(case):
    *poison, value = SSD_POISONS[case]
    seed = SEEDS[case % len(SEEDS)]
    args, kwargs = ssd_case(seed, poison, value, torch.float64)
    want = ssd_scan(*args, 8, **kwargs, dt_softplus=True, return_final_states=True, backend="reference")
    assert not torch.isfinite(want[0]).all()
    args, kwargs = ssd_case(seed, poison, value, torch.float32)
    got = ssd_scan(*args, 8, **kwargs, dt_softplus=True, return_final_states=True, backend="triton")
    for what, g, w in zip(("y", "final_states"), got, want):
        if what == "final_states" and poison[0] in ("C", "z"):
            assert torch.isfinite(g).all() and torch.isfinite(w).all()  # C and z do not enter the state
            continue
        assert_same_non_finite(g, w, f"{what} with {poison[0]}{list(poison[1])} = {value}")


def test_ssd_scan_nan_reaches_its_channel_from_the_start_of_its_chunk():
    """The documented placement (ops.ssd_scan): x NaN at token 13 reaches y of that (batch, head, channel) at
    tokens 8.. (chunk 1 starts at 8), nothing else; in C, its own token only."""
    args, kwargs = ssd_case(0, ("x", (0, 13, 1, 2)), NAN, torch.float64)
    y, final = ssd_scan(*args, 8, **kwargs, return_final_states=True, backend="reference")
    expected = torch.zeros_like(y, dtype=torch.bool)
    expected[0, 8:, 1, 2] = True
    assert torch.equal(y.isnan(), expected)
    assert final[0, 1, 2].isnan().all() and final.isnan().sum() == final.shape[-1]
    args, kwargs = ssd_case(0, ("C", (1, 4, 0, 3)), NAN, torch.float64)
    expected = torch.zeros_like(y, dtype=torch.bool)
    expected[1, 4, :2] = True   # group 0 feeds heads 0 and 1
    assert torch.equal(ssd_scan(*args, 8, **kwargs, backend="reference").isnan(), expected)


# (tensor, index) for one decode step: b=2, nheads 4, headdim 3, ngroups 2, dstate 5
STEP_POISONS = [("state", (1, 2, 0, 4)), ("x", (0, 3, 1)), ("dt", (1, 0)), ("B", (0, 1, 2)), ("C", (1, 0, 3)),
                ("z", (0, 2, 2)), ("D", (1,)), ("dt_bias", (3,))]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "inf"])
@pytest.mark.parametrize("poison", STEP_POISONS, ids=lambda p: f"{p[0]}{list(p[1])}")
def test_ssd_step_triton_agrees_with_the_reference(poison, value, seed):
    g = torch.Generator().manual_seed(seed)
    b, h, p, ng, n = 2, 4, 3, 2, 5
    t = {"state": torch.randn(b, h, p, n, generator=g), "x": torch.randn(b, h, p, generator=g),
         "dt": torch.rand(b, h, generator=g), "A": -torch.rand(h, generator=g) - 0.1,
         "B": torch.randn(b, ng, n, generator=g), "C": torch.randn(b, ng, n, generator=g),
         "z": torch.randn(b, h, p, generator=g), "D": torch.randn(h, generator=g), "dt_bias": torch.randn(h, generator=g)}
    name, index = poison
    t[name][index] = value
    want_state = t["state"].double()
    want = ssd_step(want_state, **{k: v.double() for k, v in t.items() if k != "state"}, dt_softplus=True,
                    backend="reference")
    assert not torch.isfinite(want).all()
    state = t.pop("state").clone()
    got = ssd_step(state, **t, dt_softplus=True, backend="triton")
    assert_same_non_finite(got, want, f"y with {name}{list(index)} = {value}")
    if name not in ("C", "z", "D"):  # these do not enter the state
        assert_same_non_finite(state, want_state, f"state with {name}{list(index)} = {value}")
