"""Benchmark of the fused λ-residual + LayerNorm, forward and forward + backward.

Contenders, all computing LayerNorm(x + λ·residual)·weight + bias over the last dim:
- ``lambdaskip``: :func:`lambdaskip.ops.lambda_norm` with backend="auto" (Triton on CUDA, the reference
  on CPU);
- ``triton-interpreter`` (CPU only, tiny size): our Triton kernels under Triton's interpreter; labelled
  ``interpreted`` in extra_info — a check that the setup runs, not a speed;
- ``eager``: ``F.layer_norm(x + lam * res)``; ``compiled``: ``torch.compile`` of the same (skipped on CPU
  when timing is disabled: inductor's compile outlasts the whole smoke run);
- published fused residual + LayerNorm kernels when importable (Liger-Kernel, fla-core, mamba_ssm),
  skipped with the reason otherwise. They have no λ: fla and mamba_ssm compute ``x + residual``
  (λ = 1, the nearest thing they offer); Liger has no residual input (eager add, then its LayerNorm).

Each contender's output is checked against the float64 reference before it is timed.

``extra_info["bytes"]`` is the minimum traffic of the fused op, the same for every contender (s = bytes
per element; the O(rows + d) statistics and affine terms are left out)::

    forward:            read x, residual; write out                     3·rows·d·s
    forward + backward: the forward, then read dout, x, residual;
                        write dx, dresidual                              8·rows·d·s

``extra_info["flops"]`` counts the arithmetic per element: forward 9 (x + λ·r: 2, mean: 1, centre: 1,
variance: 2, scale by rstd: 1, affine: 2); the backward 14 more (dout·w: 1, ∂w and ∂b sums: 3, the two
row means: 3, dx: 4, ∂residual = λ·dx: 1, ∂λ sum: 2), so 23·rows·d with the backward.

bench/conftest.py's ``run_timed`` turns it into bytes_per_s (GB/s) and, on CUDA, the fraction of the
measured copy bandwidth.

Sizes: rows = 16384, d ∈ {1024, 4096}, bfloat16 on CUDA; rows = 256, d = 256, float32 on CPU.
"""
import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from lambdaskip.ops import triton_can_run
from lambdaskip.ops.lambda_norm import lambda_norm
from lambdaskip.reference.lambda_norm import lambda_norm as reference_lambda_norm
from lambdaskip.testing import assert_close

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
SIZES = [(16384, 1024), (16384, 4096)] if CUDA else [(256, 256)]
INTERPRETER_SIZE = (8, 64)
LAM = -1.5
EPS = 1e-5
CONTENDERS = ("lambdaskip", "eager", "compiled", "liger", "fla", "mamba_ssm")


def eager(x, res, lam, w, b):
    return F.layer_norm(x + lam * res, (x.shape[-1],), w, b, EPS)


def _import_baseline(name):
    """The published kernel's callable ``(x, res, lam, w, b) -> out``, or a pytest.skip with the reason."""
    if not CUDA:
        pytest.skip(f"{name}: its Triton kernels need CUDA")
    module = {"liger": "liger_kernel", "fla": "fla", "mamba_ssm": "mamba_ssm"}[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{name}: {module} is not installed")
    if name == "mamba_ssm" and importlib.util.find_spec("selective_scan_cuda") is None:
        # a build without its CUDA extension imports once this stand-in exists; layer_norm does not use it
        sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        if name == "liger":
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction
            return lambda x, res, lam, w, b: LigerLayerNormFunction.apply(x + res, w, b, EPS)
        if name == "fla":
            from fla.modules.layernorm import layer_norm
            return lambda x, res, lam, w, b: layer_norm(x, w, b, residual=res, eps=EPS)
        from mamba_ssm.ops.triton.layer_norm import layer_norm_fn
        return lambda x, res, lam, w, b: layer_norm_fn(x, w, b, residual=res, eps=EPS)
    except Exception as error:  # ImportError, or a compiled piece failing to load
        pytest.skip(f"{name}: {module} not importable: {type(error).__name__}: {error}")


def _contender(name, benchmark):
    """(callable, the λ it computes with) for ``name``, or a pytest.skip."""
    if name == "lambdaskip":
        return (lambda x, res, lam, w, b: lambda_norm(x, res, lam, w, b, EPS)), LAM
    if name == "eager":
        return eager, LAM
    if name == "compiled":
        if not CUDA and benchmark.disabled:
            pytest.skip("compiled: inductor's CPU compile outlasts the whole smoke run")
        return torch.compile(eager), LAM
    return _import_baseline(name), 1.0


def _inputs(rows, d, requires_grad):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(rows, d, generator=g), torch.randn(rows, d, generator=g),
               1 + 0.1 * torch.randn(d, generator=g), 0.1 * torch.randn(d, generator=g)]
    x, res, w, b = (t.to(DEVICE, DTYPE).requires_grad_(requires_grad) for t in tensors)
    lam = torch.tensor(LAM, device=DEVICE, requires_grad=requires_grad)
    return x, res, lam, w, b


def bytes_moved(rows, d, backward):
    """Minimal bytes of the fused op (formula in the module docstring)."""
    return (8 if backward else 3) * rows * d * torch.finfo(DTYPE).bits // 8


def flops(rows, d, backward):
    """Arithmetic of the fused op (counts in the module docstring)."""
    return (23 if backward else 9) * rows * d


def _run(benchmark, run_timed, name, fn, lam_used, rows, d, backward):
    benchmark.group = f"lambda_norm rows={rows} d={d} {'fwd+bwd' if backward else 'fwd'} {DTYPE}"
    inputs = _inputs(rows, d, backward)
    x, res, _, w, b = (t.detach().double() for t in inputs)
    assert_close(fn(*inputs), reference_lambda_norm(x, res, lam_used, w, b, EPS), DTYPE, what=name)
    dout = torch.randn(rows, d, device=DEVICE, dtype=DTYPE)

    def step():
        out = fn(*inputs)
        return torch.autograd.grad(out, inputs, dout, allow_unused=True) if backward else out

    run_timed(step, bytes=bytes_moved(rows, d, backward), flops=flops(rows, d, backward), impl=name, rows=rows, d=d,
              dtype=str(DTYPE),
              backward=backward, lam=lam_used, interpreted=name == "triton-interpreter")


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("rows,d", SIZES, ids=[f"rows{r}-d{d}" for r, d in SIZES])
@pytest.mark.parametrize("name", CONTENDERS)
def test_lambda_norm(benchmark, run_timed, name, rows, d, backward):
    fn, lam_used = _contender(name, benchmark)
    _run(benchmark, run_timed, name, fn, lam_used, rows, d, backward)


@pytest.mark.skipif(CUDA, reason="the interpreter run is the CPU stand-in for the CUDA kernels")
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_lambda_norm_triton_interpreter(benchmark, run_timed, backward):
    if not triton_can_run(torch.device("cpu")):
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (bench/conftest.py sets it)")
    fn = lambda x, res, lam, w, b: lambda_norm(x, res, lam, w, b, EPS, backend="triton")  # noqa: E731
    _run(benchmark, run_timed, "triton-interpreter", fn, LAM, *INTERPRETER_SIZE, backward)
