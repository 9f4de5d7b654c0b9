"""Packed vs padded training throughput: a batch of variable-length sequences through the SSD scan.

The batch: ``nseqs`` sequences with lengths drawn (seeded) uniformly in [L/4, L], trained either **packed**
(one row of Σ lengths tokens, ``seq_idx`` resetting the state at each boundary) or **padded** (``nseqs``
rows of L_max = max length, the tail of each row computed and thrown away). Timed: forward + backward of
``ssd_scan`` and of a ``Mamba2Mixer`` (its conv masked at the boundaries too). Implementations:
``reference`` (the chunked PyTorch form), ``triton`` (our kernels; on CPU only under TRITON_INTERPRET=1
and at the smoke size, timings labelled ``interpreted``) and, for the scan, ``mamba_ssm``
(``mamba_chunk_scan_combined`` with ``seq_idx``; CUDA only, skipped with the reason otherwise). On CPU the
sizes are small so that ``pytest bench/bench_ssd_packed.py --benchmark-disable`` finishes in seconds; on
CUDA they are Mamba-2 training shapes (``--bench-full`` / LAMBDASKIP_BENCH_FULL=1 adds L = 8192). The scan
runs in bfloat16 on CUDA (float32 on CPU); the mixer keeps float32 parameters.

Before timing, each layout's output is checked: the scan's against the float64 reference on the same
inputs, the mixer's against the same mixer in float64 on the reference backend; and the packed output of
every sequence equals its padded row's. Each benchmark records in ``benchmark.extra_info``:

- ``useful_tokens`` (Σ lengths), ``processed_tokens`` (Σ lengths packed, nseqs · L_max padded) and
  ``useful_tokens_per_s`` (useful tokens / median time);
- ``bytes`` and ``flops`` of the scan over the processed tokens (bench_ssd's formulas, forward + backward:
  2× and 3× the forward's), the mixer's projections added for the mixer (2·d_model·d_in_proj and
  2·d_inner·d_model FLOPs a token, × 3 for forward + backward);
- ``speedup_over_padded`` on the packed run: padded median time / packed median time of the same
  implementation and size, when the padded run was timed first in the session (the parametrisation's order).

Groups name the layout and the exact size (the lengths follow from it: seeded), so bench/report.py compares
implementations within a layout; the packed/padded ratio is ``speedup_over_padded``.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
from baselines import mamba_ssm_function
from bench_ssd import bytes_forward, flops_forward

from lambdaskip.modules import Mamba2Mixer
from lambdaskip.ops import prefer_backend
from lambdaskip.ops.ssd import ssd_scan
from lambdaskip.testing import assert_close

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
SMOKE = (3, 32, 2, 16, 16, 16)  # (nseqs, L, nheads, headdim, dstate, chunk): the interpreter's only size on CPU
if CUDA:
    SIZES = [(8, 2048, 24, 64, 128, 256), (32, 512, 24, 64, 128, 256)]  # mamba2-130m heads, short and long
    if os.environ.get("LAMBDASKIP_BENCH_FULL") == "1":
        SIZES.append((8, 8192, 24, 64, 128, 256))
else:
    SIZES = [SMOKE, (4, 128, 2, 16, 16, 32)]
LAYOUTS = ("padded", "packed")  # padded first: the packed run reports the speedup over it
_padded_seconds: dict[str, float] = {}


def size_name(size) -> str:
    return "n{}-L{}-h{}-p{}-d{}-chunk{}".format(*size)


def lengths_of(size) -> list[int]:
    nseqs, L = size[:2]
    gen = torch.Generator().manual_seed(nseqs * 7919 + L)
    return torch.randint(L // 4, L + 1, (nseqs,), generator=gen).tolist()


def _scan_impl(impl: str, size):
    if impl == "triton":
        if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton needs CUDA here, or TRITON_INTERPRET=1 on CPU")
        if not CUDA and size != SMOKE:
            pytest.skip(f"the Triton interpreter runs on CPU at {size_name(SMOKE)} only")
        return lambda *a, **k: ssd_scan(*a, **k, backend="triton")
    if impl == "reference":
        return lambda *a, **k: ssd_scan(*a, **k, backend="reference")
    if not CUDA:
        pytest.skip("mamba_ssm's kernels need CUDA")
    return mamba_ssm_function("ops.triton.ssd_combined", "mamba_chunk_scan_combined")


def _layout(lengths, layout: str):
    """(batch, seqlen, seq_idx or None, index of the useful tokens in the flattened (batch·seqlen) rows)."""
    if layout == "packed":
        seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))
        return 1, sum(lengths), seq_idx[None].to(DEVICE), torch.arange(sum(lengths), device=DEVICE)
    L = max(lengths)
    useful = torch.cat([torch.arange(n) + i * L for i, n in enumerate(lengths)]).to(DEVICE)
    return len(lengths), L, None, useful


def _scan_inputs(size, b, l, dtype=DTYPE):
    h, p, n, chunk_size = size[2:]
    gen = torch.Generator().manual_seed(l)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype)

    wide = torch.float64 if dtype == torch.float64 else torch.float32  # dt, A and D: float32 beside 16-bit x
    args = [rand(b, l, h, p), rand(b, l, h, scale=0.5).to(wide), -torch.rand(h, generator=gen).to(DEVICE, wide) - 0.5,
            rand(b, l, 1, n), rand(b, l, 1, n)]
    return args, dict(chunk_size=chunk_size, D=torch.ones(h, device=DEVICE, dtype=wide), dt_softplus=True)


def _useful(y, useful):
    return y.flatten(0, 1)[useful]


def _record(run_timed, benchmark, fn, *, key, useful_tokens, processed_tokens, bytes, flops, **info):
    info = {"dtype": str(DTYPE), **info}
    result = run_timed(fn, bytes=bytes, flops=flops, useful_tokens=useful_tokens, processed_tokens=processed_tokens,
                       interpreted=info["impl"] == "triton" and not CUDA, **info)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        seconds = stats.stats.median
        benchmark.extra_info["useful_tokens_per_s"] = useful_tokens / seconds
        if info["layout"] == "padded":
            _padded_seconds[key] = seconds
        elif key in _padded_seconds:
            benchmark.extra_info["speedup_over_padded"] = _padded_seconds[key] / seconds
    return result


@pytest.mark.parametrize("size", SIZES, ids=size_name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", ("triton", "reference", "mamba_ssm"))
def test_ssd_scan_packed_vs_padded(run_timed, benchmark, impl, layout, size):
    fn = _scan_impl(impl, size)
    lengths = lengths_of(size)
    benchmark.group = f"ssd_scan {layout} forward+backward {size_name(size)} {DTYPE}"
    b, l, seq_idx, useful = _layout(lengths, layout)
    args, kwargs = _scan_inputs(size, b, l)
    with torch.no_grad():
        y = fn(*args, **kwargs, seq_idx=seq_idx)
        y64 = ssd_scan(*(t.double() for t in args), **{**kwargs, "D": kwargs["D"].double()}, seq_idx=seq_idx,
                       backend="reference")
    assert_close(y, y64, DTYPE, what=f"{layout} ssd_scan {size_name(size)}")
    if layout == "packed":  # each sequence as its own padded row gives the same outputs
        pb, pl, _, p_useful = _layout(lengths, "padded")
        p_args, p_kwargs = _scan_inputs(size, pb, pl, torch.float64)
        for i, t in enumerate(p_args):  # the packed tokens scattered into the padded rows; A as packed
            source = args[i].double()
            p_args[i] = source if t.dim() == 1 else \
                t.flatten(0, 1).index_copy(0, p_useful, source.flatten(0, 1)).view(t.shape)
        with torch.no_grad():
            y_padded = ssd_scan(*p_args, **p_kwargs, backend="reference")
        assert_close(_useful(y, useful), _useful(y_padded, p_useful), DTYPE, what="packed vs padded")
    leaves = [t.requires_grad_() for t in args[:5]]

    def forward_backward():
        out = fn(*leaves, **kwargs, seq_idx=seq_idx)
        return torch.autograd.grad(_useful(out, useful).float().square().sum(), leaves)

    (_, _, h, p, n, chunk) = size
    grads = _record(run_timed, benchmark, forward_backward, key=f"scan {impl} {size_name(size)}", impl=impl,
                    layout=layout, size=size_name(size), useful_tokens=sum(lengths), processed_tokens=b * l,
                    bytes=2 * bytes_forward(b, l, h, p, n, 1, DTYPE), flops=3 * flops_forward(b, l, h, p, n, 1, chunk))
    assert all(torch.isfinite(g.float()).all() for g in grads)


@pytest.mark.parametrize("size", SIZES, ids=size_name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", ("triton", "reference"))
def test_mamba2_mixer_packed_vs_padded(run_timed, benchmark, impl, layout, size):
    _scan_impl(impl, size)  # skips where this implementation cannot run
    nseqs, L, h, p, n, chunk = size
    lengths = lengths_of(size)
    benchmark.group = f"Mamba2Mixer {layout} forward+backward {size_name(size)} torch.float32"
    torch.manual_seed(0)
    d_model = h * p // 2
    mixer = Mamba2Mixer(d_model, d_state=n, headdim=p, chunk_size=chunk).to(DEVICE)  # float32 parameters
    mixer64 = copy.deepcopy(mixer).double()
    b, l, seq_idx, useful = _layout(lengths, layout)
    u = torch.randn(b, l, d_model, generator=torch.Generator().manual_seed(l)).to(DEVICE)
    with torch.no_grad(), prefer_backend(impl):
        y = mixer(u, seq_idx=seq_idx)
    with torch.no_grad(), prefer_backend("reference"):
        y64 = mixer64(u.double(), seq_idx=seq_idx)
    assert_close(y, y64, torch.float32, what=f"{layout} Mamba2Mixer {size_name(size)}")
    params = list(mixer.parameters())

    def forward_backward():
        with prefer_backend(impl):
            out = mixer(u, seq_idx=seq_idx)
            return torch.autograd.grad(_useful(out, useful).float().square().sum(), params)

    d_in_proj = mixer.in_proj.out_features
    flops = 3 * (flops_forward(b, l, h, p, n, 1, chunk) + 2 * b * l * d_model * (d_in_proj + mixer.d_inner))
    bytes_ = 2 * bytes_forward(b, l, h, p, n, 1, torch.float32) + 2 * b * l * d_model * 4
    grads = _record(run_timed, benchmark, forward_backward, key=f"mixer {impl} {size_name(size)}", impl=impl,
                    layout=layout, size=size_name(size), useful_tokens=sum(lengths), processed_tokens=b * l,
                    bytes=bytes_, flops=flops, dtype=str(torch.float32))
    assert all(torch.isfinite(g.float()).all() for g in grads)
