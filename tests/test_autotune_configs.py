"""Every GPU config executed: each autotuning config of each SSD kernel, and each block size the λ-norm
launchers can pick (the fused kernel's, the looped kernel's, both sides of the switch), against float64.

Elsewhere the interpreter runs each autotuned kernel with its one interpreter config, so the GPU configs
(BLOCK 64, 128-row tiles, …) would only be compiled, never checked numerically. Here the kernel under test
runs with one GPU config at a time (the autotuner's list swapped for that config), the others as usual,
at sizes where that config's masks and tails matter: a chunk of 64 with a ragged second chunk (37 tokens),
headdim 20 and dstate 24 (not multiples of any block), so a 128-row or 64-column tile is mostly masked;
small steps (dt ≤ 0.06) so the initial state still weighs after a chunk and chunk-boundary errors show.
Under the interpreter ``num_warps``/``num_stages`` change nothing, so each distinct block choice runs once
there; on CUDA every config runs. Outputs and every gradient are compared with the float64 reference.
"""
import importlib
import pkgutil
import zlib

import pytest
import torch

import lambdaskip.kernels as kernel_package
from lambdaskip.ops import lambda_norm, ssd_scan
from lambdaskip.reference.lambda_norm import lambda_norm as reference_lambda_norm
from lambdaskip.reference.ssd import ssd_scan_chunked
from lambdaskip.testing import DEVICE, assert_close, count_custom_ops

triton = pytest.importorskip("triton")

from lambdaskip.kernels import lambda_norm as lambda_norm_kernels  # noqa: E402
from lambdaskip.kernels.ssd_configs import gpu_configs, interpreting  # noqa: E402


def autotuned_kernels() -> dict:
    """name → Autotuner for every autotuned kernel in lambdaskip.kernels (found by type, not by file)."""
    found = {}
    for info in pkgutil.iter_modules(kernel_package.__path__, kernel_package.__name__ + "."):
        for name, value in vars(importlib.import_module(info.name)).items():
            if isinstance(value, triton.runtime.autotuner.Autotuner):
                found[name] = value
    return found


# The decode step's autotuned kernel runs outside the scan: checked by its own test below.
STEP_KERNEL = "_ssd_step_kernel"


def ssd_cases(names=None) -> list:
    cases, seen = [], set()
    for name in sorted(names or set(autotuned_kernels()) - {STEP_KERNEL}):
        for config in gpu_configs(name):
            key = (name, tuple(sorted(config.kwargs.items())))
            key += () if interpreting() else (config.num_warps, config.num_stages)
            if key not in seen:
                seen.add(key)
                cases.append(pytest.param(name, config, id=f"{name}-{config}".replace(" ", "")))
    return cases


@pytest.mark.parametrize("name,config", ssd_cases())
def test_ssd_kernel_config_matches_float64(name, config, monkeypatch):
    tuner = autotuned_kernels()[name]
    monkeypatch.setattr(tuner, "configs", [config])
    monkeypatch.setattr(tuner, "cache", {})
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}{config}".encode()))
    b, l, h, p, n = 1, 101, 2, 20, 24
    inputs = {"x": torch.randn(b, l, h, p, generator=g), "dt": 0.01 + 0.05 * torch.rand(b, l, h, generator=g),
              "A": -0.1 - 1.5 * torch.rand(h, generator=g), "B": torch.randn(b, l, 1, n, generator=g),
              "C": torch.randn(b, l, 1, n, generator=g), "initial_states": torch.randn(b, h, p, n, generator=g)}
    weights = [torch.randn(b, l, h, p, generator=g, dtype=torch.float64), torch.randn(b, h, p, n, generator=g,
                                                                                      dtype=torch.float64)]

    # the per-sequence final states run only for packed rows: two sequences, the boundary inside chunk 0
    packed = {"cu_seqlens": torch.tensor([0, 45, l], device=DEVICE),
              "return_varlen_states": True} if name == "_chunk_state_varlen_kernel" else {}

    def run(dtype, fn, **kw):
        leaves = {k: v.to(DEVICE, dtype).requires_grad_() for k, v in inputs.items()}
        y, final, *varlen = fn(*(leaves[k] for k in "x dt A B C".split()), 64, initial_states=leaves["initial_states"],
                               return_final_states=True, **packed, **kw)
        loss = (y.double() * weights[0].to(DEVICE)).sum() + (final.double() * weights[1].to(DEVICE)).sum()
        return [y, final, *varlen, *torch.autograd.grad(loss, list(leaves.values()))]

    with count_custom_ops() as calls:
        got = run(torch.float32, ssd_scan, backend="triton")
    assert calls["ssd_scan_core"] == 1 and calls["ssd_scan_core_backward"] == 1, calls
    want = run(torch.float64, ssd_scan_chunked)
    names = ["y", "final_states", *(["varlen_states"] if packed else []), *(f"d{k}" for k in inputs)]
    for what, a, e in zip(names, got, want, strict=True):
        assert_close(a, e, torch.float32, what=f"{name} {config}: {what}")


@pytest.mark.parametrize("name,config", ssd_cases([STEP_KERNEL]))
def test_ssd_step_kernel_config_matches_float64(name, config, monkeypatch):
    """Each decode-step config (a BLOCK_P-row slice of the state per program) at headdim 20, dstate 24."""
    from lambdaskip.ops import ssd_step
    from lambdaskip.reference.ssd_step import ssd_step as reference_ssd_step
    tuner = autotuned_kernels()[name]
    monkeypatch.setattr(tuner, "configs", [config])
    monkeypatch.setattr(tuner, "cache", {})
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}{config}".encode()))
    b, h, p, n = 3, 2, 20, 24
    args = [torch.randn(b, h, p, n, generator=g), torch.randn(b, h, p, generator=g), torch.rand(b, h, generator=g),
            -0.1 - torch.rand(h, generator=g), torch.randn(b, 1, n, generator=g), torch.randn(b, 1, n, generator=g)]
    D, z = torch.randn(h, generator=g), torch.randn(b, h, p, generator=g)
    state = args[0].to(DEVICE).clone()
    with count_custom_ops() as calls:
        y = ssd_step(state, *(a.to(DEVICE) for a in args[1:]), D=D.to(DEVICE), z=z.to(DEVICE), backend="triton")
    assert calls["ssd_step"] == 1, calls
    want_y, want_state = reference_ssd_step(*(a.double() for a in args), D=D.double(), z=z.double())
    assert_close(state, want_state, torch.float32, what=f"{name} {config}: state")
    assert_close(y, want_y, torch.float32, what=f"{name} {config}: y")


def lambda_norm_cases() -> list:
    """(d, norm): every fused block from 16 columns up to MAX_FUSED_D with a tail, the largest fused row and
    the first looped one (the switch), and a looped row with a ragged last chunk."""
    top, chunk = lambda_norm_kernels.MAX_FUSED_D, lambda_norm_kernels.CHUNK_D
    cases = [(2**k - 3, "layernorm") for k in range(4, top.bit_length())]
    cases += [(top, norm) for norm in ("layernorm", "rmsnorm", "l2")]
    cases += [(top + 1, norm) for norm in ("layernorm", "rmsnorm", "l2")]
    return cases + [(top + chunk + 5, "layernorm")]


@pytest.mark.parametrize("d,norm", lambda_norm_cases())
def test_lambda_norm_block_matches_float64(d, norm, monkeypatch):
    launched = []
    for kernel_name in ("_forward_fused_kernel", "_forward_looped_kernel", "_backward_fused_kernel",
                        "_backward_looped_kernel"):
        kernel = getattr(lambda_norm_kernels, kernel_name)

        def spy(*args, _run=kernel.run, _name=kernel_name, **kwargs):
            launched.append((_name, kwargs["BLOCK_D"], kwargs["num_warps"]))
            return _run(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", spy, raising=False)
    g = torch.Generator().manual_seed(d)
    x, r = (torch.randn(2, 3, d, generator=g, dtype=torch.float64) for _ in range(2))
    w, bias = 1 + 0.5 * torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    bias = bias if norm == "layernorm" else None
    dout, dh = (torch.randn(2, 3, d, generator=g, dtype=torch.float64) for _ in range(2))

    def run(dtype, backend):
        leaves = [t.float().to(DEVICE, dtype).requires_grad_() for t in (x, r, torch.tensor(-0.7), w, bias)
                  if t is not None]
        out, h, mu = lambda_norm(*leaves[:4], leaves[4] if len(leaves) == 5 else None, norm=norm, prenorm=True,
                                 return_mu=True, backend=backend)
        loss = (out.double() * dout.to(DEVICE)).sum() + (h.double() * dh.to(DEVICE)).sum()
        return [out, h, mu, *torch.autograd.grad(loss, leaves)]

    with count_custom_ops() as calls:
        got = run(torch.float32, "triton")
    assert calls["lambda_norm_fwd"] == calls["lambda_norm_bwd"] == 1, calls
    block, warps, looped = lambda_norm_kernels._block_and_warps(d, lambda_norm_kernels.MAX_FUSED_D)
    kind = "looped" if looped else "fused"
    assert [(n, b, nw) for n, b, nw in launched] == [(f"_forward_{kind}_kernel", block, warps),
                                                      (f"_backward_{kind}_kernel", block, warps)], launched
    want = run(torch.float64, "reference")
    dlam_terms = (want[3] * r.float().double().to(DEVICE)).abs().sum().item()  # dλ = Σ dx·residual
    for what, a, e in zip(["out", "h", "mu", "dx", "dresidual", "dlam", "dweight", "dbias"], got, want):
        assert_close(a, e, torch.float32, what=f"d={d} {norm} ({kind}, BLOCK_D={block}): {what}", op="lambda_norm",
                     scale=dlam_terms if what == "dlam" else None)
