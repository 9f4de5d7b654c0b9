import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdaskip.metrics import CollapseProbe, effective_rank, mu, normalized_mu
from lambdaskip.modules import build_stack

shapes = st.tuples(st.integers(1, 3), st.integers(2, 17), st.integers(1, 9))
seeds = st.integers(0, 2**31 - 1)


def random_tokens(shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@settings(max_examples=30, deadline=None)
@given(shapes, seeds)
def test_mu_of_equal_tokens_is_zero(shape, seed):
    b, n, d = shape
    row = random_tokens((b, 1, d), seed)
    assert torch.allclose(mu(row.expand(b, n, d)), torch.zeros(b, dtype=torch.float64), atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(shapes, seeds)
def test_mu_is_invariant_to_a_common_shift(shape, seed):
    y = random_tokens(shape, seed)
    shift = random_tokens((shape[0], 1, shape[2]), seed + 1) * 10
    torch.testing.assert_close(mu(y + shift), mu(y), rtol=1e-10, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(shapes, seeds)
def test_mu_squared_equals_row_norms_minus_mean(shape, seed):
    y = random_tokens(shape, seed)
    n = shape[1]
    expected = y.pow(2).sum(dim=(-2, -1)) - n * y.mean(dim=-2).pow(2).sum(-1)
    torch.testing.assert_close(mu(y) ** 2, expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(shapes, seeds)
def test_normalized_mu_lies_in_unit_interval(shape, seed):
    value = normalized_mu(random_tokens(shape, seed))
    assert ((value >= 0) & (value <= 1 + 1e-12)).all()


def test_mu_matches_direct_formula_on_known_matrix():
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # mean token (0.5, 0.5); deviations (±0.5, ∓0.5): Frobenius norm 1
    assert mu(y).item() == pytest.approx(1.0)
    assert normalized_mu(y).item() == pytest.approx(1 / 2**0.5)


@pytest.mark.parametrize("n", [1, 4, 7])
def test_effective_rank_of_identity_is_its_size(n):
    assert effective_rank(torch.eye(n, dtype=torch.float64)).item() == pytest.approx(n)


def test_effective_rank_of_rank_one_is_one():
    u, v = random_tokens((6, 1), 0), random_tokens((1, 5), 1)
    assert effective_rank(u @ v).item() == pytest.approx(1.0, abs=1e-6)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="y must have shape"):
        mu(torch.randn(5))
    with pytest.raises(TypeError, match="floating dtype"):
        mu(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mu([[1.0, 2.0]])


def test_probe_records_every_layer_and_matches_direct_metrics():
    stack = build_stack("identity", depth=3, d_model=8, lam=1.0, norm="layernorm", seed=0)
    y0 = random_tokens((2, 5, 8), 3, torch.float32)
    with CollapseProbe(stack.blocks) as probe:
        out = stack(y0)
    trajectory = probe.trajectory("mu")
    assert trajectory.shape == (4, 2)
    torch.testing.assert_close(trajectory[0], mu(y0).double())
    torch.testing.assert_close(trajectory[-1], mu(out).double())
    rows = probe.table()
    assert len(rows) == 4 * 3 * 2
    assert {"layer", "metric", "batch", "value"} == set(rows[0])
    # hooks are removed on exit
    assert all(not block._forward_hooks for block in stack.blocks)


def test_probe_rejects_unknown_metric_and_empty_modules():
    with pytest.raises(ValueError, match="metrics must be among"):
        CollapseProbe([torch.nn.Identity()], metrics=("rank",))
    with pytest.raises(ValueError, match="modules"):
        CollapseProbe([])
