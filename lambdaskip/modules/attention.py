"""Multi-head softmax attention as a sequence mixer: M = softmax(Y W_Q (Y W_K)ᵀ / √d_head), V = Y W_V."""
from __future__ import annotations

import torch
from torch import nn

from lambdaskip import ops
from lambdaskip.common import check_bool, renamed_argument
from lambdaskip.modules.constants import MixerConstants, frobenius_norm, spectral_norm
from lambdaskip.reference.attention import attention_map


class AttentionMixer(nn.Module):
    """Multi-head softmax attention, (batch, seqlen, d_model) -> (batch, seqlen, d_model).

    Args:
        d_model: token width; must be divisible by nheads.
        nheads: number of heads (``n_heads=`` still works, deprecated).
        causal: each token attends only to itself and earlier tokens.
        out_proj: apply the output projection W_O after concatenating heads (False with one head gives
            the paper's bare ``M·Y·W_V``).
        bias: biases in the projections.
    """

    def __init__(self, d_model: int, nheads: int = 1, causal: bool = True, out_proj: bool = True, bias: bool = False,
                 *, n_heads: int | None = None):
        super().__init__()
        nheads = renamed_argument("AttentionMixer", "n_heads", "nheads", n_heads, nheads)
        if nheads <= 0 or d_model % nheads:
            raise ValueError(f"d_model={d_model} must be divisible by nheads={nheads} (> 0)")
        self.d_model, self.nheads, self.causal = d_model, nheads, check_bool("causal", causal)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias) if out_proj else nn.Identity()

    def _heads(self, y: torch.Tensor):
        if y.dim() != 3 or y.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape (batch, seqlen, {self.d_model}), got {tuple(y.shape)}")
        b, n, _ = y.shape
        q, k, v = self.qkv(y).view(b, n, 3, self.nheads, -1).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(y)
        out = ops.attention(q, k, v, causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(y.shape))

    def mixing_matrix(self, y: torch.Tensor) -> torch.Tensor:
        """The attention maps M: (batch, nheads, seqlen, seqlen)."""
        q, k, _ = self._heads(y)
        return attention_map(q, k, causal=self.causal)

    @property
    def n_heads(self) -> int:
        """Deprecated name of :attr:`nheads`."""
        return self.nheads

    @torch.no_grad()
    def theorem_constants(self, y: torch.Tensor) -> MixerConstants:
        """Theorem 4.1's constants at the input ``y`` (batch, seqlen, d_model).

        M_h is head h's softmax map (materialised), C_V,h = W_V,hᵀ W_O,hᵀ (W_O = I without out_proj).
        C_M = max_h ‖M_h‖_F per batch element, S = Σ_h ‖C_V,h‖₂, which bounds ‖Σ_h M_h Y C_V,h‖ by
        C_M·S·‖Y‖. One head without biases is the theorem's layer (form "exact"); several heads "bounded";
        biases make it "approximate".
        """
        d, h = self.d_model, self.nheads
        head = d // h
        W_v = self.qkv.weight[2 * d:].detach().double()                          # (d, d): V = Y W_vᵀ
        has_out = isinstance(self.out_proj, nn.Linear)
        W_o = self.out_proj.weight.detach().double() if has_out else torch.eye(d, dtype=torch.float64)
        values = [(W_o[:, i * head:(i + 1) * head] @ W_v[i * head:(i + 1) * head]).T for i in range(h)]
        M = self.mixing_matrix(y).double()                                      # (b, h, N, N)
        has_bias = self.qkv.bias is not None or (has_out and self.out_proj.bias is not None)
        form = "approximate" if has_bias else ("exact" if h == 1 else "bounded")
        return MixerConstants(
            C_M=torch.linalg.matrix_norm(M).amax(dim=1), S=sum(spectral_norm(C) for C in values),
            S_frob=sum(frobenius_norm(C) for C in values), form=form,
            note=f"M = softmax maps ({h} head(s)), C_V = W_V,hᵀ W_O,hᵀ" + ("; biases ignored" if has_bias else ""))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, nheads={self.nheads}, causal={self.causal}"
