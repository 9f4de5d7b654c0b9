"""mamba_ssm's own ``Mamba2Simple`` with ``mamba_chunk_scan_combined`` replaced by our ``ssd_scan`` (Triton,
interpreted on CPU), unchanged otherwise: outputs and every parameter's gradient match mamba_ssm's own
Triton path, with and without packed sequences (``seq_idx``) and learnable initial states.

Skipped unless mamba_ssm is importable. Its released package needs its CUDA extension at import; a build
with ``MAMBA_SKIP_CUDA_BUILD=TRUE`` imports once an empty ``selective_scan_cuda`` stands in for it (the
SSD path does not use it). On CPU its autotuners get one config (the interpreter cannot time several) and
its ``torch.cuda.device(...)`` contexts become no-ops (and its gated norm sees a 2-SM "device").
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


@pytest.fixture
def mamba2_simple(monkeypatch):
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm is not installed")
    if importlib.util.find_spec("selective_scan_cuda") is None:
        monkeypatch.setitem(sys.modules, "selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        module = importlib.import_module("mamba_ssm.modules.mamba2_simple")
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


def _grads(model, u, seq_idx):
    y = model(u, seq_idx=seq_idx)
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
