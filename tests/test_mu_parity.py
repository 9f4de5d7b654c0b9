"""μ-trajectory parity: deep λ-skip stacks run through the fast paths (Triton kernels, the compiled S4D
extension) in float32 must reproduce the rank-collapse dynamics of the float64 reference path.

Tolerance rule (per layer, on layers whose reference is not collapsed, i.e. normalised μ ≥ 1e-4): the fast
path's relative error against float64 is at most twice the error of the plain-PyTorch float32 run of the same
model plus 1e-5 (the flash-attention rule: a kernel may not be less accurate than PyTorch in its own dtype).
Through 32 layers float32 rounding (6e-8) is amplified by the layers' Jacobians; the float32 reference run
measures that amplification for each stack. On collapsed layers (normalised μ < 1e-4, e.g. attention with
λ = 0) relative errors of μ are meaningless; there both paths must report collapse (normalised μ < 1e-3).
On CPU the Triton kernels run under the interpreter at small sizes; `-m gpu` runs the full sizes on CUDA.
"""
import pytest
import torch

from lambdaskip import CollapseProbe, build_stack
from lambdaskip.ops import prefer_backend

ARCHS = {
    "attention": {"nheads": 2},
    "mamba2": {"headdim": 8, "d_state": 16, "chunk_size": 16},
    "s4d": {"d_state": 8},
}
LAMS = [-1.0, 0.0, 0.5, 1.0, 2.0]
COLLAPSED = 1e-4


def trajectories(stack, y, *backends):
    """(μ, normalised μ) per layer and batch element: two (depth + 1, batch) float64 tensors."""
    with torch.no_grad(), CollapseProbe(stack.blocks, metrics=("mu", "normalized_mu")) as probe:
        with prefer_backend(backends[0]), prefer_backend(backends[-1]):
            stack(y)
    return probe.trajectory("mu"), probe.trajectory("normalized_mu")


def check_parity(arch, lam, depth, batch, seqlen, d_model, device, mixer_kwargs):
    stack = build_stack(arch, depth, d_model, lam=lam, seed=0, **mixer_kwargs).to(device)
    y = torch.randn(batch, seqlen, d_model, generator=torch.Generator().manual_seed(1)).to(device)
    mu_fast, nmu_fast = trajectories(stack, y, "triton", "extension")
    mu_ref32, _ = trajectories(stack, y, "reference")
    mu_64, nmu_64 = trajectories(stack.double(), y.double(), "reference")
    live = nmu_64 >= COLLAPSED
    err_fast = ((mu_fast - mu_64).abs() / mu_64)[live]
    err_ref32 = ((mu_ref32 - mu_64).abs() / mu_64)[live]
    worst = err_fast.max().item() if live.any() else 0.0
    bound = 2 * err_ref32.max().item() + 1e-5 if live.any() else 0.0
    assert worst <= bound, f"{arch} λ={lam}: largest per-layer relative μ deviation {worst:.2e} > {bound:.2e}"
    assert (nmu_fast[~live] < 1e-3).all(), f"{arch} λ={lam}: the reference collapses but the fast path does not"
    return worst


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_mu_trajectory_parity_cpu(arch, lam, record_property):
    # seqlen 20 = one full chunk of 16 and a partial one, so the SSD's ragged tail is exercised
    worst = check_parity(arch, lam, depth=32, batch=1, seqlen=20, d_model=16, device="cpu",
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
