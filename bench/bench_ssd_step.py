"""Benchmark of the SSD decode step (one token of Mamba-2 generation): per-token latency of ``ops.ssd_step``.

Implementations: ``triton`` (our kernel; on CPU only under TRITON_INTERPRET=1 and at the smoke size),
``reference`` (the PyTorch step) and ``mamba_ssm`` (``selective_state_update``, CUDA only; skipped with the
reason when it cannot be imported). Batch b ∈ {1, 16}. By default one smoke size (h=2, p=16, n=16), so that
``pytest bench/bench_ssd_step.py --benchmark-disable`` finishes in seconds; ``--bench-full`` (or
LAMBDASKIP_BENCH_FULL=1) adds the sizes of released Mamba-2 models (``Mamba2`` defaults d_state=128,
headdim=64, expand=2, ngroups=1): state-spaces/mamba2-130m (d_model 768 → 24 heads) and mamba2-2.7b
(d_model 2560 → 80 heads). Inputs are bfloat16 on CUDA (float32 on CPU); the state is float32.

Before timing, each implementation's output and updated state are checked against the float64 reference
(tolerances of lambdaskip.testing). Each benchmark records in ``benchmark.extra_info``:

- ``bytes``: the minimum traffic of one step, the state read and written once plus the token's vectors::

      bytes = 2·b·h·p·n·4                     # float32 state, read + write
            + (3·b·h·p + 2·b·g·n + b·h)·s     # x, z, y; B, C; dt in the input dtype (s bytes each)
            + 3·h·4                           # A, D, dt_bias (float32)

- ``flops``: ``5·b·h·p·n``: per state element decay·h + (dt·x)·B (3) and the output's h·C (2); the O(b·h·p)
  skip, gate and step preparation are left out.
"""
from __future__ import annotations

import os

import pytest
import torch
from baselines import mamba_ssm_function

from lambdaskip.ops.ssd_step import ssd_step
from lambdaskip.reference.ssd_step import ssd_step as reference_ssd_step
from lambdaskip.testing import assert_close

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
MODELS = {"smoke": (2, 16, 16, 1)}  # (nheads, headdim, dstate, ngroups)
if os.environ.get("LAMBDASKIP_BENCH_FULL") == "1":
    MODELS.update({"mamba2-130m": (24, 64, 128, 1), "mamba2-2.7b": (80, 64, 128, 1)})
SIZES = {f"b{b}-{model}": (b, *shape) for model, shape in MODELS.items() for b in (1, 16)}
IMPLS = ("triton", "reference", "mamba_ssm")


def bytes_step(b, h, p, n, g, dtype) -> int:
    """Minimal bytes of one step (formula in the module docstring)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * b * h * p * n * 4 + (3 * b * h * p + 2 * b * g * n + b * h) * itemsize + 3 * h * 4


def flops_step(b, h, p, n, g) -> int:
    """FLOPs of one step (formula in the module docstring)."""
    return 5 * b * h * p * n


def _implementation(impl: str, size):
    """A callable ``(state, inputs) -> y`` with ssd_step's keyword inputs, or a pytest.skip with the reason."""
    if impl == "triton":
        if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton needs CUDA here, or TRITON_INTERPRET=1 on CPU")
        if not CUDA and size[1:] != MODELS["smoke"]:
            pytest.skip("the interpreter only times the smoke size (its timings are not speeds)")
        return lambda state, t: ssd_step(state, **t, dt_softplus=True, backend="triton")
    if impl == "reference":
        return lambda state, t: ssd_step(state, **t, dt_softplus=True, backend="reference")
    if not CUDA:
        pytest.skip("mamba_ssm's kernels need CUDA")
    update = mamba_ssm_function("ops.triton.selective_state_update", "selective_state_update")
    _, h, p, n, _ = size

    def mamba_step(state, t):  # Mamba-2's call: per-head scalars broadcast over headdim (and dstate for A)
        per_channel = {k: t[k][..., None].expand(*t[k].shape, p) for k in ("dt", "dt_bias")}
        return update(state, t["x"], per_channel["dt"], t["A"][:, None, None].expand(h, p, n), t["B"], t["C"],
                      D=t["D"][:, None].expand(h, p), z=t["z"], dt_bias=per_channel["dt_bias"], dt_softplus=True)
    return mamba_step


def _inputs(size):
    b, h, p, n, g = size
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0, dtype=DTYPE):
        return (torch.randn(*shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype)

    state = rand(b, h, p, n, dtype=torch.float32)
    inputs = {"x": rand(b, h, p), "dt": rand(b, h, scale=0.5), "A": -torch.rand(h, generator=gen).to(DEVICE) - 0.5,
              "B": rand(b, g, n), "C": rand(b, g, n), "D": torch.ones(h, device=DEVICE), "z": rand(b, h, p),
              "dt_bias": torch.zeros(h, device=DEVICE)}
    return state, inputs


@pytest.mark.parametrize("size_name", list(SIZES))
@pytest.mark.parametrize("impl", IMPLS)
def test_ssd_step(run_timed, impl, size_name):
    size = SIZES[size_name]
    step = _implementation(impl, size)
    state, inputs = _inputs(size)
    y64, state64 = reference_ssd_step(state.double(), **{k: v.double() for k, v in inputs.items()}, dt_softplus=True)
    with torch.no_grad():
        y = step(state, inputs)
    assert_close(y, y64, DTYPE, f"{impl} y")
    assert_close(state, state64, DTYPE, f"{impl} state")

    def one_token():
        with torch.no_grad():
            return step(state, inputs)

    run_timed(one_token, bytes=bytes_step(*size, DTYPE), flops=flops_step(*size), impl=impl, size=size,
              dtype=str(DTYPE), state_dtype="float32", interpreted=impl == "triton" and not CUDA)
    assert torch.isfinite(state).all()
