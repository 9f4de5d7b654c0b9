"""One decode step of the Mamba-2 scan (SSD): the plain-PyTorch specification of ``ops.ssd_step``.

Shapes follow mamba_ssm's ``selective_state_update`` for Mamba-2 (one token, A/dt/D per head)::

    state (batch, nheads, headdim, dstate)   x, z (batch, nheads, headdim)   dt (batch, nheads)
    A, dt_bias (nheads,)                     B, C (batch, ngroups, dstate)   D (nheads,) or (nheads, headdim)

With ``dt ← clamp(softplus?(dt + dt_bias), *dt_limit)``, per batch element and head::

    h ← exp(dt·A)·h + dt · x ⊗ B,     y = (h·C + D·x) · silu(z)

which is one token of :func:`lambdaskip.reference.ssd.ssd_scan_sequential`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lambdaskip.reference._dtypes import compute_dtype
from lambdaskip.reference.ssd import prepare_dt


def ssd_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=(0.0, float("inf"))):
    """The state after one token and that token's output, without touching ``state``.

    Arithmetic runs in the widest dtype of the inputs, at least float32.

    Returns:
        ``(y, new_state)``: y (batch, nheads, headdim) in x's dtype, new_state (batch, nheads, headdim,
        dstate) in state's dtype; y is computed from the new state before it is rounded to that dtype.
    """
    dtype = compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    h = x.shape[1]
    xc = x.to(dtype)
    dtc = prepare_dt(dt.to(dtype), None if dt_bias is None else dt_bias.to(dtype), dt_softplus, dt_limit)
    Bh, Ch = (t.to(dtype).repeat_interleave(h // t.shape[1], dim=1) for t in (B, C))    # (b, h, n)
    decay = torch.exp(dtc * A.to(dtype))                                               # (b, h)
    new_state = decay[..., None, None] * state.to(dtype) + (dtc[..., None] * xc)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new_state, Ch)
    if D is not None:
        y = y + xc * (D.to(dtype)[:, None] if D.dim() == 1 else D.to(dtype))
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype), new_state.to(state.dtype)
