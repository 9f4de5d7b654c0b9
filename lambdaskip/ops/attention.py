"""Multi-head softmax attention, dispatched to PyTorch's fused SDPA or the explicit reference."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from lambdaskip import reference
from lambdaskip.common import check_bool, check_finite_float, check_same_device, check_tensor
from lambdaskip.ops._backend import choose_backend, reference_preferred


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              scale: float | None = None, *, backend: str = "auto") -> torch.Tensor:
    """``softmax(Q Kᵀ·scale) V`` per head.

    Args:
        q, k: (batch, nheads, seqlen_q / seqlen_k, headdim); v: (batch, nheads, seqlen_k, headdim_v); one
            floating dtype, one device. batch, nheads and seqlen_q may be 0 (an empty result); headdim,
            headdim_v, and seqlen_k when there are queries, must be > 0.
        causal: a bool; a query attends only to keys at or before its position (seqlen_q == seqlen_k).
        scale: a finite logit scale > 0, or None for 1/sqrt(headdim).
        backend: ``"auto"`` (torch's fused ``scaled_dot_product_attention``, or the reference inside
            ``prefer_backend("reference")``) or ``"reference"``; ``"sdpa"`` is a deprecated spelling of "auto".
    Returns:
        (batch, nheads, seqlen_q, headdim_v) in q's dtype.
    Non-finite input:
        NaN or ±inf in a row of q makes that output row NaN; a NaN key row makes NaN the rows that attend
        to it (an infinite one, those where its logit is +inf); a non-finite value makes its output
        column non-finite: on every backend, as in the reference (SDPA alone returns zeros for a row whose
        every logit is NaN; see
        :func:`_nan_where_sdpa_gives_zeros`). The reference computes logits in q's dtype, so float16
        logits past 65504 overflow there (NaN rows) while SDPA accumulates in float32.
    """
    check_tensor("q", q, ndim=4)
    check_tensor("k", k, shape=(q.shape[0], q.shape[1], None, q.shape[3]))
    check_tensor("v", v, shape=(q.shape[0], q.shape[1], k.shape[2], None))
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[3] == 0:
        raise ValueError(f"q must have headdim > 0, got shape {tuple(q.shape)}")
    if v.shape[3] == 0:
        raise ValueError(f"v must have headdim > 0, got shape {tuple(v.shape)}")
    if k.shape[2] == 0 and q.shape[2] > 0:
        raise ValueError(f"k must have seqlen > 0 when q has queries (a softmax over no keys is undefined), "
                         f"got k {tuple(k.shape)} for q {tuple(q.shape)}")
    if check_bool("causal", causal) and k.shape[2] != q.shape[2]:
        raise ValueError(f"causal attention needs as many keys as queries, got q {q.shape[2]} and k {k.shape[2]}")
    if scale is not None:
        scale = check_finite_float("scale", scale, positive=True)
    device = check_same_device(q=q, k=k, v=v)
    if backend == "sdpa":
        warnings.warn('attention: backend="sdpa" is deprecated, use backend="auto"', DeprecationWarning, stacklevel=2)
        backend = "auto"
    chosen = choose_backend("attention", backend, device, supported=("reference",))
    if backend == "auto" and not reference_preferred():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
        return _nan_where_sdpa_gives_zeros(out, q, k, causal)
    return reference.attention(q, k, v, causal=causal, scale=scale)


def _nan_where_sdpa_gives_zeros(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """``out`` with NaN in the rows that see only non-finite input: a non-finite q row, or only
    non-finite key rows in view.

    Why: SDPA's flash-attention CPU backend (its choice for these inputs on torch 2.13) keeps a running
    row maximum that NaN comparisons never raise; when every logit of a row is NaN the maximum stays
    −inf, the row is treated as fully masked, and it gets zeros. Its math backend and the reference's
    softmax give NaN. Row sums (in at least float32) find the rows: one read of q and k and one add to
    ``out``, no host sync, no gradient (the added term is zero for finite input, so finite outputs keep
    SDPA's values).
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    q_rows = q.detach().sum(-1, dtype=acc)                               # (b, h, Lq): NaN/±inf if q's row is
    blind = ~torch.isfinite(k.detach().sum(-1, dtype=acc))               # (b, h, Lk)
    if causal:  # query i sees keys 0..i: blind when all of them are
        blind = blind.to(torch.uint8).cummin(-1).values.bool()
    else:
        blind = blind.all(-1, keepdim=True)
    poison = (q_rows * 0).masked_fill(blind, float("nan"))              # 0, or NaN on the rows to poison
    return out + poison.to(out.dtype).unsqueeze(-1)
