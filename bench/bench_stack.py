"""Benchmarks of whole λ-skip stacks (attention, Mamba-2, S4D): forward, and forward + backward.

Implementations, all with the same weights and input:

- ``fast``: the ops' automatic dispatch (Triton kernels on CUDA, the S4D extension where it is built);
- ``reference``: every op forced to its plain-PyTorch reference (``prefer_backend("reference")``);
- ``compiled``: the reference path under ``torch.compile`` (skipped on CPU when timing is disabled:
  inductor's compile outlasts the whole smoke run).

``extra_info["bytes"]`` is the activation traffic the λ-skips alone must move (per block: read the mixer
output and the residual, write the output, in the input dtype; doubled with the backward) — a lower bound
of a whole block's traffic, so the achieved fraction of copy bandwidth it implies is a floor.
"""
from __future__ import annotations

import os

import pytest
import torch

from lambdaskip import build_stack
from lambdaskip.ops import prefer_backend

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
FULL = os.environ.get("LAMBDASKIP_BENCH_FULL") == "1"
if CUDA:
    SHAPE = dict(depth=8, batch=8, seqlen=2048 if FULL else 1024, d_model=512)
    MIXERS = {"attention": {"nheads": 8}, "mamba2": {"headdim": 64, "d_state": 128, "chunk_size": 256},
              "s4d": {"d_state": 64}}
else:
    SHAPE = dict(depth=4, batch=2, seqlen=64, d_model=32)
    MIXERS = {"attention": {"nheads": 2}, "mamba2": {"headdim": 16, "d_state": 16, "chunk_size": 16},
              "s4d": {"d_state": 16}}
IMPLS = ("fast", "reference", "compiled")


def _stack_and_input(arch: str, requires_grad: bool):
    stack = build_stack(arch, SHAPE["depth"], SHAPE["d_model"], lam=1.0, seed=0, **MIXERS[arch])
    stack = stack.to(device=DEVICE, dtype=DTYPE)
    y = torch.randn(SHAPE["batch"], SHAPE["seqlen"], SHAPE["d_model"], generator=torch.Generator().manual_seed(0))
    return stack, y.to(device=DEVICE, dtype=DTYPE).requires_grad_(requires_grad)


def _runner(impl: str, stack, benchmark):
    if impl == "fast":
        return stack
    if impl == "compiled" and not CUDA and benchmark.disabled:
        pytest.skip("inductor compile on CPU outlasts the smoke run; time it with benchmarking enabled")

    def reference(y):
        with prefer_backend("reference"):
            return stack(y)

    return torch.compile(reference) if impl == "compiled" else reference


def _skip_bytes(passes: int) -> int:
    itemsize = torch.empty((), dtype=DTYPE).element_size()
    return passes * 3 * SHAPE["depth"] * SHAPE["batch"] * SHAPE["seqlen"] * SHAPE["d_model"] * itemsize


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", list(MIXERS))
def test_stack_forward(run_timed, benchmark, arch, impl):
    stack, y = _stack_and_input(arch, requires_grad=False)
    run = _runner(impl, stack, benchmark)

    def forward():
        with torch.no_grad():
            return run(y)

    out = run_timed(forward, bytes=_skip_bytes(1), impl=impl, arch=arch, dtype=str(DTYPE), **SHAPE)
    assert out.shape == y.shape and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", list(MIXERS))
def test_stack_forward_backward(run_timed, benchmark, arch, impl):
    stack, y = _stack_and_input(arch, requires_grad=True)
    run = _runner(impl, stack, benchmark)
    params = [y, *stack.parameters()]

    def forward_backward():
        return torch.autograd.grad(run(y).float().square().mean(), params)

    grads = run_timed(forward_backward, bytes=_skip_bytes(2), impl=impl, arch=arch, dtype=str(DTYPE), **SHAPE)
    assert all(torch.isfinite(g.float()).all() for g in grads)
