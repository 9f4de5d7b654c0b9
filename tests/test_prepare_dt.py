"""prepare_dt, the SSD step chain ``dt ← clamp(softplus?(dt + dt_bias), *dt_limit)`` shared by the
reference scan and the Triton path, against a formula written out element by element in Python floats
(float64), outputs and gradients. Seeds 0, 1, 2; odd sizes (batch 2, seqlen 7, nheads 5)."""
import math

import pytest
import torch

from lambdaskip.reference.ssd import prepare_dt  # the one import of it: change here if it moves
from lambdaskip.testing import assert_close

SHAPE = (2, 7, 5)
LIMITS = [(0.0, math.inf), (0.05, 0.8), (0.3, math.inf), (0.0, 0.5)]


def softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def by_hand(dt, bias, use_softplus, limit, grad_out):
    """(out, d dt, d bias) element by element: z = dt + bias, s = softplus(z) or z, clamp unless (0, inf)."""
    low, high = limit
    out, d_dt = torch.empty(SHAPE, dtype=torch.float64), torch.empty(SHAPE, dtype=torch.float64)
    for i in range(SHAPE[0]):
        for t in range(SHAPE[1]):
            for h in range(SHAPE[2]):
                z = dt[i, t, h].item() + (bias[h].item() if bias is not None else 0.0)
                s, ds = (softplus(z), sigmoid(z)) if use_softplus else (z, 1.0)
                if (low, high) != (0.0, math.inf) and not low <= s <= high:
                    s, ds = min(max(s, low), high), 0.0
                out[i, t, h], d_dt[i, t, h] = s, ds * grad_out[i, t, h].item()
    return out, d_dt, d_dt.sum((0, 1))


def inputs(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    dt = (1.5 * torch.randn(SHAPE, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(True)
    bias = (0.5 * torch.randn(SHAPE[2], generator=g, dtype=torch.float64)).to(dtype).requires_grad_(True)
    grad_out = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return dt, bias, grad_out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("limit", LIMITS, ids=str)
@pytest.mark.parametrize("use_softplus", [False, True])
@pytest.mark.parametrize("use_bias", [False, True])
def test_prepare_dt_matches_the_formula(use_bias, use_softplus, limit, dtype, seed):
    dt, bias, grad_out = inputs(seed, dtype)
    bias = bias if use_bias else None
    out = prepare_dt(dt, bias, use_softplus, limit)
    leaves = [dt] + ([bias] if use_bias else [])
    grads = torch.autograd.grad((out.double() * grad_out).sum(), leaves)
    want, want_ddt, want_dbias = by_hand(dt.detach().double(), None if bias is None else bias.detach().double(),
                                         use_softplus, limit, grad_out)
    assert out.dtype == dtype and out.shape == SHAPE
    assert_close(out, want, dtype, "dt")
    assert_close(grads[0], want_ddt, dtype, "d dt")
    if use_bias:
        assert_close(grads[1], want_dbias, dtype, "d dt_bias")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_cases_exercise_every_branch(seed):
    """The random inputs hit both sides of each clamp and of softplus' kink, so every branch is checked."""
    dt, bias, _ = inputs(seed, torch.float64)
    z = (dt + bias).detach()
    assert (z < -1).any() and (z > 1).any()
    for low, high in LIMITS[1:]:
        for s in (z, torch.nn.functional.softplus(z)):
            inside = (s >= low) & (s <= high)
            assert inside.any() and (~inside).any()


def test_default_limit_is_no_clamp():
    """At the default (0, inf) the clamp is skipped: a negative step without softplus stays negative,
    as in mamba_ssm."""
    dt = torch.tensor([[[-0.5, 0.25]]], dtype=torch.float64)
    assert torch.equal(prepare_dt(dt), dt)
    assert torch.equal(prepare_dt(dt, dt_limit=(0.0, 0.2)), torch.tensor([[[0.0, 0.2]]], dtype=torch.float64))
