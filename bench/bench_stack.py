"""Benchmarks of whole λ-skip stacks (attention, Mamba-2, S4D): forward, and forward + backward.

Implementations, all with the same weights and input:

- ``auto``: the stack as users call it, the ops' automatic dispatch (Triton kernels on CUDA, the S4D
  extension where it is built);
- ``reference``: every op forced to its plain-PyTorch reference (``prefer_backend("reference")``);
- ``compiled``: the reference path under ``torch.compile`` (skipped on CPU when timing is disabled:
  inductor's compile outlasts the whole smoke run).

Each implementation's output is checked against the same stack run in float64 through the references
before it is timed; the group names the architecture and the exact shape.

``extra_info["flops"]`` is what torch.utils.flop_counter counts on the reference path (matmuls,
convolutions, attention; a lower bound). ``extra_info["bytes"]`` is the activation traffic the λ-skips
alone must move (per block: read the mixer
output and the residual, write the output, in the input dtype; doubled with the backward) — a lower bound
of a whole block's traffic, so the achieved fraction of copy bandwidth it implies is a floor.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lambdaskip import build_stack
from lambdaskip.ops import prefer_backend
from lambdaskip.testing import assert_close

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
IMPLS = ("auto", "reference", "compiled")


def _stack_and_input(arch: str, requires_grad: bool):
    stack = build_stack(arch, SHAPE["depth"], SHAPE["d_model"], lam=1.0, seed=0, **MIXERS[arch])
    stack = stack.to(device=DEVICE, dtype=DTYPE)
    y = torch.randn(SHAPE["batch"], SHAPE["seqlen"], SHAPE["d_model"], generator=torch.Generator().manual_seed(0))
    return stack, y.to(device=DEVICE, dtype=DTYPE).requires_grad_(requires_grad)


def _runner(impl: str, stack, benchmark):
    if impl == "auto":
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


def _check(arch: str, run, stack, y):
    """Assert that ``run(y)`` matches the same weights and input in float64 through the references."""
    exact = copy.deepcopy(stack).to(torch.float64)
    with torch.no_grad(), prefer_backend("reference"):
        expected = exact(y.detach().double())
    with torch.no_grad():
        assert_close(run(y), expected, DTYPE, what=f"{arch} stack")


def _flops(stack, y, backward: bool) -> int:
    """FLOPs of the reference path counted by torch.utils.flop_counter (matmuls, convolutions, attention;
    elementwise work and FFTs are not counted, so this is a lower bound)."""
    stack, y = copy.deepcopy(stack), y.detach().requires_grad_(backward)  # .grad of the copies only
    counter = FlopCounterMode(display=False)
    with counter, prefer_backend("reference"):
        out = stack(y)
        if backward:
            out.float().square().mean().backward()
    return counter.get_total_flops()


def _group(benchmark, arch: str, pass_: str) -> None:
    shape = " ".join(f"{k}={v}" for k, v in SHAPE.items())
    benchmark.group = f"stack {arch} {pass_} {shape} {DTYPE}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", list(MIXERS))
def test_stack_forward(run_timed, benchmark, arch, impl):
    stack, y = _stack_and_input(arch, requires_grad=False)
    run = _runner(impl, stack, benchmark)
    _group(benchmark, arch, "forward")
    _check(arch, run, stack, y)

    def forward():
        with torch.no_grad():
            return run(y)

    out = run_timed(forward, bytes=_skip_bytes(1), flops=_flops(stack, y, backward=False), impl=impl, arch=arch,
                    dtype=str(DTYPE), **SHAPE)
    assert out.shape == y.shape and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", list(MIXERS))
def test_stack_forward_backward(run_timed, benchmark, arch, impl):
    stack, y = _stack_and_input(arch, requires_grad=True)
    run = _runner(impl, stack, benchmark)
    _group(benchmark, arch, "forward+backward")
    _check(arch, run, stack, y)
    params = [y, *stack.parameters()]

    def forward_backward():
        return torch.autograd.grad(run(y).float().square().mean(), params)

    grads = run_timed(forward_backward, bytes=_skip_bytes(2), flops=_flops(stack, y, backward=True), impl=impl,
                      arch=arch, dtype=str(DTYPE), **SHAPE)
    assert all(torch.isfinite(g.float()).all() for g in grads)
