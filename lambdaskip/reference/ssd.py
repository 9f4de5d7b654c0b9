"""Mamba-2 selective state-space scan (SSD): the plain-PyTorch specification.

Both functions take the arguments of mamba_ssm's ``mamba_chunk_scan_combined``::

    x  (batch, seqlen, nheads, headdim)     dt (batch, seqlen, nheads)     A (nheads,)
    B, C (batch, seqlen, ngroups, dstate)   nheads divisible by ngroups; head i reads group i // (nheads // ngroups)
    D (nheads,) or (nheads, headdim)        z (batch, seqlen, nheads, headdim)
    dt_bias (nheads,)                       initial_states / final states (batch, nheads, headdim, dstate)

and compute, per batch element and head, with ``dt ← clamp(softplus?(dt + dt_bias), *dt_limit)``::

    h_t = exp(dt_t·A)·h_{t−1} + dt_t · x_t ⊗ B_t        (h_{−1} = initial_states or 0)
    y_t = h_t·C_t + D·x_t,   then y_t ← y_t · silu(z_t)

They return ``y`` (x's dtype), or ``(y, final_states)`` with the final states in x's dtype when
``return_final_states``. Arithmetic runs in the widest dtype of the inputs, at least float32
(float64 inputs give a float64 computation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lambdaskip.reference._dtypes import compute_dtype


def prepare_dt(dt: torch.Tensor, dt_bias=None, dt_softplus: bool = False,
               dt_limit=(0.0, float("inf"))) -> torch.Tensor:
    """The effective step ``clamp(softplus?(dt + dt_bias), *dt_limit)``; the clamp is skipped at (0, inf)."""
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != (0.0, float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _heads_of_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(b, l, g, n) → (b, l, nheads, n): each group shared by nheads // g consecutive heads."""
    return t.repeat_interleave(nheads // t.shape[2], dim=2)


def _skip_and_gate(y, x, D, z):
    """``y + D·x``, then ``· silu(z)``; D of shape (h,) or (h, p)."""
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z)
    return y


def ssd_scan_sequential(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
                        dt_limit=(0.0, float("inf")), initial_states=None, return_final_states=False):
    """The literal recurrence, one step per token (``chunk_size`` is accepted and unused).

    Returns ``y`` (b, l, h, p) in x's dtype, or ``(y, final_states)`` with final states (b, h, p, n).
    """
    dtype = compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    b, l, h, p = x.shape
    n = B.shape[-1]
    xc, Ac = x.to(dtype), A.to(dtype)
    dtc = prepare_dt(dt.to(dtype), None if dt_bias is None else dt_bias.to(dtype), dt_softplus, dt_limit)
    Bh, Ch = _heads_of_groups(B.to(dtype), h), _heads_of_groups(C.to(dtype), h)
    state = (initial_states.to(dtype) if initial_states is not None
             else torch.zeros(b, h, p, n, dtype=dtype, device=x.device))
    ys = []
    for t in range(l):
        decay = torch.exp(dtc[:, t] * Ac)                                   # (b, h)
        update = (dtc[:, t, :, None] * xc[:, t])[..., None] * Bh[:, t, :, None, :]
        state = decay[..., None, None] * state + update                     # (b, h, p, n)
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xc.new_zeros(b, 0, h, p)
    y = _skip_and_gate(y, xc, None if D is None else D.to(dtype), None if z is None else z.to(dtype)).to(x.dtype)
    return (y, state.to(x.dtype)) if return_final_states else y


def _segment_sums(a: torch.Tensor) -> torch.Tensor:
    """``S[..., i, j] = a[..., j+1] + … + a[..., i]`` for i ≥ j and −inf above the diagonal.

    Built by masking before summing, so that ``exp(S)`` only ever sees non-positive numbers when
    ``a ≤ 0`` (no difference of two large cumulative sums, no exp overflow).
    """
    q = a.shape[-1]
    lower = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device), diagonal=-1)
    pieces = a[..., None, :].expand(*a.shape, q).transpose(-1, -2)          # pieces[..., i, j] = a[..., i]
    sums = torch.cumsum(pieces.masked_fill(~lower, 0), dim=-2)              # Σ_{j<k≤i} a_k
    keep = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~keep, float("-inf"))


def ssd_scan_chunked(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
                     dt_limit=(0.0, float("inf")), initial_states=None, return_final_states=False):
    """The chunked (SSD) form: a quadratic form within each chunk, states passed between chunks.

    The sequence is padded with dt = 0 steps to a multiple of ``chunk_size`` (a padded step neither
    decays nor updates the state). Returns as :func:`ssd_scan_sequential`.
    """
    dtype = compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    b, l, h, p = x.shape
    n = B.shape[-1]
    q = chunk_size
    pad = (-l) % q
    xc, Ac = x.to(dtype), A.to(dtype)
    dtc = prepare_dt(dt.to(dtype), None if dt_bias is None else dt_bias.to(dtype), dt_softplus, dt_limit)
    Bh, Ch = _heads_of_groups(B.to(dtype), h), _heads_of_groups(C.to(dtype), h)
    # Pad the time axis (dim 1) and split it into chunks: (b, c, q, ...).
    xs, dts, Bs, Cs = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)).unflatten(1, (-1, q))
                       for t in (xc, dtc, Bh, Ch))
    x_dt = xs * dts[..., None]                                              # (b, c, q, h, p)
    dA = (dts * Ac).permute(0, 3, 1, 2)                                     # (b, h, c, q)
    dA_cumsum = torch.cumsum(dA, dim=-1)

    # 1. Within-chunk outputs: y_t = Σ_{s≤t} (C_t·B_s) exp(Σ_{s<k≤t} dA_k) dt_s x_s.
    decay_within = torch.exp(_segment_sums(dA))                             # (b, h, c, q, q)
    y_within = torch.einsum("bcthn,bcshn,bhcts,bcshp->bcthp", Cs, Bs, decay_within, x_dt)

    # 2. Each chunk's contribution to the state at its end.
    decay_to_end = torch.exp(dA_cumsum[..., -1:] - dA_cumsum)               # (b, h, c, q), exponents ≤ 0
    chunk_states = torch.einsum("bcshn,bhcs,bcshp->bchpn", Bs, decay_to_end, x_dt)

    # 3. State passing: the state entering each chunk.
    state = (initial_states.to(dtype) if initial_states is not None
             else torch.zeros(b, h, p, n, dtype=dtype, device=x.device))
    chunk_decay = torch.exp(dA_cumsum[..., -1])                             # (b, h, c)
    entering = []
    for c in range(chunk_states.shape[1]):
        entering.append(state)
        state = chunk_decay[:, :, c, None, None] * state + chunk_states[:, c]
    states_in = torch.stack(entering, dim=1) if entering else xc.new_zeros(b, 0, h, p, n)

    # 4. Outputs due to the entering state: y_t = exp(Σ_{k≤t} dA_k) · state·C_t.
    y_from_state = torch.einsum("bcthn,bchpn,bhct->bcthp", Cs, states_in, torch.exp(dA_cumsum))

    y = (y_within + y_from_state).flatten(1, 2)[:, :l]
    y = _skip_and_gate(y, xc, None if D is None else D.to(dtype), None if z is None else z.to(dtype)).to(x.dtype)
    return (y, state.to(x.dtype)) if return_final_states else y
