"""Theorem 4.1: closed forms, the constants of live mixers, the one-layer step, and certify."""
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lambdaskip import theory
from lambdaskip.metrics import mu
from lambdaskip.modules import (AttentionMixer, LambdaSkipBlock, LTIMixer, Mamba2Mixer, S4DMixer, build_stack)
from lambdaskip.reference.ssd import ssd_scan_sequential
from lambdaskip.testing import assert_close


# --- closed forms -------------------------------------------------------------------------------------------

def test_worked_example_of_the_paper():
    lam = theory.lambda_min(0.9999, 1.0, math.sqrt(128))
    assert lam == pytest.approx(2.26e5, rel=2e-3)
    assert not theory.eq7_holds(lam * (1 - 1e-9), 0.9999, 1.0, math.sqrt(128))
    assert theory.eq7_holds(lam * (1 + 1e-9), 0.9999, 1.0, math.sqrt(128))
    assert 0.9999 ** 64 == pytest.approx(0.9936, abs=1e-4)


@pytest.mark.parametrize("a, S, C_M", [(0.5, 1.0, 3.0), (0.9, 0.3, 11.3), (0.999, 2.0, 0.7)])
def test_lambda_min_and_a_max_are_inverse_closed_forms_of_eq7(a, S, C_M):
    lam = theory.lambda_min(a, S, C_M)
    assert theory.eq7_margin(lam, a, S, C_M) == pytest.approx(0.0, abs=1e-9 * lam * lam)
    for sign in (1, -1):
        assert theory.a_max(sign * lam, S, C_M) == pytest.approx(a, rel=1e-12)
        assert theory.eq7_holds(sign * 1.01 * lam, a, S, C_M)
        assert not theory.eq7_holds(sign * 0.99 * lam, a, S, C_M)
    assert theory.a_max(0.0, S, C_M) == 0.0


def test_input_threshold_b_formula():
    lam, a, N, d, S, C_M, K = -50.0, 0.8, 6, 4, 1.5, 2.0, 3
    margin = lam ** 2 - a * (S * C_M + abs(lam)) ** 2
    expected = 2 * abs(lam) * N * d * S * C_M / (a ** K * margin)
    assert theory.input_threshold_b(lam, a, N, d, S, C_M, K) == pytest.approx(expected, rel=1e-12)
    assert theory.input_threshold_b(lam, a, N, d, S, C_M, K + 1) > theory.input_threshold_b(lam, a, N, d, S, C_M, K)


def test_input_threshold_b_refuses_when_eq7_fails():
    with pytest.raises(ValueError, match="Eq. 7 fails"):
        theory.input_threshold_b(1.0, 0.5, 4, 4, 1.0, 3.0, 2)


@pytest.mark.parametrize("call, name", [
    (lambda: theory.lambda_min(0.0, 1.0, 1.0), "a"),
    (lambda: theory.lambda_min(1.0, 1.0, 1.0), "a"),
    (lambda: theory.lambda_min(0.5, 0.0, 1.0), "S"),
    (lambda: theory.lambda_min(0.5, 1.0, -1.0), "C_M"),
    (lambda: theory.a_max(float("nan"), 1.0, 1.0), "lam"),
    (lambda: theory.input_threshold_b(100.0, 0.5, 0, 4, 1.0, 1.0, 2), "N"),
    (lambda: theory.input_threshold_b(100.0, 0.5, 4, 4, 1.0, 1.0, 0), "K"),
    (lambda: theory.one_layer_bound(-1.0, 2.0, 4, 4, 1.0, 1.0), "mu_sq"),
])
def test_out_of_range_arguments_raise_value_error_naming_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("call, name", [
    (lambda: theory.lambda_min("0.5", 1.0, 1.0), "a"),
    (lambda: theory.a_max(True, 1.0, 1.0), "lam"),
    (lambda: theory.input_threshold_b(100.0, 0.5, 4.0, 4, 1.0, 1.0, 2), "N"),
])
def test_wrongly_typed_arguments_raise_type_error_naming_them(call, name):
    with pytest.raises(TypeError, match=name):
        call()


def test_one_layer_bound_value_monotonicity_and_floor():
    lam, N, d, S, C_M = 30.0, 5, 3, 1.2, 2.0
    expected = (lam ** 2 * 4.0 - 2 * lam * N * d * S * C_M) / (S * C_M + lam) ** 2
    assert theory.one_layer_bound(4.0, lam, N, d, S, C_M) == pytest.approx(expected, rel=1e-12)
    assert theory.one_layer_bound(4.0, -lam, N, d, S, C_M) == theory.one_layer_bound(4.0, lam, N, d, S, C_M)
    assert theory.one_layer_bound(4.5, lam, N, d, S, C_M) > theory.one_layer_bound(4.0, lam, N, d, S, C_M)
    assert theory.one_layer_bound(0.1, 1.0, N, d, S, C_M) == 0.0


# --- the one-layer inequality as a checked property ---------------------------------------------------------

def _rows_normalised(y):
    return y / y.norm(dim=-1, keepdim=True)


@settings(max_examples=150, deadline=None)
@given(N=st.integers(2, 9), d=st.integers(1, 6), seed=st.integers(0, 2 ** 31 - 1),
       log_lam=st.floats(-2.0, 3.5), negative=st.booleans(), log_scale=st.floats(-2.0, 2.0),
       kind=st.sampled_from(["gaussian", "rank_one", "one_row", "stochastic"]), clustered=st.booleans())
def test_one_layer_inequality_holds(N, d, seed, log_lam, negative, log_scale, kind, clustered):
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** log_scale
    if kind == "gaussian":
        M = torch.randn(N, N, generator=g, dtype=torch.float64) * scale
    elif kind == "rank_one":
        M = torch.outer(torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64))
    elif kind == "one_row":
        M = torch.zeros(N, N, dtype=torch.float64)
        M[0] = torch.randn(N, generator=g, dtype=torch.float64) * scale
    else:
        M = torch.softmax(torch.randn(N, N, generator=g, dtype=torch.float64) * scale, dim=-1)
    C_V = torch.randn(d, d, generator=g, dtype=torch.float64) * 10.0 ** (log_scale / 2)
    Y = torch.randn(N, d, generator=g, dtype=torch.float64)
    if clustered:  # nearly collapsed input: the hard case
        Y = Y[:1] + 0.05 * Y
    Y = _rows_normalised(Y)
    lam = (-1.0 if negative else 1.0) * 10.0 ** log_lam
    Z = M @ Y @ C_V + lam * Y
    assume(bool((Z.norm(dim=-1) > 1e-9).all()))
    S = torch.linalg.matrix_norm(C_V, ord=2).item()
    C_M = torch.linalg.matrix_norm(M).item()
    assume(S > 0 and C_M > 0)
    bound = theory.one_layer_bound(mu(Y).item() ** 2, lam, N, d, S, C_M)
    assert mu(_rows_normalised(Z)).item() ** 2 >= bound - 1e-9 * N


# --- constants of live mixers -------------------------------------------------------------------------------

@pytest.mark.parametrize("channels, N", [(3, 1), (4, 17), (2, 64)])
def test_lti_frobenius_matches_materialised_toeplitz(channels, N):
    g = torch.Generator().manual_seed(N)
    K = torch.randn(channels, N, generator=g, dtype=torch.float64)
    D = torch.randn(channels, generator=g, dtype=torch.float64)
    for d_skip in (None, D):
        M = theory.lti_matrix(K, d_skip)
        assert_close(theory.lti_frobenius(K, d_skip), torch.linalg.matrix_norm(M), what="‖M‖_F")
    u = torch.randn(channels, N, generator=g, dtype=torch.float64)
    conv = torch.stack([torch.stack([sum(K[c, t - s] * u[c, s] for s in range(t + 1)) + D[c] * u[c, t]
                                     for t in range(N)]) for c in range(channels)]) if N <= 17 else None
    if conv is not None:
        assert_close(torch.einsum("cij,cj->ci", theory.lti_matrix(K, D), u), conv, what="M u")


def test_s4d_and_lti_constants_are_exact_and_input_independent():
    torch.manual_seed(0)
    s4d = S4DMixer(6, d_state=8, activation=None, out_proj=False).double()
    y1, y2 = torch.randn(2, 23, 6, dtype=torch.float64), torch.randn(3, 23, 6, dtype=torch.float64)
    c1, c2 = theory.mixer_constants(s4d, y1), theory.mixer_constants(s4d, y2)
    M = theory.lti_matrix(s4d.kernel(23).detach(), s4d.D.detach())
    assert_close(c1.C_M, torch.linalg.matrix_norm(M).max().expand(2), what="S4D C_M")
    assert c1.C_M[0] == c2.C_M[0] and c1.form == "bounded" and c1.S == 1.0
    # and M is what the mixer applies, channel by channel
    out = s4d(y1)
    assert_close(out, torch.einsum("cij,bjc->bic", M, y1), what="S4D output = M_c u_c")
    lti = LTIMixer(5, kernel_size=7).double()
    c = theory.mixer_constants(lti, y1[..., :5])
    assert_close(c.C_M, torch.linalg.matrix_norm(theory.lti_matrix(lti.kernel(23).detach())).max().expand(2))
    assert theory.mixer_constants(S4DMixer(6, d_state=8).double(), y1).form == "approximate"


@pytest.mark.parametrize("causal", [False, True])
def test_attention_constants(causal):
    torch.manual_seed(1)
    N, d = 19, 8
    mixer = AttentionMixer(d, nheads=1, causal=causal).double()
    y = torch.randn(3, N, d, dtype=torch.float64)
    c = theory.mixer_constants(mixer, y)
    M = mixer.mixing_matrix(y)[:, 0]
    assert_close(c.C_M, torch.linalg.matrix_norm(M), what="attention ‖M‖_F")
    assert bool((c.C_M <= math.sqrt(N) + 1e-12).all())
    C_V = (mixer.out_proj.weight @ mixer.qkv.weight[2 * d:]).T.detach()
    assert_close(mixer(y), M @ y @ C_V, what="attention output = M Y C_V")
    assert c.S == pytest.approx(torch.linalg.matrix_norm(C_V, ord=2).item(), rel=1e-12)
    assert c.S_frob >= c.S and c.form == "exact"
    assert theory.mixer_constants(AttentionMixer(d, nheads=2).double(), y).form == "bounded"


@pytest.mark.parametrize("ngroups, D_has_hdim", [(1, False), (2, False), (1, True)])
def test_mamba2_mixing_matrix_reproduces_the_scan(ngroups, D_has_hdim):
    torch.manual_seed(2)
    mixer = Mamba2Mixer(16, d_state=4, headdim=8, ngroups=ngroups, chunk_size=16, D_has_hdim=D_has_hdim).double()
    u = torch.randn(2, 21, 16, dtype=torch.float64)
    s = mixer.ssd_inputs(u)
    y = ssd_scan_sequential(s["x"], s["dt"], s["A"].double(), s["B"], s["C"],
                            D=None if D_has_hdim else mixer.D)
    M = mixer.mixing_matrix(u, include_D=not D_has_hdim)
    assert_close(torch.einsum("bhij,bjhp->bihp", M, s["x"]), y, what="M x")
    c = theory.mixer_constants(mixer, u)
    if D_has_hdim:
        D = mixer.D.detach()
        with_D = M[:, :, None] + torch.diag_embed(D[..., None].expand(-1, -1, 21))
        expected = torch.linalg.matrix_norm(with_D).flatten(1).amax(1)
    else:
        expected = torch.linalg.matrix_norm(M).amax(1)
    assert_close(c.C_M, expected, what="Mamba-2 C_M")
    assert c.S == 1.0 and c.form == "approximate" and c.S_projections > 0
    if D_has_hdim:
        with pytest.raises(ValueError, match="include_D"):
            mixer.mixing_matrix(u)


def test_mixer_constants_rejects_unknown_mixers():
    with pytest.raises(TypeError, match="Linear"):
        theory.mixer_constants(torch.nn.Linear(4, 4), torch.randn(1, 3, 4))


# --- certify ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch, kwargs, lam", [
    ("attention", {"nheads": 1, "causal": False}, 3000.0),
    ("attention", {"nheads": 1, "causal": True}, -3000.0),
    ("identity", {}, 500.0),
    ("lti", {"kernel_size": 5}, -800.0),
])
def test_certify_bound_holds_at_every_layer(arch, kwargs, lam):
    N, d, K = 6, 4, 5
    model = build_stack(arch, K, d, lam=lam, norm="l2", eps=1e-30, seed=3, **kwargs).double()
    inputs = torch.randn(4, N, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cert = theory.certify(model, inputs, a=0.6)
    assert cert.exact
    assert all(layer.eq7 for layer in cert.layers)
    assert cert.summary["certified"], cert.table()
    assert bool((cert.mu_bound_theorem[-1] > 0).all())
    assert cert.respected(), cert.table()
    # the theorem's a^k rate, and the iterated step is never weaker
    a_k = torch.tensor([0.6 ** (k / 2) for k in range(K + 1)], dtype=torch.float64)[:, None]
    assert_close(cert.mu_bound_theorem, cert.mu[0] * a_k, what="a^{k/2} μ0")
    assert bool((cert.mu_bound_iterated >= cert.mu_bound_theorem - 1e-12).all())
    assert "Theorem 4.1" in cert.table() and cert.to_dict()["summary"]["certified"]


def test_certify_without_eq7_certifies_nothing():
    model = build_stack("attention", 3, 4, lam=1.0, norm="l2", seed=0).double()
    cert = theory.certify(model, torch.randn(2, 5, 4, dtype=torch.float64), a=0.9)
    assert not any(layer.eq7 for layer in cert.layers)
    assert not cert.summary["certified"] and cert.summary["b"] is None
    assert bool((cert.mu_bound_theorem[1:] == 0).all()) and cert.respected()


def test_certify_flags_models_outside_the_theorem():
    model = build_stack("mamba2", 2, 16, lam=10.0, norm="layernorm", seed=0, headdim=8, d_state=4)
    cert = theory.certify(model, torch.randn(2, 7, 16), a=0.5)
    assert not cert.exact and "NOT exact" in cert.table()


def test_certify_rejects_bad_input():
    model = build_stack("identity", 2, 4, lam=10.0, norm="l2")
    with pytest.raises(ValueError, match="a must"):
        theory.certify(model, torch.randn(1, 3, 4), a=1.5)
    with pytest.raises(ValueError, match="inputs"):
        theory.certify(model, torch.randn(3, 4), a=0.5)
    with pytest.raises(ValueError, match="MLP"):
        theory.certify([LambdaSkipBlock(LTIMixer(4), 4, mlp=True)], torch.randn(1, 3, 4), a=0.5)
    with pytest.raises(TypeError, match="LambdaSkipBlock"):
        theory.certify([torch.nn.Identity()], torch.randn(1, 3, 4), a=0.5)
