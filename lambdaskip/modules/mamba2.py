"""The Mamba-2 mixer (in_proj → short causal conv → SSD scan → gated RMSNorm → out_proj).

Defaults and parameter names follow mamba_ssm's ``Mamba2`` so weights can be mapped across. ``gating=False``
drops the z branch (the paper's gating ablation): the scan output is normalised without the silu(z) gate.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lambdaskip import ops
from lambdaskip.reference.ssd import seq_idx_from_cu_seqlens


class GatedRMSNorm(nn.Module):
    """``rmsnorm(y · silu(z)) · weight`` per group of ``group_size`` channels (z=None: no gate).

    Shapes: y, z (..., d); weight (d,).
    """

    def __init__(self, d: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        if d % group_size:
            raise ValueError(f"d={d} must be divisible by group_size={group_size}")
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        dtype = y.dtype
        y = y.float()
        if z is not None:
            y = y * F.silu(z.float())
        groups = y.unflatten(-1, (-1, self.group_size))
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return (groups.flatten(-2) * self.weight.float()).to(dtype)


class Mamba2Mixer(nn.Module):
    """Mamba-2 sequence mixer, (batch, seqlen, d_model) -> (batch, seqlen, d_model).

    Args:
        d_model: token width.
        d_state: SSM state size n.
        d_conv: width of the depthwise causal convolution.
        expand: d_inner = expand · d_model.
        headdim: p; nheads = d_inner / headdim.
        ngroups: g, groups sharing B and C.
        chunk_size: SSD chunk length.
        gating: multiply by silu(z) before the inner norm (Mamba-2's gate); False for the ablation.
        inner_norm: apply the (gated) RMSNorm before out_proj.
        dt_min, dt_max, dt_init_floor, A_init_range: initialisation as in mamba_ssm.
        D_has_hdim: D of shape (nheads, headdim) instead of (nheads,).
    """

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int = 64, gating: bool = True, inner_norm: bool = True,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 A_init_range: tuple[float, float] = (1.0, 16.0), D_has_hdim: bool = False, bias: bool = False,
                 conv_bias: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"expand*d_model={d_inner} must be divisible by headdim={headdim}")
        self.nheads = d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"nheads={self.nheads} must be divisible by ngroups={ngroups}")
        self.d_model, self.d_inner, self.d_state, self.headdim = d_model, d_inner, d_state, headdim
        self.ngroups, self.chunk_size, self.gating = ngroups, chunk_size, gating
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1,
                                bias=conv_bias)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads, headdim) if D_has_hdim else torch.ones(self.nheads))
        self.norm = GatedRMSNorm(d_inner, d_inner // ngroups, eps=norm_eps) if inner_norm else None
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def _project(self, u: torch.Tensor, seq_idx: torch.Tensor | None = None):
        """in_proj and the short causal conv: z (b, l, d_inner), x (b, l, h, p), raw dt (b, l, h),
        B and C (b, l, g, n)."""
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape (batch, seqlen, {self.d_model}), got {tuple(u.shape)}")
        b, l, _ = u.shape
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = F.silu(self._causal_conv(xBC, seq_idx))
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        return (z, x.reshape(b, l, self.nheads, self.headdim), dt, B.reshape(b, l, self.ngroups, self.d_state),
                C.reshape(b, l, self.ngroups, self.d_state))

    def _causal_conv(self, xBC: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
        """The depthwise causal conv of xBC (b, l, conv_dim). With seq_idx (b, l), a token only sees the
        tokens of its own sequence: ``out_t = bias + Σ_j w[d_conv − 1 − j] · x_{t−j} · [seq_{t−j} = seq_t]``."""
        l = xBC.shape[1]
        if seq_idx is None:
            return self.conv1d(xBC.transpose(1, 2))[..., :l].transpose(1, 2)
        weight = self.conv1d.weight[:, 0]                                       # (conv_dim, d_conv)
        width = weight.shape[-1]
        out = xBC * weight[:, -1]
        for lag in range(1, min(width, l)):
            same = (seq_idx[:, lag:] == seq_idx[:, :-lag])[..., None]
            out = out + F.pad(xBC[:, :-lag] * same, (0, 0, lag, 0)) * weight[:, width - 1 - lag]
        return out if self.conv1d.bias is None else out + self.conv1d.bias

    def forward(self, u: torch.Tensor, seq_idx: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """u (batch, seqlen, d_model) → (batch, seqlen, d_model).

        Packed sequences: ``seq_idx`` (batch, seqlen) int32/int64, non-decreasing, and/or ``cu_seqlens``
        (num_seqs + 1,) (batch 1), as :func:`lambdaskip.ops.ssd_scan` takes them; neither the conv nor the
        scan carries anything across a boundary, so the output equals running each sequence alone.
        """
        if cu_seqlens is not None and seq_idx is None:
            if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.is_floating_point():
                raise TypeError("cu_seqlens must be a 1-D integer tensor of sequence offsets")
            seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, u.shape[1])
        if seq_idx is not None and (not isinstance(seq_idx, torch.Tensor) or seq_idx.shape != u.shape[:2]
                                    or seq_idx.is_floating_point()):
            raise ValueError(f"seq_idx must be an integer tensor of shape (batch, seqlen) = {tuple(u.shape[:2])}")
        z, x, dt, B, C = self._project(u, seq_idx)
        y = ops.ssd_scan(x, dt, self._A(), B, C, self.chunk_size, D=self.D, dt_bias=self.dt_bias, seq_idx=seq_idx,
                         cu_seqlens=cu_seqlens, dt_softplus=True).flatten(-2)
        gate = z if self.gating else None
        if self.norm is not None:
            y = self.norm(y, gate)
        elif gate is not None:
            y = y * F.silu(gate)
        return self.out_proj(y)

    def _A(self) -> torch.Tensor:
        """A = -exp(A_log) (nheads,), in float32 (float64 in a float64 model)."""
        return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

    def ssd_inputs(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """The scan's inputs for ``u`` (batch, seqlen, d_model), as :meth:`forward` computes them.

        Returns a dict: x (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads), the effective step
        softplus(dt + dt_bias); A (nheads,); B, C (batch, seqlen, ngroups, d_state); z (batch, seqlen, d_inner).
        """
        z, x, dt, B, C = self._project(u)
        return {"x": x, "dt": F.softplus(dt + self.dt_bias), "A": -torch.exp(self.A_log.float()), "B": B, "C": C,
                "z": z}

    def mixing_matrix(self, u: torch.Tensor, include_D: bool = True) -> torch.Tensor:
        """The SSD mixing matrices for ``u``, in float64: (batch, nheads, seqlen, seqlen).

        ``M[b, h, i, j] = (C_i · B_j) · exp(Σ_{t=j+1..i} dt_t A_h) · dt_j`` for i ≥ j, 0 above the diagonal,
        so that the scan output of head h, channel p, is ``M[b, h] @ x[b, :, h, p]``; with ``include_D``
        (only for D of shape (nheads,)) D_h is added on the diagonal. This is the paper's selective-SSM M:
        it mixes the inner sequence x, i.e. after in_proj, conv and silu, before the gate, norm and out_proj.
        """
        if include_D and self.D.dim() != 1:
            raise ValueError("include_D needs D of shape (nheads,); this mixer has D_has_hdim=True")
        s = self.ssd_inputs(u)
        dt, A = s["dt"].double(), s["A"].double()
        heads_per_group = self.nheads // self.ngroups
        B = s["B"].double().repeat_interleave(heads_per_group, dim=2)           # (b, l, h, n)
        C = s["C"].double().repeat_interleave(heads_per_group, dim=2)
        log_decay = torch.cumsum(dt * A, dim=1).transpose(1, 2)                  # (b, h, l)
        exponent = log_decay[..., :, None] - log_decay[..., None, :]              # Σ_{t=j+1..i} dt_t A
        lower = torch.ones(u.shape[1], u.shape[1], dtype=torch.bool, device=u.device).tril()
        decay = torch.exp(exponent.masked_fill(~lower, float("-inf")))
        M = torch.einsum("bihn,bjhn->bhij", C, B) * decay * dt.transpose(1, 2)[..., None, :]
        if include_D:
            M = M + torch.diag_embed(self.D.double()[:, None].expand(-1, u.shape[1]))
        return M

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, nheads={self.nheads}, headdim={self.headdim}, "
                f"ngroups={self.ngroups}, chunk_size={self.chunk_size}, gating={self.gating}")
