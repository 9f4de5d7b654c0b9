"""Mamba-2 selective state-space scan (SSD): the plain-PyTorch specification.

Both functions take the arguments of mamba_ssm's ``mamba_chunk_scan_combined``, in its order::

    x  (batch, seqlen, nheads, headdim)     dt (batch, seqlen, nheads)     A (nheads,)
    B, C (batch, seqlen, ngroups, dstate)   nheads divisible by ngroups; head i reads group i // (nheads // ngroups)
    D (nheads,) or (nheads, headdim)        z (batch, seqlen, nheads, headdim)
    dt_bias (nheads,)                       initial_states / final states (batch, nheads, headdim, dstate)
    seq_idx (batch, seqlen) integer         cu_seqlens (num_seqs + 1,) integer, batch 1

and compute, per batch element and head, with ``dt ← clamp(softplus?(dt + dt_bias), *dt_limit)``::

    h_t = exp(dt_t·A)·h_{t−1} + dt_t · x_t ⊗ B_t        (h_{−1} = initial_states or 0)
    y_t = h_t·C_t + D·x_t,   then y_t ← y_t · silu(z_t)

With ``seq_idx`` (packed sequences) the state is reset to 0 before every token whose ``seq_idx``
differs from the previous token's; the initial state belongs to the row's first sequence (the one numbered
0: :func:`lambdaskip.ops.ssd_scan`, as mamba_ssm, seeds only ``seq_idx == 0``, and refuses a row starting
elsewhere). With ``cu_seqlens`` and ``return_varlen_states`` each sequence's final state is returned too
(differentiable here; the first includes the initial state).

They return ``y`` (x's dtype), or a tuple as mamba_ssm: ``(y, final_states)``, ``(y, varlen_states)`` or
``(y, final_states, varlen_states)``; the states are float32 (float64 for float64 inputs), as mamba_ssm
returns float32 states. Arithmetic runs in the widest dtype of the inputs, at least float32. The
arguments are assumed valid (:func:`lambdaskip.ops.ssd_scan` validates them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lambdaskip.reference import ssd_steps
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


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """cu_seqlens (num_seqs + 1,) → seq_idx (1, seqlen) int32: token t's sequence number."""
    tokens = torch.arange(seqlen, device=cu_seqlens.device)
    return (torch.searchsorted(cu_seqlens[1:-1].long(), tokens, right=True)).to(torch.int32)[None]


def _skip_and_gate(y, x, D, z):
    """``y + D·x``, then ``· silu(z)``; D of shape (h,) or (h, p)."""
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z)
    return y


def _prepare(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit):
    dtype = compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    cast = (lambda t: None if t is None else t.to(dtype))
    dtc = prepare_dt(dt.to(dtype), cast(dt_bias), dt_softplus, dt_limit)
    return dtype, cast(x), dtc, cast(A), cast(B), cast(C), cast(D), cast(z), cast(initial_states)


def _returns(y, final, varlen, return_final_states, return_varlen_states):
    out = (y,) + ((final,) if return_final_states else ()) + ((varlen,) if return_varlen_states else ())
    return out[0] if len(out) == 1 else out


def ssd_scan_sequential(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, initial_states=None,
                        seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                        return_final_states=False, return_varlen_states=False):
    """The literal recurrence, one step per token (``chunk_size`` is accepted and unused)."""
    dtype, xc, dtc, Ac, Bc, Cc, Dc, zc, h0 = _prepare(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus,
                                                      dt_limit)
    b, l, h, p = x.shape
    n = B.shape[-1]
    if seq_idx is None and cu_seqlens is not None:
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, l)
    Bh, Ch = ssd_steps.heads_of_groups(Bc, h), ssd_steps.heads_of_groups(Cc, h)
    state = h0 if h0 is not None else torch.zeros(b, h, p, n, dtype=dtype, device=x.device)
    ys, states = [], []
    for t in range(l):
        if seq_idx is not None and t > 0:
            same = (seq_idx[:, t] == seq_idx[:, t - 1]).to(dtype)          # (b,): 0 resets the state
            state = state * same[:, None, None, None]
        decay = torch.exp(dtc[:, t] * Ac)                                   # (b, h)
        update = (dtc[:, t, :, None] * xc[:, t])[..., None] * Bh[:, t, :, None, :]
        state = decay[..., None, None] * state + update                     # (b, h, p, n)
        states.append(state)
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = _skip_and_gate(torch.stack(ys, dim=1), xc, Dc, zc).to(x.dtype)
    varlen = None
    if return_varlen_states:
        varlen = torch.stack([states[e - 1][0] for e in cu_seqlens[1:].tolist()])
    return _returns(y, state, varlen, return_final_states, return_varlen_states)


def ssd_scan_chunked(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, initial_states=None,
                     seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                     return_final_states=False, return_varlen_states=False):
    """The chunked (SSD) form: the four steps of :mod:`lambdaskip.reference.ssd_steps` in sequence.

    The sequence is padded with dt = 0 steps to a multiple of ``chunk_size`` (a padded step neither
    decays nor updates the state). Returns as :func:`ssd_scan_sequential`.
    """
    dtype, xc, dtc, Ac, Bc, Cc, Dc, zc, h0 = _prepare(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus,
                                                      dt_limit)
    if seq_idx is None and cu_seqlens is not None:
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, x.shape[1])
    dt_chunked, dA_cumsum = ssd_steps.chunk_cumsum(dtc, Ac, chunk_size)
    added = ssd_steps.chunk_state(xc, Bc, dt_chunked, dA_cumsum, seq_idx)
    states = ssd_steps.state_passing(added, dA_cumsum, h0, seq_idx)
    y = ssd_steps.chunk_scan(xc, Bc, Cc, dt_chunked, dA_cumsum, states, seq_idx)
    y = _skip_and_gate(y, xc, Dc, zc).to(x.dtype)
    varlen = None
    if return_varlen_states:
        varlen = ssd_steps.varlen_states(xc, Bc, dt_chunked, dA_cumsum, states, cu_seqlens)
    return _returns(y, states[:, -1], varlen, return_final_states, return_varlen_states)
