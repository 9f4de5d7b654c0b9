"""One decode step of the Mamba-2 scan (SSD), in place: mamba_ssm's ``selective_state_update`` for Mamba-2.

The reference is :func:`lambdaskip.reference.ssd_step.ssd_step`; the Triton path is the custom op
``lambdaskip::ssd_step`` (fake registered, ``state`` declared mutated, so torch.compile traces through
it). Decoding is inference: neither path records a gradient for the in-place state update, and the op
refuses inputs that require grad.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lambdaskip.ops._backend import choose_backend
from lambdaskip.ops._checks import check_bool, check_same_device, check_tensor
from lambdaskip.ops.ssd import _check_dt_limit
from lambdaskip.reference.ssd_step import ssd_step as reference_ssd_step

SUPPORTED_BACKENDS = ("reference", "triton")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_DSTATE = 256  # a program holds its rows of the state whole along dstate


@torch.library.custom_op("lambdaskip::ssd_step", mutates_args=("state",))
def ssd_step_triton(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                    z: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool, dt_low: float,
                    dt_high: float) -> Tensor:
    """The Triton step on contiguous inputs: advances ``state`` in place, returns y (b, h, p) in x's dtype."""
    from lambdaskip.kernels.ssd_step import ssd_step_update
    return ssd_step_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, (dt_low, dt_high))


@ssd_step_triton.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_low, dt_high):
    return torch.empty_like(x)


def ssd_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=(0.0, float("inf")), *, backend="auto"):
    """Advance the SSD state by one token, in place, and return that token's output.

    Per batch element and head, with ``dt ← clamp(softplus?(dt + dt_bias), *dt_limit)``::

        state ← exp(dt·A)·state + dt · x ⊗ B,     y = (state·C + D·x) · silu(z)

    so that feeding a sequence token by token gives :func:`lambdaskip.ops.ssd_scan`'s outputs and final state.

    Args:
        state: (batch, nheads, headdim, dstate), contiguous; updated in place. Keep it in float32 for
            16-bit inputs (a 16-bit state rounds once per token). batch may be 0 (an empty y).
        x: (batch, nheads, headdim).
        dt: (batch, nheads) step before ``dt_bias`` / softplus / clamp.
        A: (nheads,) decay rates (A ≤ 0 for a stable state).
        B, C: (batch, ngroups, dstate); nheads divisible by ngroups, head i uses group i // (nheads // ngroups).
        D: optional (nheads,) or (nheads, headdim) skip weight.
        z: optional (batch, nheads, headdim) gate: y is multiplied by silu(z).
        dt_bias: optional (nheads,) added to dt.
        dt_softplus: apply softplus to dt (after the bias).
        dt_limit: (low, high) clamp of dt, skipped at the default (0, inf).
        backend: "auto" (Triton on CUDA, else the reference), "reference" or "triton" (on CPU only under
            TRITON_INTERPRET=1). Triton takes float16/bfloat16/float32 tensors and dstate ≤ 256 and computes
            in float32; "auto" uses the reference for float64 input.
    Returns:
        y (batch, nheads, headdim) in x's dtype, computed from the updated state before it is rounded to
        the state's dtype.
    Non-finite values (NaN in → NaN out): a NaN or ±inf reaches the state rows and outputs it feeds, on every
    backend where the reference puts it.
    Raises:
        TypeError / ValueError naming the offending argument; RuntimeError when a forced backend cannot
        run here.
    """
    check_tensor("state", state, ndim=4)
    b, h, p, n = state.shape
    if min(h, p, n) < 1:  # batch may be 0 (the empty-tensor rule of lambdaskip.ops)
        raise ValueError(f"state must have nheads, headdim and dstate > 0, got shape {tuple(state.shape)}")
    if not state.is_contiguous():
        raise ValueError("state must be contiguous: it is updated in place")
    check_tensor("x", x, shape=(b, h, p))
    check_tensor("dt", dt, shape=(b, h))
    check_tensor("A", A, shape=(h,))
    check_tensor("B", B, ndim=3)
    g = B.shape[1]
    check_tensor("B", B, shape=(b, None, n))
    if g < 1 or h % g:
        raise ValueError(f"B: nheads ({h}) must be divisible by ngroups ({g})")
    check_tensor("C", C, shape=(b, g, n))
    if D is not None:
        check_tensor("D", D, ndim=(1, 2))
        if D.shape not in (torch.Size([h]), torch.Size([h, p])):
            raise ValueError(f"D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    if z is not None:
        check_tensor("z", z, shape=(b, h, p))
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(h,))
    check_bool("dt_softplus", dt_softplus)
    dt_limit = _check_dt_limit(dt_limit)
    tensors = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    device = check_same_device(**tensors)
    for name, t in tensors.items():
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} requires grad: ssd_step is for inference (no gradient through the in-place "
                             f"state update); call it under torch.no_grad()")

    broken = _triton_limit_broken(tensors, n)
    if backend == "auto" and broken is not None:
        backend = "reference"  # float64, or a dstate the kernel does not tile
    chosen = choose_backend("ssd_step", backend, device, SUPPORTED_BACKENDS)
    if b == 0:  # no sequence to advance
        return torch.empty_like(x)
    if chosen == "reference":
        y, new_state = reference_ssd_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
        state.copy_(new_state)
        return y
    if broken is not None:
        raise broken
    contiguous = [None if t is None else t.contiguous() for t in (x, dt, A, B, C, D, z, dt_bias)]
    return ssd_step_triton(state, *contiguous, dt_softplus, *dt_limit)


def _triton_limit_broken(tensors: dict, dstate: int):
    """The error to raise when the Triton kernel cannot take this input, else None."""
    for name, t in tensors.items():
        if t is not None and t.dtype not in TRITON_DTYPES:
            return TypeError(f"{name}: backend='triton' takes float16, bfloat16 or float32, got {t.dtype}")
    if dstate > TRITON_MAX_DSTATE:
        return ValueError(f"state: backend='triton' takes dstate <= {TRITON_MAX_DSTATE}, got {dstate}")
    return None
