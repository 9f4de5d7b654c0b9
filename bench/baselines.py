"""Published kernels as benchmark baselines, imported on demand (a pytest.skip with the reason when absent)."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def mamba_ssm_function(module: str, name: str):
    """``mamba_ssm.<module>.<name>``, e.g. ``("ops.triton.ssd_combined", "mamba_chunk_scan_combined")``.

    A mamba_ssm build without its CUDA extension (MAMBA_SKIP_CUDA_BUILD) imports once an empty
    ``selective_scan_cuda`` module stands in for it; the Triton paths do not use it.
    """
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm is not installed")
    if importlib.util.find_spec("selective_scan_cuda") is None:
        sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        return getattr(importlib.import_module(f"mamba_ssm.{module}"), name)
    except Exception as error:  # ImportError, or another compiled piece failing to load
        pytest.skip(f"mamba_ssm not importable: {type(error).__name__}: {error}")
