"""Minimal mixers for tests and theory checks: the identity (M = I) and a learnable causal LTI filter."""
from __future__ import annotations

import math

import torch
from torch import nn

from lambdaskip import ops
from lambdaskip.modules.constants import MixerConstants, lti_constants


class IdentityMixer(nn.Module):
    """M = I: returns its input, (batch, seqlen, d_model) -> same."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() != 3 or y.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape (batch, seqlen, {self.d_model}), got {tuple(y.shape)}")
        return y

    @torch.no_grad()
    def theorem_constants(self, y: torch.Tensor) -> MixerConstants:
        """Theorem 4.1's constants at ``y`` (batch, N, d_model): M = I (‖M‖_F = √N), C_V = I; form "exact"."""
        return MixerConstants(C_M=torch.full((y.shape[0],), math.sqrt(y.shape[1]), dtype=torch.float64), S=1.0,
                              S_frob=math.sqrt(self.d_model), form="exact", note="M = I, C_V = I")


class LTIMixer(nn.Module):
    """A causal convolution per channel with a learnable kernel K (d_model, kernel_size).

    y[t] = Σ_{s ≤ t, t−s < kernel_size} K[t − s]·u[s]: a lower-triangular Toeplitz M per channel, the LTI
    case of the paper, without the S4D parameterisation. (batch, seqlen, d_model) -> same.

    Args:
        d_model: channels.
        kernel_size: taps of K; the kernel is cut or zero-padded to the sequence length.
        decay: K is initialised as decay^ℓ · N(0, 1)/√kernel_size.
    """

    def __init__(self, d_model: int, kernel_size: int = 64, decay: float = 0.9):
        super().__init__()
        if kernel_size <= 0:
            raise ValueError(f"kernel_size must be positive, got {kernel_size}")
        self.d_model, self.kernel_size = d_model, kernel_size
        envelope = decay ** torch.arange(kernel_size, dtype=torch.float32)
        self.K = nn.Parameter(torch.randn(d_model, kernel_size) * envelope / kernel_size ** 0.5)

    def kernel(self, seqlen: int) -> torch.Tensor:
        """K cut or zero-padded to (d_model, seqlen)."""
        if seqlen <= self.kernel_size:
            return self.K[:, :seqlen]
        return torch.nn.functional.pad(self.K, (0, seqlen - self.kernel_size))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape (batch, seqlen, {self.d_model}), got {tuple(u.shape)}")
        K = self.kernel(u.shape[1]).to(u.dtype).contiguous()
        return ops.s4d_conv(u.transpose(1, 2).contiguous(), K).transpose(1, 2)

    @torch.no_grad()
    def theorem_constants(self, y: torch.Tensor) -> MixerConstants:
        """Theorem 4.1's constants at ``y`` (batch, N, d_model): M_c = Toeplitz(K_c) per channel,
        C_M = max_c ‖M_c‖_F (input-independent), C_V = I; form "bounded"."""
        return lti_constants(self.kernel(y.shape[1]), None, y.shape[0], 1.0, math.sqrt(self.d_model), "bounded",
                             "M_c = Toeplitz(K_c) per channel, C_V = I")
