"""Multi-head softmax attention, dispatched to PyTorch's fused SDPA or the explicit reference."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from lambdaskip import reference
from lambdaskip.common import check_same_device, check_tensor
from lambdaskip.ops._backend import choose_backend, reference_preferred


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              scale: float | None = None, *, backend: str = "auto") -> torch.Tensor:
    """``softmax(Q Kᵀ·scale) V`` per head.

    Args:
        q, k, v: (batch, nheads, seqlen, headdim), one floating dtype, one device.
        causal: a query attends only to keys at or before its position.
        scale: logit scale, default 1/sqrt(headdim).
        backend: ``"auto"`` (torch's fused ``scaled_dot_product_attention``, or the reference inside
            ``prefer_backend("reference")``) or ``"reference"``; ``"sdpa"`` is a deprecated spelling of "auto".
    Returns:
        (batch, nheads, seqlen, headdim) in q's dtype.
    """
    check_tensor("q", q, ndim=4)
    check_tensor("k", k, shape=(q.shape[0], q.shape[1], None, q.shape[3]))
    check_tensor("v", v, shape=(q.shape[0], q.shape[1], k.shape[2], None))
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if causal and k.shape[2] != q.shape[2]:
        raise ValueError(f"causal attention needs as many keys as queries, got q {q.shape[2]} and k {k.shape[2]}")
    device = check_same_device(q=q, k=k, v=v)
    if backend == "sdpa":
        warnings.warn('attention: backend="sdpa" is deprecated, use backend="auto"', DeprecationWarning, stacklevel=2)
        backend = "auto"
    chosen = choose_backend("attention", backend, device, supported=("reference",))
    if backend == "auto" and not reference_preferred():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return reference.attention(q, k, v, causal=causal, scale=scale)
