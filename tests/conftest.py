"""Test-suite setup.

- Without CUDA, Triton kernels run under Triton's CPU interpreter: TRITON_INTERPRET=1 is set here,
  before anything imports triton. Kernel tests put their tensors on ``lambdaskip.testing.DEVICE`` (CUDA
  where there is one), so the same command is right on both kinds of machine.
- Every buffer allocated with torch.empty / empty_like / new_empty during a test is filled with NaN,
  so a kernel that leaves an output element unwritten (a missing mask, a wrong grid) fails loudly.
- Tolerances live in lambdaskip.testing (one table, justified there).
"""
import os

import pytest
import torch

from lambdaskip.testing import skip_gpu_tests_without_cuda

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _nan_filled(factory):
    def wrapper(*args, **kwargs):
        out = factory(*args, **kwargs)
        if out.is_floating_point() or out.is_complex():
            out.fill_(float("nan"))
        return out
    return wrapper


@pytest.fixture(autouse=True)
def nan_filled_empty(monkeypatch):
    monkeypatch.setattr(torch, "empty", _nan_filled(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _nan_filled(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", _nan_filled(torch.Tensor.new_empty))
    yield


def pytest_collection_modifyitems(config, items):
    skip_gpu_tests_without_cuda(items)
