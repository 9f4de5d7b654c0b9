"""The S4D mixer: a diagonal LTI state-space model per channel, applied as a causal convolution."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lambdaskip import ops
from lambdaskip.modules.constants import MixerConstants, frobenius_norm, lti_constants, spectral_norm
from lambdaskip.reference.s4d import s4d_init

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, None: None}


class S4DMixer(nn.Module):
    """S4D with ZOH discretisation, (batch, seqlen, d_model) -> (batch, seqlen, d_model).

    Each of the d_model channels is an independent SSM of state size d_state (d_state/2 complex
    conjugate pairs); its kernel K (d_model, seqlen) is convolved causally with the channel, plus D·u.

    Args:
        d_model: channels H.
        d_state: N (even); the kernel uses N/2 complex modes.
        init: ``"inv"`` (S4D-Inv) or ``"lin"`` (S4D-Lin).
        dt_min, dt_max: range of the log-uniform step size initialisation.
        use_D: keep the feed-through D·u (the SSM's own inner skip; the paper's ablations state it).
        activation: ``"gelu"``, ``"silu"`` or None (None with out_proj=False is the pure LTI map of the theory).
        out_proj: a linear output layer after the activation.
    """

    def __init__(self, d_model: int, d_state: int = 64, init: str = "inv", dt_min: float = 1e-3, dt_max: float = 0.1,
                 use_D: bool = True, activation: str | None = "gelu", out_proj: bool = True):
        super().__init__()
        if d_state <= 0 or d_state % 2:
            raise ValueError(f"d_state must be a positive even int, got {d_state}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self.d_model, self.d_state, self.init = d_model, d_state, init
        log_dt, A_re, A_im, C = s4d_init(d_model, d_state, init=init, dt_min=dt_min, dt_max=dt_max)
        self.log_dt = nn.Parameter(log_dt)
        self.log_neg_A_re = nn.Parameter(torch.log(-A_re))
        self.A_im = nn.Parameter(A_im)
        self.C = nn.Parameter(torch.view_as_real(C).clone())
        self.D = nn.Parameter(torch.randn(d_model)) if use_D else None
        self.activation = ACTIVATIONS[activation]
        self.out_proj = nn.Linear(d_model, d_model) if out_proj else nn.Identity()

    def kernel(self, seqlen: int) -> torch.Tensor:
        """The convolution kernel K: (d_model, seqlen), generated in at least float32 (phases need it)."""
        dtype = torch.promote_types(self.log_dt.dtype, torch.float32)
        return ops.s4d_kernel(self.log_dt.to(dtype), -torch.exp(self.log_neg_A_re.to(dtype)), self.A_im.to(dtype),
                              torch.view_as_complex(self.C.to(dtype)), seqlen)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape (batch, seqlen, {self.d_model}), got {tuple(u.shape)}")
        # K stays in (at least) float32: s4d_conv computes in the wider dtype and returns u's dtype
        y = ops.s4d_conv(u.transpose(1, 2).contiguous(), self.kernel(u.shape[1]), self.D).transpose(1, 2)
        if self.activation is not None:
            y = self.activation(y)
        return self.out_proj(y)

    @torch.no_grad()
    def theorem_constants(self, y: torch.Tensor) -> MixerConstants:
        """Theorem 4.1's constants at ``y`` (batch, N, d_model): M_c = Toeplitz(K_c) + D_c·I per channel
        (input-independent), C_V = W_Oᵀ of out_proj (I without it). Form "bounded" for the pure LTI map (no
        activation, no out_proj), else "approximate" (the activation and out_proj's bias are outside the theory).
        """
        has_out = isinstance(self.out_proj, nn.Linear)
        S, S_frob = ((spectral_norm(self.out_proj.weight), frobenius_norm(self.out_proj.weight)) if has_out
                     else (1.0, math.sqrt(self.d_model)))
        pure = self.activation is None and not has_out
        return lti_constants(self.kernel(y.shape[1]), self.D, y.shape[0], S, S_frob,
                             "bounded" if pure else "approximate",
                             "M_c = Toeplitz(K_c) + D_c·I per channel, C_V = " + ("W_Oᵀ" if has_out else "I")
                             + ("" if pure else "; activation/out_proj bias ignored"))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, init={self.init!r}, use_D={self.D is not None}"
