"""The precision the math runs in, shared by the references and the kernels' launchers."""
from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The widest floating dtype among ``tensors`` (None skipped), at least float32 (float64 stays)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype
