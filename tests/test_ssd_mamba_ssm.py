"""mamba_ssm's own ``Mamba2Simple`` and ``Mamba2`` with ``mamba_chunk_scan_combined`` replaced by our ``ssd_scan``
(Triton, interpreted on CPU), unchanged otherwise: outputs and every parameter's gradient match mamba_ssm's
own Triton path, with and without packed sequences (``seq_idx``, ``cu_seqlens``) and learnable initial
states; and ``mamba_chunk_scan_combined`` itself against ours with initial states, packed rows and varlen
states.

Skipped unless mamba_ssm is importable. Its released package needs its CUDA extension at import; a build
with ``MAMBA_SKIP_CUDA_BUILD=TRUE`` imports once an empty ``selective_scan_cuda`` stands in for it (the
SSD path does not use it). On CPU its autotuners get one config (the interpreter cannot time several) and
its ``torch.cuda.device(...)`` contexts become no-ops (and its gated norm sees a 2-SM "device").
``Mamba2`` takes ``seq_idx`` only through the causal_conv1d package (CUDA only; its own conv asserts
``seq_idx is None``), so the packed ``Mamba2`` cases give both paths the same plain-PyTorch boundary-masked
conv (:func:`_conv_stand_in`) and compare the scans; its varlen inference path needs causal_conv1d too and is
not run.
"""
import contextlib
import functools
import importlib
import importlib.util
import sys
import types

import pytest
import torch

from lambdaskip.ops import ssd_scan
from lambdaskip.testing import assert_close

triton = pytest.importorskip("triton")


def _import_mamba(monkeypatch, name):
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm is not installed")
    if importlib.util.find_spec("selective_scan_cuda") is None:
        monkeypatch.setitem(sys.modules, "selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        module = importlib.import_module(name)
    except Exception as error:  # ImportError, or another compiled piece failing to load
        pytest.skip(f"mamba_ssm not importable: {type(error).__name__}: {error}")
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "get_device_properties",  # its gated norm's backward sizes its grid by it
                            lambda device: types.SimpleNamespace(multi_processor_count=2))
        for name, kernels in list(sys.modules.items()):
            if name.startswith("mamba_ssm.ops.triton"):
                for value in vars(kernels).values():
                    if isinstance(value, triton.runtime.Autotuner) and len(value.configs) > 1:
                        monkeypatch.setattr(value, "configs", value.configs[:1])
    return module


@pytest.fixture
def mamba2_simple(monkeypatch):
    return _import_mamba(monkeypatch, "mamba_ssm.modules.mamba2_simple")


@pytest.fixture
def mamba2(monkeypatch):
    return _import_mamba(monkeypatch, "mamba_ssm.modules.mamba2")


@pytest.fixture
def ssd_combined(monkeypatch):
    return _import_mamba(monkeypatch, "mamba_ssm.ops.triton.ssd_combined")


def _grads(model, u, seq_idx, **kwargs):
    y = model(u, seq_idx=seq_idx, **kwargs)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    names, params = zip(*model.named_parameters())
    return y, dict(zip(names, torch.autograd.grad((y * dy).sum(), params)))


@pytest.mark.parametrize("packed", [False, True])
def test_mamba2_simple_runs_on_our_scan(mamba2_simple, monkeypatch, packed):
    torch.manual_seed(0)
    model = mamba2_simple.Mamba2Simple(32, d_state=16, headdim=16, ngroups=2, chunk_size=16,
                                       learnable_init_states=True, use_mem_eff_path=False)
    with torch.no_grad():
        model.init_states.normal_()
    u = torch.randn(1, 37, 32, generator=torch.Generator().manual_seed(2))
    seq_idx = torch.tensor([[0] * 5 + [1] * 19 + [2] * 13], dtype=torch.int32) if packed else None
    y_mamba, g_mamba = _grads(model, u, seq_idx)
    monkeypatch.setattr(mamba2_simple, "mamba_chunk_scan_combined", functools.partial(ssd_scan, backend="triton"))
    y_ours, g_ours = _grads(model, u, seq_idx)
    assert_close(y_ours, y_mamba, torch.float32, "y")
    for name in g_mamba:
        assert_close(g_ours[name], g_mamba[name], torch.float32, f"d{name}")


def _conv_stand_in(x, weight, bias=None, seq_idx=None, activation=None, **_):
    """causal_conv1d_fn's contract in plain PyTorch: x (b, d, l), weight (d, w), bias (d,), seq_idx (b, l); a
    token sees only the earlier tokens of its own sequence."""
    width = weight.shape[1]
    out = bias[None, :, None].expand_as(x) if bias is not None else torch.zeros_like(x)
    for lag in range(width):
        shifted = torch.nn.functional.pad(x, (lag, 0))[..., :x.shape[-1]]
        if seq_idx is not None and lag:
            same = torch.nn.functional.pad(seq_idx[:, lag:] == seq_idx[:, :-lag], (lag, 0))
            shifted = shifted * same[:, None]
        out = out + shifted * weight[None, :, width - 1 - lag, None]
    return torch.nn.functional.silu(out) if activation in ("silu", "swish") else out


@pytest.mark.parametrize("packing", ["none", "seq_idx", "seq_idx+cu_seqlens"])
def test_mamba2_runs_on_our_scan(mamba2, monkeypatch, packing):
    torch.manual_seed(0)
    model = mamba2.Mamba2(32, d_state=16, headdim=16, ngroups=2, chunk_size=16, D_has_hdim=packing == "seq_idx",
                          dt_limit=(0.01, 0.5), use_mem_eff_path=False)
    u = torch.randn(1, 37, 32, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([5, 19, 13])
    kwargs = {}
    if packing != "none":
        monkeypatch.setattr(mamba2, "causal_conv1d_fn", _conv_stand_in)
        kwargs["seq_idx"] = torch.repeat_interleave(torch.arange(3, dtype=torch.int32), lengths)[None]
    if packing == "seq_idx+cu_seqlens":  # Mamba2 hands cu_seqlens on to the scan (mamba's resets at seq_idx only)
        kwargs["cu_seqlens"] = torch.tensor([0, *lengths.cumsum(0).tolist()], dtype=torch.int32)
    y_mamba, g_mamba = _grads(model, u, **{"seq_idx": None, **kwargs})
    monkeypatch.setattr(mamba2, "mamba_chunk_scan_combined", functools.partial(ssd_scan, backend="triton"))
    y_ours, g_ours = _grads(model, u, **{"seq_idx": None, **kwargs})
    assert_close(y_ours, y_mamba, torch.float32, "y")
    assert set(g_ours) == set(g_mamba)
    for name in g_mamba:
        assert_close(g_ours[name], g_mamba[name], torch.float32, f"d{name}")


@pytest.mark.parametrize("lengths", [(21, 9, 7), (5, 19, 13)], ids=["first-spans-chunks", "first-in-chunk-0"])
def test_chunk_scan_combined_with_initial_states_packed(ssd_combined, lengths):
    """mamba_chunk_scan_combined against ours with initial states, seq_idx and cu_seqlens: outputs, final
    states, every gradient (mamba refuses a backward with varlen states, so those run forward only). Varlen
    states agree except where mamba drops the initial state: a first sequence that ends in the first chunk;
    there ours equals mamba's final state of that sequence run alone."""
    gen = torch.Generator().manual_seed(sum(lengths[:1]))
    b, l, h, p, g, n, chunk = 1, sum(lengths), 4, 16, 2, 16, 16
    t = {"x": torch.randn(b, l, h, p, generator=gen), "dt": torch.randn(b, l, h, generator=gen) * 0.5,
         "A": -torch.rand(h, generator=gen) - 0.2, "B": torch.randn(b, l, g, n, generator=gen),
         "C": torch.randn(b, l, g, n, generator=gen), "D": torch.randn(h, generator=gen),
         "z": torch.randn(b, l, h, p, generator=gen), "dt_bias": torch.randn(h, generator=gen) * 0.5 - 1,
         "initial_states": torch.randn(b, h, p, n, generator=gen)}
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))[None]
    dy, dfinal = torch.randn(b, l, h, p, generator=gen), torch.randn(b, h, p, n, generator=gen)

    def run(fn, **kw):
        leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
        args = [leaves.pop(k) for k in ("x", "dt", "A", "B", "C")]
        y, final = fn(*args, chunk, **leaves, seq_idx=seq_idx, dt_softplus=True, return_final_states=True, **kw)
        grads = torch.autograd.grad((y * dy).sum() + (final * dfinal).sum(), [*args, *leaves.values()])
        with torch.no_grad():
            _, varlen = fn(*args, chunk, **leaves, seq_idx=seq_idx, cu_seqlens=cu, dt_softplus=True,
                           return_varlen_states=True, **kw)
        return y, final, varlen, grads

    mamba = run(ssd_combined.mamba_chunk_scan_combined)
    ours = run(ssd_scan, backend="triton")
    for name, a, e in zip(("y", "final_states"), ours[:2], mamba[:2]):
        assert_close(a, e, torch.float32, name)
    for name, a, e in zip(("x", "dt", "A", "B", "C", *list(t)[5:]), ours[3], mamba[3]):
        assert_close(a, e, torch.float32, f"d{name}")
    first_in_chunk_0 = lengths[0] <= chunk
    assert_close(ours[2][int(first_in_chunk_0):], mamba[2][int(first_in_chunk_0):], torch.float32, "varlen_states")
    if first_in_chunk_0:
        e = lengths[0]
        with torch.no_grad():
            _, alone = ssd_combined.mamba_chunk_scan_combined(
                t["x"][:, :e], t["dt"][:, :e], t["A"], t["B"][:, :e], t["C"][:, :e], chunk, D=t["D"],
                z=t["z"][:, :e], dt_bias=t["dt_bias"], initial_states=t["initial_states"], dt_softplus=True,
                return_final_states=True)
        assert_close(ours[2][0], alone[0], torch.float32, "varlen_states[0]")
