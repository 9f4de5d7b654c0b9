"""The Mamba-2 mixer (in_proj → short causal conv → SSD scan → gated RMSNorm → out_proj).

Defaults and parameter names follow mamba_ssm's ``Mamba2`` so weights can be mapped across. ``gating=False``
drops the z branch (the paper's gating ablation): the scan output is normalised without the silu(z) gate.

Generation: :class:`Mamba2Cache` holds a mixer's decode state; :meth:`Mamba2Mixer.prefill` runs a prompt
through ``ops.ssd_scan`` and :meth:`Mamba2Mixer.step` one token through ``ops.ssd_step``, both continuing
from and updating the cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lambdaskip import ops
from lambdaskip.modules.constants import MixerConstants, spectral_norm
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


@dataclass
class Mamba2Cache:
    """The decode state of one :class:`Mamba2Mixer`, updated in place by its ``prefill`` and ``step``.

    Attributes:
        conv_state: (batch, conv_dim, d_conv − 1), the last d_conv − 1 inputs of the causal conv, oldest first.
        ssm_state: (batch, nheads, headdim, d_state), the SSD state, float32 (float64 for a float64 mixer).
    """
    conv_state: torch.Tensor
    ssm_state: torch.Tensor


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

    def allocate_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> Mamba2Cache:
        """An empty (zero) :class:`Mamba2Cache` for ``batch_size`` sequences; ``dtype`` is the activations'
        (default: in_proj's), the SSM state is float32, or float64 when ``dtype`` is."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        kernel = self.conv1d.kernel_size[0]
        return Mamba2Cache(
            torch.zeros(batch_size, self.conv_dim, kernel - 1, device=device, dtype=dtype),
            torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                        dtype=torch.promote_types(dtype, torch.float32)))

    @torch.no_grad()
    def prefill(self, u: torch.Tensor, cache: Mamba2Cache) -> torch.Tensor:
        """:meth:`forward` on ``u`` (batch, seqlen, d_model) continuing from ``cache``, which it advances past
        ``u``; the SSD part is one ``ops.ssd_scan`` from the cached state. Inference only (no gradient)."""
        self._check_cache(u, 3, cache)
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        x, B, C = self._conv_step(xBC, cache)
        y, final = ops.ssd_scan(x, dt, self._A(), B, C, chunk_size=self.chunk_size, D=self.D,
                                dt_bias=self.dt_bias, dt_softplus=True, initial_states=cache.ssm_state,
                                return_final_states=True)
        cache.ssm_state.copy_(final)
        return self._gate_norm_out(y.flatten(-2), z)

    @torch.no_grad()
    def step(self, u: torch.Tensor, cache: Mamba2Cache) -> torch.Tensor:
        """One token: ``u`` (batch, d_model) → (batch, d_model), through ``ops.ssd_step`` on the cached state,
        which it advances. Equals :meth:`forward`'s output at that position of the whole sequence."""
        self._check_cache(u, 2, cache)
        z, xBC, dt = torch.split(self.in_proj(u[:, None]), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        x, B, C = self._conv_step(xBC, cache)
        y = ops.ssd_step(cache.ssm_state, x[:, 0], dt[:, 0], self._A(), B[:, 0], C[:, 0],
                         D=self.D, dt_bias=self.dt_bias, dt_softplus=True)
        return self._gate_norm_out(y.flatten(-2)[:, None], z)[:, 0]

    def _check_cache(self, u: torch.Tensor, ndim: int, cache: Mamba2Cache) -> None:
        shape = "(batch, seqlen, d_model)" if ndim == 3 else "(batch, d_model)"
        if u.dim() != ndim or u.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape {shape} with d_model={self.d_model}, got {tuple(u.shape)}")
        if not isinstance(cache, Mamba2Cache):
            raise TypeError(f"cache must be a Mamba2Cache (see allocate_cache), got {type(cache).__name__}")
        if cache.ssm_state.shape[0] != u.shape[0]:
            raise ValueError(f"cache holds {cache.ssm_state.shape[0]} sequences, the input {u.shape[0]}")

    def _conv_step(self, xBC: torch.Tensor, cache: Mamba2Cache):
        """The causal conv of ``xBC`` (b, l, conv_dim) after the cached inputs, advancing ``cache.conv_state``;
        returns x (b, l, h, p), B and C (b, l, g, n) after the silu."""
        b, l, _ = xBC.shape
        window = torch.cat([cache.conv_state, xBC.transpose(1, 2).to(cache.conv_state.dtype)], dim=-1)
        out = F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)  # (b, conv_dim, l)
        cache.conv_state.copy_(window[..., l:])
        x, B, C = torch.split(F.silu(out.transpose(1, 2)).to(xBC.dtype),
                              [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        return (x.reshape(b, l, self.nheads, self.headdim), B.reshape(b, l, self.ngroups, self.d_state),
                C.reshape(b, l, self.ngroups, self.d_state))

    def _gate_norm_out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The gate (z), the inner norm and out_proj on the scan's output y (b, l, d_inner)."""
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
        return {"x": x, "dt": F.softplus(dt + self.dt_bias), "A": self._A(), "B": B, "C": C,
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

    @torch.no_grad()
    def theorem_constants(self, y: torch.Tensor) -> MixerConstants:
        """Theorem 4.1's constants at ``y`` (batch, N, d_model); form "approximate".

        M_h is the SSD matrix of head h for this input (:meth:`mixing_matrix`, D on the diagonal), C_M = max
        over heads (and channels, for D of shape (nheads, headdim)) per batch element. C_V = I, S = 1 (the
        paper's convention for SSMs); in_proj, conv, silu, gate, inner norm and out_proj are outside the
        theory, and ``S_projections = ‖W_x‖₂·‖W_O‖₂`` is reported beside it.
        """
        M = self.mixing_matrix(y, include_D=self.D.dim() == 1)                    # (b, h, N, N)
        if self.D.dim() == 1:
            C_M = torch.linalg.matrix_norm(M).amax(dim=1)
        else:  # ‖M + D I‖_F² = ‖M‖_F² + 2D·tr(M) + N·D², per (head, channel)
            D = self.D.detach().double()                                          # (h, p)
            sq = (torch.linalg.matrix_norm(M).square()[..., None]
                  + 2 * D * M.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None] + y.shape[1] * D.square())
            C_M = sq.flatten(1).amax(dim=1).sqrt()
        W_x = self.in_proj.weight[self.d_inner:2 * self.d_inner]
        return MixerConstants(
            C_M=C_M, S=1.0, S_frob=math.sqrt(self.d_model), form="approximate",
            S_projections=spectral_norm(W_x) * spectral_norm(self.out_proj.weight),
            note="M = SSD matrix of the inner sequence (D on the diagonal), C_V = I (paper); in_proj, conv, silu, "
                 "gate, inner norm and out_proj are outside the theory")

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, nheads={self.nheads}, headdim={self.headdim}, "
                f"ngroups={self.ngroups}, chunk_size={self.chunk_size}, gating={self.gating}")
