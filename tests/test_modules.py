import io

import pytest
import torch

from lambdaskip import LambdaSkip, LambdaSkipBlock, build_stack
from lambdaskip.modules import AttentionMixer, IdentityMixer, LTIMixer, Mamba2Mixer, S4DMixer

SMALL_MIXER_KWARGS = {
    "attention": {"nheads": 2},
    "mamba2": {"headdim": 8, "d_state": 16, "chunk_size": 16},
    "s4d": {"d_state": 8},
    "lti": {"kernel_size": 8},
    "identity": {},
}


def tokens(b=2, n=11, d=16, seed=0, dtype=torch.float32):
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("arch", list(SMALL_MIXER_KWARGS))
def test_stack_keeps_shape_and_dtype(arch):
    stack = build_stack(arch, depth=2, d_model=16, lam=0.5, seed=0, **SMALL_MIXER_KWARGS[arch])
    y = tokens()
    out = stack(y)
    assert out.shape == y.shape and out.dtype == y.dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["attention", "mamba2", "s4d"])
def test_stack_runs_in_float64_and_bfloat16(arch):
    stack = build_stack(arch, depth=2, d_model=16, seed=0, **SMALL_MIXER_KWARGS[arch])
    out64 = stack.double()(tokens(dtype=torch.float64))
    assert out64.dtype == torch.float64
    out16 = stack.to(torch.bfloat16)(tokens(dtype=torch.bfloat16))
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16.float()).all()


def test_build_stack_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_stack("attention", 2, 16, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_stack("attention", 2, 16, seed=7)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "l2", None])
def test_lambda_zero_removes_the_skip_path_exactly(norm):
    skip = LambdaSkip(16, lam=0.0, norm=norm)
    mixer_out, residual = tokens(seed=1), tokens(seed=2)
    assert torch.equal(skip(mixer_out, residual), skip(mixer_out, residual * 1e3 + 5))


def test_lambda_skip_matches_layer_norm_of_sum():
    skip = LambdaSkip(16, lam=-1.5, norm="layernorm")
    x, r = tokens(seed=1), tokens(seed=2)
    torch.testing.assert_close(skip(x, r), torch.nn.functional.layer_norm(x - 1.5 * r, (16,)))


def test_learnable_lambda_gets_a_gradient_and_survives_state_dict():
    # (an identity mixer would make the output scale-invariant in λ: LN((1+λ)Y) has zero λ-gradient)
    block = LambdaSkipBlock(LTIMixer(16, kernel_size=4), 16, lam=-1.0, learnable=True)
    assert isinstance(block.skip.lam, torch.nn.Parameter)
    block(tokens()).pow(2).mean().backward()
    assert block.skip.lam.grad is not None and block.skip.lam.grad.abs() > 0
    with torch.no_grad():
        block.skip.lam.fill_(2.5)
    buffer = io.BytesIO()
    torch.save(block.state_dict(), buffer)
    buffer.seek(0)
    fresh = LambdaSkipBlock(LTIMixer(16, kernel_size=4), 16, lam=-1.0, learnable=True)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.skip.lam.item() == 2.5


def test_fixed_lambda_is_a_buffer_in_state_dict_and_shows_in_repr():
    skip = LambdaSkip(16, lam=-2.0)
    assert "lam" in dict(skip.named_buffers()) and "lam" in skip.state_dict()
    assert "lam=-2" in repr(skip)


def test_per_layer_lambda_list():
    stack = build_stack("identity", depth=3, d_model=8, lam=[0.0, 1.0, -2.0])
    assert stack.lams.tolist() == [0.0, 1.0, -2.0]


def test_mlp_block_has_its_own_skip():
    block = LambdaSkipBlock(IdentityMixer(16), 16, lam=1.0, mlp=True)
    assert block.mlp_skip is not None
    assert block(tokens()).shape == (2, 11, 16)


def test_mamba2_gating_ablation_changes_the_output():
    torch.manual_seed(0)
    gated = Mamba2Mixer(16, **SMALL_MIXER_KWARGS["mamba2"])
    ungated = Mamba2Mixer(16, gating=False, **SMALL_MIXER_KWARGS["mamba2"])
    ungated.load_state_dict(gated.state_dict())
    y = tokens()
    assert not torch.allclose(gated(y), ungated(y))


def test_attention_mixer_is_causal():
    mixer = AttentionMixer(16, nheads=2, causal=True)
    y = tokens()
    y2 = y.clone()
    y2[:, -1] += 1.0
    torch.testing.assert_close(mixer(y)[:, :-1], mixer(y2)[:, :-1])


def test_pure_lti_s4d_mixer_is_linear():
    mixer = S4DMixer(16, d_state=8, activation=None, out_proj=False)
    a, b = tokens(seed=1), tokens(seed=2)
    torch.testing.assert_close(mixer(a + 2 * b), mixer(a) + 2 * mixer(b), rtol=1e-4, atol=1e-4)


def test_lti_mixer_is_causal_convolution():
    mixer = LTIMixer(4, kernel_size=3)
    u = tokens(b=1, n=6, d=4, seed=3, dtype=torch.float32)
    K = mixer.kernel(6).detach()
    expected = torch.stack([sum(K[:, j] * u[0, t - j] for j in range(t + 1)) for t in range(6)])
    torch.testing.assert_close(mixer(u)[0].detach(), expected, rtol=1e-5, atol=1e-5)


def test_compiled_stack_matches_eager():
    stack = build_stack("attention", depth=4, d_model=16, lam=2.0, seed=0, nheads=2)
    y = tokens()
    compiled = torch.compile(stack, fullgraph=True)
    torch.testing.assert_close(compiled(y), stack(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(arch="transformer", depth=2, d_model=8), ValueError, "arch must be one of"),
    (dict(arch="attention", depth=0, d_model=8), ValueError, "depth must be a positive int"),
    (dict(arch="attention", depth=2, d_model=-1), ValueError, "d_model must be a positive int"),
    (dict(arch="attention", depth=2, d_model=8, norm="batchnorm"), ValueError, "norm must be one of"),
    (dict(arch="attention", depth=2, d_model=8, lam=[1.0]), ValueError, "lam must be a number or a sequence"),
])
def test_build_stack_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_stack(**kwargs)


def test_mixers_reject_wrong_input_shapes():
    for mixer in (AttentionMixer(16), Mamba2Mixer(16, **SMALL_MIXER_KWARGS["mamba2"]), S4DMixer(16, d_state=8),
                  IdentityMixer(16), LTIMixer(16)):
        with pytest.raises(ValueError, match="input must have shape"):
            mixer(torch.randn(2, 11, 8))
        with pytest.raises(ValueError, match="input must have shape"):
            mixer(torch.randn(11, 16))


def test_lambda_skip_rejects_mismatched_inputs():
    skip = LambdaSkip(16)
    with pytest.raises(ValueError, match="mixer_out must have last dimension"):
        skip(torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="residual must have the shape"):
        skip(torch.randn(2, 3, 16), torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="norm must be one of"):
        LambdaSkip(16, norm="batchnorm")


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "l2", None])
def test_lambda_skip_mu_telemetry_matches_the_metric(norm):
    from lambdaskip.metrics import mu
    skip = LambdaSkip(16, lam=0.5, norm=norm)
    skip.track_mu = True
    out = skip(tokens(seed=1), tokens(seed=2))
    torch.testing.assert_close(skip.last_mu, mu(out.detach()), rtol=1e-5, atol=1e-5)
    assert not skip.last_mu.requires_grad


def test_l2_norm_rows_have_unit_length():
    skip = LambdaSkip(16, lam=2.0, norm="l2")
    out = skip(tokens(seed=1), tokens(seed=2))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 11), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "l2", None])
def test_lambda_skip_with_k_lams_matches_k_separate_skips(norm):
    """K = 3 values of λ on a batch of 3 slices of 2: outputs, every gradient (dλ per value) and μ telemetry
    agree with three one-λ skips on their slices."""
    from lambdaskip.metrics import mu
    lams = [-1.0, 0.5, 2.0]
    sweep = LambdaSkip(16, lam=lams, learnable=True, norm=norm)
    sweep.track_mu = True
    mixer_out, residual = tokens(b=6, seed=1), tokens(b=6, seed=2)
    out = sweep(mixer_out, residual)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((out * weights).sum(), list(sweep.parameters()))
    assert sweep.lam.shape == (3,) and "lam=[-1, 0.5, 2]" in repr(sweep)
    shared = [torch.zeros_like(g) for g in grads[1:]]  # the affine parameters: gradients sum over slices
    for k, lam in enumerate(lams):
        one = LambdaSkip(16, lam=lam, learnable=True, norm=norm)
        part = slice(2 * k, 2 * k + 2)
        out_k = one(mixer_out[part], residual[part])
        grads_k = torch.autograd.grad((out_k * weights[part]).sum(), list(one.parameters()))
        torch.testing.assert_close(out[part], out_k, rtol=0, atol=0)
        torch.testing.assert_close(grads[0][k], grads_k[0])
        shared = [acc + g for acc, g in zip(shared, grads_k[1:])]
    for got, want in zip(grads[1:], shared):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(sweep.last_mu, mu(out.detach()), rtol=1e-5, atol=1e-5)


def test_lambda_skip_with_k_lams_needs_a_batch_multiple_of_k():
    skip = LambdaSkip(16, lam=torch.tensor([0.5, 1.0, 2.0]))
    assert "lam" in dict(skip.named_buffers()) and skip.lam.shape == (3,)
    with pytest.raises(ValueError, match="multiple of 3"):
        skip(tokens(b=4), tokens(b=4))


@pytest.mark.parametrize("lam, error, match", [
    (float("nan"), ValueError, "lam must be finite"),
    (float("-inf"), ValueError, "lam must be finite"),
    ([1.0, float("nan")], ValueError, "lam must be finite"),
    (torch.tensor([0.5, float("inf")]), ValueError, "lam must be finite"),
    ("1", TypeError, "lam must be a float"),
    (None, TypeError, "lam must be a float"),
    (True, TypeError, "lam must be a float"),
    (torch.ones(2, 2), TypeError, "lam must be a number or a 0-d / 1-D float tensor"),
    (torch.tensor([1, 2]), TypeError, "lam must be a number or a 0-d / 1-D float tensor"),
    ([], ValueError, "lam must hold at least one value"),
])
def test_lambda_skip_and_build_stack_refuse_bad_lambda(lam, error, match):
    with pytest.raises(error, match=match):
        LambdaSkip(64, lam)
    with pytest.raises(error, match=match):  # as the λ of one block, and (numbers) of every block
        build_stack("identity", depth=2, d_model=8, lam=[lam, 1.0])
    if not isinstance(lam, (list, torch.Tensor)):
        with pytest.raises(error, match=match):
            build_stack("identity", depth=2, d_model=8, lam=lam)


def test_build_stack_with_k_lams_per_block_runs_a_sweep_in_one_pass():
    """One stack with λ variants as batch slices equals one stack per λ (same seed, same weights)."""
    lams = [-1.0, 0.5, 2.0]
    sweep = build_stack("attention", depth=3, d_model=16, lam=[lams] * 3, seed=0, nheads=2)
    assert sweep.lams.shape == (3, 3)
    y = tokens(b=2, seed=4)
    out = sweep(y.repeat(3, 1, 1))
    for k, lam in enumerate(lams):
        one = build_stack("attention", depth=3, d_model=16, lam=lam, seed=0, nheads=2)
        torch.testing.assert_close(out[2 * k:2 * k + 2], one(y), rtol=1e-5, atol=1e-5)
