"""Multi-head softmax attention as a sequence mixer: M = softmax(Y W_Q (Y W_K)ᵀ / √d_head), V = Y W_V."""
from __future__ import annotations

import torch
from torch import nn

from lambdaskip import ops
from lambdaskip.ops._checks import check_bool
from lambdaskip.reference.attention import attention_map


class AttentionMixer(nn.Module):
    """Multi-head softmax attention, (batch, seqlen, d_model) -> (batch, seqlen, d_model).

    Args:
        d_model: token width; must be divisible by n_heads.
        n_heads: number of heads.
        causal: each token attends only to itself and earlier tokens.
        out_proj: apply the output projection W_O after concatenating heads (False with one head gives
            the paper's bare ``M·Y·W_V``).
        bias: biases in the projections.
    """

    def __init__(self, d_model: int, n_heads: int = 1, causal: bool = True, out_proj: bool = True, bias: bool = False):
        super().__init__()
        if n_heads <= 0 or d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads} (> 0)")
        self.d_model, self.n_heads, self.causal = d_model, n_heads, check_bool("causal", causal)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias) if out_proj else nn.Identity()

    def _heads(self, y: torch.Tensor):
        if y.dim() != 3 or y.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape (batch, seqlen, {self.d_model}), got {tuple(y.shape)}")
        b, n, _ = y.shape
        q, k, v = self.qkv(y).view(b, n, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(y)
        out = ops.attention(q, k, v, causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(y.shape))

    def mixing_matrix(self, y: torch.Tensor) -> torch.Tensor:
        """The attention maps M: (batch, n_heads, seqlen, seqlen)."""
        q, k, _ = self._heads(y)
        return attention_map(q, k, causal=self.causal)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, causal={self.causal}"
