"""μ-trajectory parity: deep λ-skip stacks run through the fast paths (Triton kernels, the compiled S4D
extension) in float32 must reproduce the rank-collapse dynamics of the float64 reference path.

Tolerance rule (layer by layer and batch element by batch element, on layers whose reference is not
collapsed, i.e. normalised μ ≥ 1e-4): the fast path's relative error against float64 at that layer is at
most twice the error of the plain-PyTorch float32 run of the same model up to that layer (its largest over
the layers so far: a signed error can cross zero at one layer by chance) plus 1e-5 (the flash-attention
rule: a kernel may not be less accurate than PyTorch in its own dtype). Through 32 layers float32 rounding (6e-8) is amplified by the layers' Jacobians; the float32 reference run
measures that amplification for each stack. On collapsed layers (normalised μ < 1e-4, e.g. attention with
λ = 0) relative errors of μ are meaningless; there both paths must report collapse (normalised μ < 1e-3).
On CPU the Triton kernels run under the interpreter at small sizes; `-m gpu` runs the full sizes on CUDA.
The fast run counts the custom-op calls and fails unless every layer went through the fast path
(``prefer_backend`` skips a backend that cannot run, which would turn the check into reference vs reference).
"""
import pytest
import torch

from lambdaskip import CollapseProbe, build_stack
from lambdaskip.ops import prefer_backend
from lambdaskip.testing import DEVICE, count_custom_ops

ARCHS = {
    "attention": {"nheads": 2},
    "mamba2": {"headdim": 8, "d_state": 16, "chunk_size": 16},
    "s4d": {"d_state": 8},
}
LAMS = [-1.0, 0.0, 0.5, 1.0, 2.0]
COLLAPSED = 1e-4
FAST_OPS = {"attention": ("lambda_norm_fwd",), "mamba2": ("lambda_norm_fwd", "ssd_scan_core"),
            "s4d": ("lambda_norm_fwd", "s4d_vandermonde", "s4d_causal_conv")}  # custom ops each layer must call


def trajectories(stack, y, *backends):
    """(μ, normalised μ) per layer and batch element: two (depth + 1, batch) float64 tensors."""
    with torch.no_grad(), CollapseProbe(stack.blocks, metrics=("mu", "normalized_mu")) as probe:
        with prefer_backend(backends[0]), prefer_backend(backends[-1]):
            stack(y)
    return probe.trajectory("mu"), probe.trajectory("normalized_mu")


def check_parity(arch, lam, depth, batch, seqlen, d_model, device, mixer_kwargs):
    stack = build_stack(arch, depth, d_model, lam=lam, seed=0, **mixer_kwargs).to(device)
    y = torch.randn(batch, seqlen, d_model, generator=torch.Generator().manual_seed(1)).to(device)
    with count_custom_ops() as calls:
        mu_fast, nmu_fast = trajectories(stack, y, "triton", "extension")
    for op in FAST_OPS[arch]:
        assert calls[op] >= depth, f"{arch}: {op} ran {calls[op]} times in {depth} layers: a fast path did not run"
    mu_ref32, _ = trajectories(stack, y, "reference")
    mu_64, nmu_64 = trajectories(stack.double(), y.double(), "reference")
    live = nmu_64 >= COLLAPSED
    err_fast = (mu_fast - mu_64).abs() / mu_64
    err_ref32 = torch.where(live, (mu_ref32 - mu_64).abs() / mu_64, 0.0)
    bound = 2 * torch.cummax(err_ref32, dim=0).values + 1e-5
    bad = live & ~(err_fast <= bound)
    if bad.any():
        layer, batch = (int(i) for i in bad.nonzero()[0])
        raise AssertionError(f"{arch} λ={lam}: layer {layer}, batch element {batch}: relative μ deviation "
                             f"{err_fast[layer, batch]:.2e} > {bound[layer, batch]:.2e} ({int(bad.sum())} such)")
    worst = err_fast[live].max().item() if live.any() else 0.0
    assert (nmu_fast[~live] < 1e-3).all(), f"{arch} λ={lam}: the reference collapses but the fast path does not"
    return worst


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_mu_trajectory_parity_small(arch, lam, record_property):
    # seqlen 20 = one full chunk of 16 and a partial one, so the SSD's ragged tail is exercised
    worst = check_parity(arch, lam, depth=32, batch=1, seqlen=20, d_model=16, device=DEVICE,
                         mixer_kwargs=ARCHS[arch])
    record_property("largest_relative_mu_deviation", worst)


@pytest.mark.gpu
@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_mu_trajectory_parity_gpu(arch, lam, record_property):
    kwargs = {"attention": {"nheads": 4}, "mamba2": {"headdim": 64, "d_state": 64, "chunk_size": 64},
              "s4d": {"d_state": 64}}[arch]
    worst = check_parity(arch, lam, depth=64, batch=4, seqlen=512, d_model=256, device="cuda", mixer_kwargs=kwargs)
    record_property("largest_relative_mu_deviation", worst)
