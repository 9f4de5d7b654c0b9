"""Softmax attention written out: the mixing matrix M = softmax(Q Kᵀ · scale) and its product with V."""
from __future__ import annotations

import math

import torch


def attention_map(q: torch.Tensor, k: torch.Tensor, causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """The row-stochastic mixing matrix of softmax attention.

    Args:
        q, k: (batch, nheads, seqlen, headdim).
        causal: mask keys after the query position.
        scale: logit scale, default 1/sqrt(headdim).
    Returns:
        M: (batch, nheads, seqlen, seqlen), each row a probability vector.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale
    if causal:
        n_q, n_k = q.shape[-2], k.shape[-2]
        future = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
    return torch.softmax(logits, dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              scale: float | None = None) -> torch.Tensor:
    """Multi-head softmax attention, ``softmax(Q Kᵀ·scale) V``, computed in q's dtype.

    Args:
        q, k, v: (batch, nheads, seqlen, headdim).
    Returns:
        (batch, nheads, seqlen, headdim).
    """
    return torch.matmul(attention_map(q, k, causal, scale), v)
